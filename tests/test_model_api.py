"""The fast MAE's public API: factories, state dicts and checkpoints, input errors, attention backends."""

from __future__ import annotations

import argparse
import copy
import inspect
import subprocess
import sys

import pytest
import torch
from model_testing import assert_close_rel, make_inputs, make_pair

import fastmae.models as models
from fastmae.models import MaskedAutoencoderViT, create_model, list_models, load_official_checkpoint
from fastmae.models.configs import MAE_DEFAULTS, MODEL_ALIASES, MODEL_CONFIGS
from fastmae.reference import create_reference_model

# from docs/mae.md: (total parameters, trainable parameters, state-dict keys)
OFFICIAL_SIZES = {
    "mae_vit_base_patch16": (111_907_840, 111_655_680, 254),
    "mae_vit_large_patch16": (329_541_888, 329_239_296, 398),
    "mae_vit_huge_patch14": (657_074_508, 656_613_964, 494),
}


# ------------------------------------------------------------------------------ factories
@pytest.mark.parametrize("name", sorted(OFFICIAL_SIZES))
def test_official_sizes_names_and_shapes(name):
    with torch.device("meta"):
        fast = create_model(name)
        reference = create_reference_model(name)
    total, trainable, keys = OFFICIAL_SIZES[name]
    assert sum(p.numel() for p in fast.parameters()) == total
    assert sum(p.numel() for p in fast.parameters() if p.requires_grad) == trainable
    fast_state, reference_state = fast.state_dict(), reference.state_dict()
    assert len(fast_state) == keys
    assert [(k, v.shape) for k, v in fast_state.items()] == [(k, v.shape) for k, v in reference_state.items()]
    assert not fast.pos_embed.requires_grad and not fast.decoder_pos_embed.requires_grad
    assert not list(fast.buffers())


def test_factories_cover_official_names_aliases_and_test_sizes():
    assert set(list_models()) == {*MODEL_CONFIGS, *MODEL_ALIASES}
    for name in list_models():
        factory = getattr(models, name)
        assert factory.__name__ == name
    model = models.mae_vit_test(norm_pix_loss=True, attn_backend="math")
    assert isinstance(model, MaskedAutoencoderViT)
    assert (model.img_size, model.patch_size, model.grid_size, model.num_patches) == ((16, 16), 4, (4, 4), 16)
    assert model.in_chans == 3 and model.norm_pix_loss and model.attn_backend == "math"
    assert models.mae_vit_tiny().num_patches == 64
    assert create_model("mae_vit_test", attn_backend="auto").attn_backend == "sdpa"
    with pytest.raises(ValueError, match="unknown model"):
        create_model("mae_vit_gigantic")


def test_constructor_defaults_are_the_registry_defaults():
    """The fast model's typed signature spells out MAE_DEFAULTS (which the reference and full_model_config read)."""
    params = inspect.signature(MaskedAutoencoderViT.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k in MAE_DEFAULTS}
    assert defaults == MAE_DEFAULTS
    assert set(params) - set(MAE_DEFAULTS) == {"self", "attn_backend"}


# ------------------------------------------------------------------------------ state dicts
def _outputs(model, imgs, noise):
    extra = {"return_pred": True} if isinstance(model, MaskedAutoencoderViT) else {}
    return model(imgs, 0.75, noise=noise, **extra)


def _same_outputs(a, b, batch=2):  # a and b on the same device
    imgs, noise = make_inputs(a, batch)
    loss_a, pred_a, mask_a = _outputs(a, imgs, noise)
    loss_b, pred_b, mask_b = _outputs(b, imgs, noise)
    assert torch.equal(mask_a, mask_b)
    assert_close_rel(loss_a, loss_b, "loss")
    assert_close_rel(pred_a, pred_b, "pred")


def test_state_dict_round_trip_with_reference_both_ways(device):
    fast = create_model("mae_vit_test", img_size=(8, 16)).to(device)
    reference = create_reference_model("mae_vit_test", img_size=(8, 16)).to(device)  # independent random init
    reference.load_state_dict(fast.state_dict(), strict=True)
    _same_outputs(fast, reference)
    other = create_reference_model("mae_vit_test", img_size=(8, 16)).to(device)
    fast.load_state_dict(other.state_dict(), strict=True)
    for key, value in other.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value), key
    _same_outputs(fast, other)


def test_official_checkpoint_file_full_and_encoder_only(tmp_path, device):
    """An official-format file ({'model', 'optimizer', 'epoch', 'scaler', 'args'}) loads; so does encoder-only."""
    fast, reference = make_pair(device=device)
    full = tmp_path / "checkpoint-799.pth"
    torch.save(
        {
            "model": reference.state_dict(),
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 799,
            "scaler": {"scale": 65536.0},
            "args": argparse.Namespace(model="mae_vit_test", norm_pix_loss=True, mask_ratio=0.75),
        },
        full,
    )
    target = create_model("mae_vit_test").to(device)
    result = load_official_checkpoint(target, full)
    assert not result.encoder_only and result.missing_keys == []
    _same_outputs(target, reference)

    encoder_file = tmp_path / "mae_pretrain_vit_test.pth"
    torch.save({"model": fast.encoder_state_dict()}, encoder_file)
    encoder_target = create_model("mae_vit_test").to(device)
    decoder_before = copy.deepcopy(encoder_target.decoder_pred.state_dict())
    result = load_official_checkpoint(encoder_target, encoder_file)
    assert result.encoder_only
    assert result.missing_keys and all(k.startswith(("mask_token", "decoder_")) for k in result.missing_keys), (
        result.missing_keys
    )
    assert set(result.missing_keys) == set(fast.state_dict()) - set(fast.encoder_state_dict())
    imgs, _ = make_inputs(fast, 2)
    torch.testing.assert_close(encoder_target.forward_features(imgs), fast.forward_features(imgs), rtol=0, atol=0)
    assert torch.equal(encoder_target.decoder_pred.weight, decoder_before["weight"])


def test_encoder_state_dict_uses_the_official_vit_names():
    fast = create_model("mae_vit_test")
    keys = list(fast.encoder_state_dict())
    assert keys[:4] == ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert keys[-2:] == ["norm.weight", "norm.bias"]
    assert all(k.startswith(("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")) for k in keys)
    assert len(keys) == 4 + 12 * 2 + 2


def test_bad_checkpoints_raise():
    model = create_model("mae_vit_test")
    state = model.state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_official_checkpoint(model, {"model": create_reference_model("mae_vit_tiny").state_dict()})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_official_checkpoint(model, {"model": {**state, "head.weight": torch.zeros(3, 32)}})
    with pytest.raises(ValueError, match="lacks encoder keys"):
        load_official_checkpoint(model, {"model": {"cls_token": state["cls_token"]}})
    with pytest.raises(ValueError, match="state dict"):
        load_official_checkpoint(model, {"model": 3})
    with pytest.raises(TypeError, match="path_or_dict"):
        load_official_checkpoint(model, 3)


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors():
    model = create_model("mae_vit_test")
    imgs, noise = make_inputs(model, 2)
    with pytest.raises(ValueError, match="16x16"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="16x16"):
        model.forward_features(torch.randn(2, 3, 16, 20))
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"imgs must have shape \(N, C, H, W\)"):
        model(torch.randn(3, 16, 16))
    for ratio in (0.0, 1.0, -0.25, 1.5, 0.99):
        with pytest.raises(ValueError, match="mask_ratio"):
            model(imgs, ratio, noise=noise)
    with pytest.raises(TypeError, match="mask_ratio"):
        model(imgs, "0.75")
    with pytest.raises(ValueError, match="noise must have shape"):
        model(imgs, 0.75, noise=torch.rand(2, 15))
    with pytest.raises(ValueError, match="attn_backend"):
        create_model("mae_vit_test", attn_backend="flash")
    with pytest.raises(ValueError, match="divisible by the patch size"):
        create_model("mae_vit_test", img_size=18)


# ------------------------------------------------------------------------------ xformers
def test_xformers_on_cpu_raises_a_clear_error(device):
    if device.type != "cpu":
        pytest.skip("checks the error for CPU tensors (xformers has no CPU kernels); the CPU run covers it")
    pytest.importorskip("xformers.ops")
    model = create_model("mae_vit_test", attn_backend="xformers")
    assert model.attn_backend == "xformers"
    imgs, noise = make_inputs(model, 2)
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors.*no CPU kernels"):
        model(imgs, 0.75, noise=noise)


def test_xformers_block_compiles_fullgraph_on_meta():
    """The custom op pair (forward, backward) traces with no graph break: a shape-only (meta) transformer
    block with attn_backend="xformers" compiles whole and back-propagates through the ops' fake implementations."""
    pytest.importorskip("xformers.ops")
    torch._dynamo.reset()
    with torch.device("meta"):
        block = create_model("mae_vit_test", attn_backend="xformers").blocks[0]
        tokens = torch.empty(2, 5, 32, requires_grad=True)
    out = torch.compile(block, backend="aot_eager", fullgraph=True)(tokens)
    out.sum().backward()
    assert out.shape == tokens.shape and tokens.grad.shape == tokens.shape
    qkv = block.attn.qkv.weight
    assert qkv.grad is not None and qkv.grad.shape == qkv.shape
    out, lse = torch.ops.fastmae.xformers_attention(*(torch.empty(2, 5, 3, 8, device="meta") for _ in range(3)), 0.1)
    assert out.shape == (2, 5, 3, 8) and lse.shape == (2, 3, 5) and lse.dtype == torch.float32


def test_xformers_custom_op_opcheck_and_values(device):
    if device.type != "cuda":
        pytest.skip("xformers has no CPU kernels (shared/CPU_FACTS.md): opcheck and values run with "
                    "FASTMAE_TEST_DEVICE=cuda")
    pytest.importorskip("xformers.ops")
    from fastmae.models._xformers_op import xformers_attention

    q, k, v = (torch.randn(2, 70, 3, 64, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    try:  # a wheel built for another torch/CUDA may load without its kernels (shared/GPU_NOTES.md)
        probe = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        xformers_attention(*probe, 0.125).sum().backward()
    except RuntimeError as error:
        if "found no memory_efficient_attention kernel" not in str(error):
            raise
        pytest.skip(f"xformers' CUDA kernels do not load here: {error}")
    torch.library.opcheck(torch.ops.fastmae.xformers_attention.default, (q, k, v, 0.125))
    out = xformers_attention(q, k, v, 0.125)
    out.float().square().sum().backward()
    grads = [t.grad for t in (q, k, v)]
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in (q2, k2, v2)), scale=0.125
    ).transpose(1, 2)
    expected.float().square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    for grad, t in zip(grads, (q2, k2, v2)):
        torch.testing.assert_close(grad, t.grad, rtol=5e-2, atol=5e-2)


def test_xformers_is_imported_only_when_chosen():
    code = (
        "import sys; from fastmae.models import create_model; create_model('mae_vit_test'); "
        "print(any(m == 'xformers' or m.startswith('xformers.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"
