"""``fastmae visualize`` writes a valid, labelled PNG of masked | reconstruction | original (and, for
norm_pix_loss models, a prediction-only column and the honest MSE footer)."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from fastmae.models import create_model
from fastmae.reference import patchify
from fastmae.train.visualize import HEADER, LINE, main, panel_grid, reconstruct

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
        tile, gap, columns = 128, 4, 4 if norm_pix else 3  # 16 px inputs are enlarged 8x
        width = columns * tile + (columns + 1) * gap
        footer = 0 if not norm_pix else png.size[1] - (HEADER + 3 * (tile + gap) + gap)
        assert png.size == (width, HEADER + 3 * (tile + gap) + gap + footer) and png.mode == "RGB"
        assert footer == 0 or footer % LINE == gap  # the wrapped notes, LINE px each
        label_row = np.asarray(png)[:HEADER]
        assert (label_row < 128).any()  # the column labels are drawn (dark text on white)


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

    panels = reconstruct(Oracle(), imgs)
    labels = [label for label, _ in panels.columns]
    assert labels == ["masked input", "reconstruction*", "prediction only", "original"]
    masked, recon, prediction, original = (tiles for _, tiles in panels.columns)
    torch.testing.assert_close(recon, original, atol=1e-5, rtol=0)
    assert (masked == 0.5).any() and not torch.equal(masked, original)
    # prediction only: per-patch normalised everywhere, so each patch has mean 0.5 (before clamping)
    assert not torch.allclose(prediction, original, atol=0.05)
    assert "TRUE mean and std" in panels.notes[0] and "information the model does not have" in panels.notes[0]
    # the oracle predicts perfectly: its MSE is 0, while the true mean colours alone are not
    reconstruction_mse, mean_colour_mse = (float(part.split()[-1]) for part in panels.notes[2].split(";"))
    assert reconstruction_mse < 1e-8 and mean_colour_mse > 0.1
    grid = panel_grid(panels)
    assert grid.dtype == np.uint8 and grid.shape[1] == 4 * 128 + 5 * 4
    assert grid.shape[0] > HEADER + 2 * 128 + 3 * 4  # label row + 2 image rows + notes


def test_plain_model_has_three_labelled_columns():
    panels = reconstruct(create_model("mae_vit_test"), torch.randn(1, 3, 16, 16))
    assert [label for label, _ in panels.columns] == ["masked input", "reconstruction", "original"]
    assert panels.notes == []
