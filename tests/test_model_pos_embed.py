"""Loading weights at another input size: positional tables rebuilt (sin-cos) or interpolated."""

from __future__ import annotations

import pytest
import torch

from fastmae.models import create_model, load_official_checkpoint
from fastmae.models.pos_embed import adapt_pos_embeds, is_sincos, resize_pos_embed
from fastmae.reference import sincos_2d_pos_embed


@pytest.mark.parametrize("new_size", [24, (16, 24), 8])
def test_full_checkpoint_loads_at_another_size(new_size):
    torch.manual_seed(0)
    source = create_model("mae_vit_test")  # 16 px, patch 4: grid 4 x 4
    target = create_model("mae_vit_test", img_size=new_size)
    assert load_official_checkpoint(target, source.state_dict()).encoder_only is False
    fresh = create_model("mae_vit_test", img_size=new_size)
    for key in ("pos_embed", "decoder_pos_embed"):
        assert torch.equal(target.state_dict()[key], fresh.state_dict()[key])  # the exact table of the new grid
    for key, value in source.state_dict().items():
        if key not in ("pos_embed", "decoder_pos_embed"):
            assert torch.equal(target.state_dict()[key], value), key
    images = torch.randn(2, 3, *target.img_size)
    loss, _, _ = target(images, 0.5, torch.rand(2, target.num_patches))
    assert torch.isfinite(loss)


def test_encoder_only_file_at_another_size(tmp_path):
    source = create_model("mae_vit_test")
    path = tmp_path / "encoder.pth"
    torch.save({"model": source.encoder_state_dict()}, path)
    target = create_model("mae_vit_test", img_size=32)
    loaded = load_official_checkpoint(target, path)
    assert loaded.encoder_only and target.pos_embed.shape == (1, 1 + 64, 32)
    assert is_sincos(target.pos_embed.detach(), (8, 8))
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_a_table_that_is_not_sincos_is_interpolated():
    table = sincos_2d_pos_embed(32, (4, 4)).unsqueeze(0)
    assert is_sincos(table, (4, 4)) and not is_sincos(table + 1e-3, (4, 4))
    learned = torch.full((1, 17, 32), 0.25)
    learned[0, 0] = 7.0  # the cls row is kept as it is
    resized = resize_pos_embed(learned, (6, 6))
    assert resized.shape == (1, 37, 32)
    assert torch.equal(resized[0, 0], learned[0, 0])
    assert torch.allclose(resized[0, 1:], torch.full((36, 32), 0.25), atol=1e-6)  # a constant stays constant
    ramp = sincos_2d_pos_embed(32, (4, 4)).unsqueeze(0) * 2  # smooth, not the sin-cos table itself
    same = resize_pos_embed(ramp, (4, 4))
    assert torch.allclose(same, ramp, atol=1e-6)  # interpolating onto the same grid changes nothing


def test_mismatches_are_named():
    model = create_model("mae_vit_test", img_size=24)
    other_width = {"pos_embed": torch.zeros(1, 17, 48)}
    assert adapt_pos_embeds(other_width, model)["pos_embed"] is other_width["pos_embed"]  # load_state_dict reports it
    with pytest.raises(ValueError, match="not a square grid"):
        adapt_pos_embeds({"pos_embed": torch.zeros(1, 9, 32)}, model)


def test_pretrain_init_from_at_another_input_size(tmp_path):
    from fastmae.train.pretrain import main

    flags = ["--model", "mae_vit_test", "--batch_size", "4", "--epochs", "1", "--loader", "synthetic",
             "--synthetic_size", "8", "--device", "cpu", "--no_progress", "--lr", "0"]
    assert main([*flags, "--output_dir", str(tmp_path / "a")]) == 0
    assert main([*flags, "--input_size", "24", "--init_from", str(tmp_path / "a" / "encoder.pth"),
                 "--output_dir", str(tmp_path / "b")]) == 0
    before = torch.load(tmp_path / "a" / "encoder.pth", weights_only=True)["model"]
    after = torch.load(tmp_path / "b" / "encoder.pth", weights_only=True)["model"]
    assert after["pos_embed"].shape == (1, 37, 32) and torch.equal(after["norm.weight"], before["norm.weight"])
