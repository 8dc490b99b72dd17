"""The reference MAE against the numbers and formulas of docs/mae.md."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastmae import reference as R
from fastmae.models.configs import MODEL_ALIASES, model_config

SPEC_COUNTS = {
    # name: (total params, trainable params, state-dict keys)
    "mae_vit_base_patch16": (111_907_840, 111_655_680, 254),
    "mae_vit_large_patch16": (329_541_888, 329_239_296, 398),
    "mae_vit_huge_patch14": (657_074_508, 656_613_964, 494),
}


@pytest.mark.parametrize("name", sorted(SPEC_COUNTS))
def test_parameter_counts_match_spec(name: str) -> None:
    with torch.device("meta"):
        model = R.create_reference_model(name)
    total, trainable, keys = SPEC_COUNTS[name]
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert len(model.state_dict()) == keys
    assert not list(model.buffers())


def test_official_and_short_names_build_the_same_config() -> None:
    for short, official in MODEL_ALIASES.items():
        assert model_config(short) == model_config(official)
    with pytest.raises(ValueError, match="unknown model 'mae_vit_giant'"):
        R.create_reference_model("mae_vit_giant")


def test_state_dict_order_follows_spec() -> None:
    model = R.create_reference_model("mae_vit_test")
    keys = list(model.state_dict())
    assert keys[:6] == ["cls_token", "pos_embed", "mask_token", "decoder_pos_embed",
                        "patch_embed.proj.weight", "patch_embed.proj.bias"]
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
             "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias"]
    assert keys[6:18] == [f"blocks.0.{k}" for k in block]
    assert keys[-4:] == ["decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"]
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


def _pos_embed_float64(dim: int, gh: int, gw: int) -> torch.Tensor:
    """Independent formula of the spec: [sin(w om), cos(w om), sin(h om), cos(h om)], om_k = 10000^(-k/(D/4))."""
    quarter = dim // 4
    table = torch.zeros(1 + gh * gw, dim, dtype=torch.float64)
    for h in range(gh):
        for w in range(gw):
            row = 1 + h * gw + w
            for k in range(quarter):
                om = 1.0 / 10000 ** (k / quarter)
                table[row, k] = math.sin(w * om)
                table[row, quarter + k] = math.cos(w * om)
                table[row, 2 * quarter + k] = math.sin(h * om)
                table[row, 3 * quarter + k] = math.cos(h * om)
    return table


@pytest.mark.parametrize(("dim", "grid"), [(32, (4, 4)), (16, (3, 5)), (64, (14, 14))])
def test_pos_embed_matches_independent_formula(dim: int, grid: tuple[int, int]) -> None:
    table = R.sincos_2d_pos_embed(dim, grid)
    assert table.dtype == torch.float32
    expected = _pos_embed_float64(dim, *grid)
    torch.testing.assert_close(table, expected.float(), rtol=0, atol=1e-6)


def test_model_pos_embeds_are_the_fixed_tables_over_a_nonsquare_grid() -> None:
    model = R.create_reference_model("mae_vit_test", img_size=(8, 20), in_chans=1)
    assert model.grid_size == (2, 5) and model.num_patches == 10
    torch.testing.assert_close(model.pos_embed[0], _pos_embed_float64(32, 2, 5).float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.decoder_pos_embed[0], _pos_embed_float64(16, 2, 5).float(), rtol=0, atol=1e-6)


def test_patchify_follows_spec_order_and_unpatchify_inverts_it() -> None:
    n, c, p, gh, gw = 2, 3, 4, 2, 3
    imgs = torch.randn(n, c, gh * p, gw * p)
    patches = R.patchify(imgs, p)
    assert patches.shape == (n, gh * gw, p * p * c)
    for b, h, w, i, j, ch in [(0, 0, 0, 0, 0, 0), (1, 1, 2, 3, 1, 2), (0, 1, 0, 2, 3, 1)]:
        assert patches[b, h * gw + w, (i * p + j) * c + ch] == imgs[b, ch, h * p + i, w * p + j]
    assert torch.equal(R.unpatchify(patches, p, (gh, gw), c), imgs)
    tokens = torch.randn(n, gh * gw, p * p * c)
    assert torch.equal(R.patchify(R.unpatchify(tokens, p, (gh, gw), c), p), tokens)


@pytest.mark.parametrize(("length", "ratio"), [(196, 0.75), (16, 0.5), (7, 0.8), (5, 0.2)])
def test_masking_invariants(length: int, ratio: float) -> None:
    n, dim = 4, 3
    x = torch.randn(n, length, dim)
    noise = torch.rand(n, length)
    keep = int(length * (1 - ratio))
    x_masked, mask, ids_restore = R.random_masking(x, ratio, noise)
    assert x_masked.shape == (n, keep, dim)
    assert torch.equal(mask.sum(1), torch.full((n,), float(length - keep)))
    ids_shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(length).expand(n, -1))
    kept = ids_shuffle[:, :keep]
    assert torch.equal(x_masked, torch.gather(x, 1, kept[..., None].expand(-1, -1, dim)))
    # the kept patches are exactly the smallest-noise ones, and mask is 0 there
    assert torch.all(torch.gather(mask, 1, kept) == 0)
    assert torch.all(noise.gather(1, kept).max(1).values < noise.gather(1, ids_shuffle[:, keep:]).min(1).values)


def _hand_loss(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, p: int, norm_pix: bool) -> float:
    """Loops over samples and patches in float64, written from the spec's words."""
    n, c, h, w = imgs.shape
    total, count = 0.0, 0.0
    for b in range(n):
        for ph in range(h // p):
            for pw in range(w // p):
                idx = ph * (w // p) + pw
                if mask[b, idx] == 0:
                    continue
                values = [float(imgs[b, ch, ph * p + i, pw * p + j]) for i in range(p) for j in range(p)
                          for ch in range(c)]
                if norm_pix:
                    mean = sum(values) / len(values)
                    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
                    values = [(v - mean) / math.sqrt(var + 1e-6) for v in values]
                err = sum((float(pred[b, idx, k]) - values[k]) ** 2 for k in range(len(values)))
                total += err / len(values)
                count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_equals_hand_computation(norm_pix: bool) -> None:
    p = 2
    imgs = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    pred = torch.randn(2, 6, p * p * 3, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float64)
    loss = R.mae_loss(imgs, pred, mask, p, norm_pix)
    assert loss.item() == pytest.approx(_hand_loss(imgs, pred, mask, p, norm_pix), rel=1e-12)


def test_forward_shapes_and_loss_is_masked_mean() -> None:
    model = R.create_reference_model("mae_vit_test", norm_pix_loss=True)
    imgs = torch.randn(3, 3, 16, 16)
    noise = torch.rand(3, 16)
    loss, pred, mask = model(imgs, mask_ratio=0.75, noise=noise)
    assert pred.shape == (3, 16, 48) and mask.shape == (3, 16) and loss.dim() == 0
    assert torch.equal(mask.sum(1), torch.full((3,), 12.0))
    assert loss.item() == pytest.approx(_hand_loss(imgs, pred.detach(), mask, 4, True), rel=1e-5)
    loss.backward()
    assert model.cls_token.grad is not None and model.pos_embed.grad is None


def test_same_noise_same_result_and_sdpa_matches_math() -> None:
    torch.manual_seed(0)
    math_model = R.create_reference_model("mae_vit_test")
    sdpa_model = R.create_reference_model("mae_vit_test", attn_impl="sdpa")
    sdpa_model.load_state_dict(math_model.state_dict())
    imgs, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    loss_a, pred_a, mask_a = math_model(imgs, noise=noise)
    loss_b, pred_b, mask_b = sdpa_model(imgs, noise=noise)
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(pred_a, pred_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)


def test_init_statistics() -> None:
    torch.manual_seed(0)
    model = R.create_reference_model("mae_vit_base_patch16")
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            fan_out, fan_in = module.weight.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert module.weight.abs().max() <= bound, name
            assert module.weight.abs().max() > 0.9 * bound, name  # uniform over the whole range
            assert torch.count_nonzero(module.bias) == 0, name
        elif isinstance(module, nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
    weight = model.patch_embed.proj.weight
    bound = math.sqrt(6.0 / (weight.shape[0] + weight[0].numel()))
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(model.patch_embed.proj.bias) > 0  # PyTorch's default conv bias init is kept
    for token in (model.cls_token, model.mask_token):
        assert 0.015 < token.std().item() < 0.025 and abs(token.mean().item()) < 0.01


def test_bad_input_errors_name_the_argument() -> None:
    model = R.create_reference_model("mae_vit_test")
    with pytest.raises(ValueError, match=r"imgs must be 16x16 for this model, got 20x16"):
        model(torch.randn(1, 3, 20, 16))
    with pytest.raises(ValueError, match=r"imgs must have 3 channels"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"imgs must have shape \(N, C, H, W\)"):
        model(torch.randn(3, 16, 16))
    for ratio in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="mask_ratio must be in the open interval"):
            model(torch.randn(1, 3, 16, 16), mask_ratio=ratio)
    with pytest.raises(ValueError, match="keeps 0 of 16 patches"):
        model(torch.randn(1, 3, 16, 16), mask_ratio=0.95)
    with pytest.raises(ValueError, match=r"noise must have shape \(N, L\) = \(1, 16\)"):
        model(torch.randn(1, 3, 16, 16), noise=torch.rand(1, 15))
    with pytest.raises(ValueError, match="noise must be on cpu"):
        model(torch.randn(1, 3, 16, 16), noise=torch.rand(1, 16, device="meta"))
    with pytest.raises(ValueError, match=r"height 225 is not divisible by the patch size 16; crop or resize to 224"):
        R.create_reference_model("mae_vit_base_patch16", img_size=225)
    with pytest.raises(TypeError, match="img_size must be an int or a pair"):
        R.create_reference_model("mae_vit_test", img_size="16")
