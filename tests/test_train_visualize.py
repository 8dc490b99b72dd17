"""``fastmae visualize`` writes a valid PNG of masked | reconstruction | original triplets."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from fastmae.models import create_model
from fastmae.reference import patchify
from fastmae.train.visualize import main, reconstruct, triplet_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(20, 30), (16, 16), (40, 24)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.mark.parametrize("norm_pix", [False, True])
def test_visualize_writes_a_png(norm_pix, images, tmp_path):
    model = create_model("mae_vit_test", norm_pix_loss=norm_pix)
    checkpoint = tmp_path / "official_full.pth"
    # an official-style full checkpoint: 'model' key and a pickled Namespace
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model="mae_vit_test",
                                                                         norm_pix_loss=norm_pix)}, checkpoint)
    out = tmp_path / "recon.png"
    assert main(["--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(out) as png:
        png.verify()
    with Image.open(out) as png:
        tile, gap = 128, 4  # 16 px inputs are enlarged 8x
        assert png.size == (3 * tile + 4 * gap, 3 * tile + 4 * gap) and png.mode == "RGB"


def test_encoder_only_checkpoint_is_refused(images, tmp_path, capsys):
    model = create_model("mae_vit_test")
    encoder = {k: v for k, v in model.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    checkpoint = tmp_path / "encoder.pth"
    torch.save({"model": encoder}, checkpoint)
    assert main(["--checkpoint", str(checkpoint), "--images", str(images), "--model", "mae_vit_test",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "encoder-only" in capsys.readouterr().err


def test_norm_pix_reconstruction_uses_each_patch_statistics():
    """A model whose prediction is exactly the normalised target reconstructs the input exactly."""
    imgs = torch.randn(2, 3, 16, 16) * 0.5

    class Oracle(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))
            self.patch_size, self.grid_size, self.num_patches, self.norm_pix_loss = 4, (4, 4), 16, True

        def forward(self, x, mask_ratio, noise, return_pred=False):
            target = patchify(x, 4)
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            mask = (noise > noise.median(dim=1, keepdim=True).values).float()
            return None, (target - mean) / (var + 1e-6) ** 0.5, mask

    masked, recon, original = reconstruct(Oracle(), imgs)
    torch.testing.assert_close(recon, original, atol=1e-5, rtol=0)
    assert (masked == 0.5).any() and not torch.equal(masked, original)
    grid = triplet_grid(masked, recon, original)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 128 + 3 * 4, 3 * 128 + 4 * 4, 3)
