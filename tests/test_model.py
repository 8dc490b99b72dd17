"""The fast MAE against the reference: forward, gradients, precision, compile, saved memory, on ``device``."""

from __future__ import annotations

import pytest
import torch
from model_testing import (
    assert_close_rel,
    assert_grads_close,
    float64_copy,
    grads,
    make_inputs,
    make_pair,
)
from op_testing import assert_dtype_rule

from fastmae.models import create_model
from fastmae.reference import create_reference_model


def _run_both(fast, reference, imgs, noise, mask_ratio, *, return_pred=True):
    loss, pred, mask = fast(imgs, mask_ratio, noise=noise, return_pred=return_pred)
    loss.backward()
    ref_loss, ref_pred, ref_mask = reference(imgs, mask_ratio, noise=noise)
    ref_loss.backward()
    return (loss, pred, mask), (ref_loss, ref_pred, ref_mask)


# ------------------------------------------------------------------------------ float32, eager
@pytest.mark.parametrize(
    ("config", "backend", "norm_pix", "batch", "mask_ratio"),
    [
        ("square", "auto", False, 3, 0.75),
        ("square", "math", True, 1, 0.75),
        ("square", "sdpa", True, 2, 1 / 16),  # K = L-1: one removed patch
        ("square", "auto", False, 2, 15 / 16),  # K = 1
        ("two_rows", "auto", True, 3, 0.5),
        ("two_rows", "math", False, 1, 0.8),
    ],
)
def test_matches_reference_fp32(config, backend, norm_pix, batch, mask_ratio, device):
    fast, reference = make_pair(config, device=device, norm_pix_loss=norm_pix, attn_backend=backend)
    imgs, noise = make_inputs(fast, batch)
    (loss, pred, mask), (ref_loss, ref_pred, ref_mask) = _run_both(fast, reference, imgs, noise, mask_ratio)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert torch.equal(mask, ref_mask), "same noise must mask the same patches"
    assert_close_rel(loss, ref_loss, "loss")
    assert_close_rel(pred, ref_pred, "pred")
    assert_grads_close(fast, reference)


def test_head_on_removed_tokens_gives_the_same_loss_and_grads(device):
    fast, _ = make_pair(device=device, norm_pix_loss=True)
    imgs, noise = make_inputs(fast, 3)
    loss_full, pred, _ = fast(imgs, 0.75, noise=noise, return_pred=True)
    loss_full.backward()
    full_grads = {k: g.clone() for k, g in grads(fast).items()}
    fast.zero_grad(set_to_none=True)
    loss_removed, no_pred, mask = fast(imgs, 0.75, noise=noise)
    loss_removed.backward()
    assert pred.shape == (3, 16, 48) and no_pred is None and mask.shape == (3, 16)
    torch.testing.assert_close(loss_removed, loss_full, rtol=1e-6, atol=0)
    for name, grad in grads(fast).items():
        assert_close_rel(grad, full_grads[name], f"grad {name}", tol=1e-6)


def test_random_noise_when_none_masks_the_official_count(device):
    fast, _ = make_pair(device=device)
    imgs, _ = make_inputs(fast, 4)
    loss, _, mask = fast(imgs, 0.75)
    assert torch.isfinite(loss)
    assert torch.equal(mask.sum(1), torch.full((4,), 12.0, device=device)), "L - int(L * 0.25) = 12 removed per sample"
    assert fast.num_keep(0.75) == 4


def test_forward_features_matches_reference_encoder_without_masking(device):
    fast, reference = make_pair("two_rows", device=device)
    imgs, _ = make_inputs(fast, 2)
    features = fast.forward_features(imgs)
    x = reference.patch_embed(imgs) + reference.pos_embed[:, 1:]
    x = torch.cat([(reference.cls_token + reference.pos_embed[:, :1]).expand(2, -1, -1), x], dim=1)
    for block in reference.blocks:
        x = block(x)
    expected = reference.norm(x)
    assert features.shape == (2, 1 + fast.num_patches, 32)
    assert_close_rel(features, expected, "features")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["selective", "full"])
def test_recompute_gives_bitwise_the_same_loss_and_grads(mode, dtype, device):
    """Recomputation replays the same ops on the same inputs: loss and every gradient bit for bit."""
    results = []
    for recompute in ("none", mode):
        torch.manual_seed(0)
        fast, _ = make_pair(device=device, norm_pix_loss=True)
        fast.set_recompute(recompute)
        imgs, noise = make_inputs(fast, 2)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = fast(imgs, 0.75, noise=noise)[0]
        loss.backward()
        results.append((loss.detach(), grads(fast)))
    (loss, plain), (recomputed_loss, recomputed) = results
    assert torch.equal(loss, recomputed_loss)
    for name, grad in plain.items():
        assert torch.equal(grad, recomputed[name]), name


def test_set_recompute_rejects_unknown_modes():
    fast, _ = make_pair()
    with pytest.raises(ValueError, match="recompute must be one of 'none', 'selective', 'full'"):
        fast.set_recompute("some")


def test_grad_checkpointing_gives_the_same_grads(device):
    fast, reference = make_pair(device=device, norm_pix_loss=True)
    fast.set_grad_checkpointing(True)
    assert fast.grad_checkpointing
    imgs, noise = make_inputs(fast, 2)
    (loss, _, _), (ref_loss, _, _) = _run_both(fast, reference, imgs, noise, 0.75, return_pred=False)
    assert_close_rel(loss, ref_loss, "loss")
    assert_grads_close(fast, reference)


# ------------------------------------------------------------------------------ autocast precision
@pytest.mark.parametrize(
    ("dtype", "compiled"), [(torch.bfloat16, False), (torch.float16, False), (torch.bfloat16, True)]
)
def test_autocast_dtype_rule(dtype, compiled, device):
    """Under autocast, error against a float64 reference <= 2x the reference's own autocast error + atol."""
    torch._dynamo.reset()
    fast, reference = make_pair(device=device, norm_pix_loss=True)
    reference64 = float64_copy(reference)
    imgs, noise = make_inputs(fast, 3)
    run = torch.compile(fast, backend="aot_eager", fullgraph=True) if compiled else fast
    with torch.autocast(device.type, dtype=dtype):
        (loss, pred, mask), (ref_loss, ref_pred, _) = _run_both(run, reference, imgs, noise, 0.75)
    # the reference's forward accepts only training dtypes: run its steps directly in float64
    latent64, mask64, ids_restore64 = reference64.forward_encoder(imgs.double(), 0.75, noise)
    pred64 = reference64.forward_decoder(latent64, ids_restore64)
    loss64 = reference64.forward_loss(imgs.double(), pred64, mask64)
    loss64.backward()
    assert loss.dtype == torch.float32, "the loss reduction must be float32"
    assert torch.equal(mask, mask64.float())
    assert_dtype_rule(loss, ref_loss, loss64, atol=1e-3, name="loss")
    assert_dtype_rule(pred, ref_pred, pred64, atol=1e-2, name="pred")
    reference_grads, exact_grads = grads(reference), grads(reference64)
    for name, grad in grads(fast).items():
        scale = exact_grads[name].abs().max().item()
        assert_dtype_rule(grad, reference_grads[name], exact_grads[name], atol=1e-2 * scale + 1e-6, name=name)


# ------------------------------------------------------------------------------ torch.compile
def _compiled_step(model, backend):
    """The forward compiled whole (fullgraph=True); its backward runs as the AOT-compiled backward graph."""
    compiled = torch.compile(model, backend=backend, fullgraph=True)

    def step(imgs, noise):
        loss, _, mask = compiled(imgs, 0.75, noise=noise)
        loss.backward()
        return loss.detach(), mask

    return step


def _assert_compiled_step_matches_reference(fast, reference, compile_backend: str, batch: int) -> None:
    """One compiled forward + backward of ``fast`` against the eager reference: mask, loss and grads."""
    imgs, noise = make_inputs(fast, batch)
    loss, mask = _compiled_step(fast, compile_backend)(imgs, noise)
    ref_loss, _, ref_mask = reference(imgs, 0.75, noise=noise)
    ref_loss.backward()
    assert torch.equal(mask, ref_mask)
    assert_close_rel(loss, ref_loss, "loss")
    assert_grads_close(fast, reference)


@pytest.mark.parametrize(("backend", "recompute"), [("auto", "selective"), ("math", "full")])
def test_compiled_fullgraph_matches_reference(backend, recompute, device):
    """forward + backward traces with fullgraph=True (aot_eager) and agrees with the eager reference."""
    torch._dynamo.reset()
    fast, reference = make_pair("two_rows", device=device, norm_pix_loss=True, attn_backend=backend)
    fast.set_recompute(recompute)
    _assert_compiled_step_matches_reference(fast, reference, "aot_eager", batch=3)


def test_compiled_random_noise_and_return_pred(device):
    torch._dynamo.reset()
    fast, _ = make_pair(device=device)
    imgs, noise = make_inputs(fast, 2)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    loss, pred, mask = compiled(imgs, 0.75, noise=noise, return_pred=True)
    eager_loss, eager_pred, eager_mask = fast(imgs, 0.75, noise=noise, return_pred=True)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(pred, eager_pred, rtol=1e-6, atol=1e-7)
    assert torch.equal(mask, eager_mask)
    random_loss, _, random_mask = compiled(imgs, 0.75)  # noise drawn inside the graph
    assert torch.isfinite(random_loss) and torch.equal(random_mask.sum(1), torch.full((2,), 12.0, device=device))


@pytest.mark.inductor
def test_inductor_compile_matches_reference(device):
    """The one inductor compile of this file: tiny model, forward + backward, fullgraph."""
    torch._dynamo.reset()
    fast, reference = make_pair(device=device, norm_pix_loss=True, depth=1)
    _assert_compiled_step_matches_reference(fast, reference, "inductor", batch=2)


# ------------------------------------------------------------------------------ Triton kernels compose
def test_triton_backend_through_the_model(use_backend, device):
    """The op kernels (TRITON_INTERPRET on CPU, compiled on CUDA) give the same model outputs and grads as the
    reference."""
    use_backend("triton")
    fast, reference = make_pair("two_rows", device=device, norm_pix_loss=True)
    imgs, noise = make_inputs(fast, 2)
    (loss, pred, mask), (ref_loss, ref_pred, ref_mask) = _run_both(fast, reference, imgs, noise, 0.75)
    assert torch.equal(mask, ref_mask)
    assert_close_rel(loss, ref_loss, "loss")
    assert_close_rel(pred, ref_pred, "pred")
    assert_grads_close(fast, reference)


# ------------------------------------------------------------------------------ saved activations
def _saved_tensors(model, imgs, noise):
    """(shape, storage bytes) of every activation autograd saves in one training forward (parameters, the
    same in both models, are left out); each storage's bytes count once."""
    saved: list[tuple[tuple[int, ...], int]] = []
    seen: set[int] = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor):
        storage = tensor.untyped_storage()
        new = storage.data_ptr() not in seen
        seen.add(storage.data_ptr())
        saved.append((tuple(tensor.shape), storage.nbytes() if new else 0))
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(imgs, 0.75, noise=noise)[0]
    loss.backward()
    return saved


@pytest.mark.parametrize("norm_pix", [False, True])
def test_saves_less_than_reference_and_no_full_length_buffers(norm_pix, device):
    fast, reference = make_pair(device=device, norm_pix_loss=norm_pix)
    imgs, noise = make_inputs(fast, 3)
    fast_saved = _saved_tensors(fast, imgs, noise)
    reference_saved = _saved_tensors(reference, imgs, noise)
    n, length, pixels, width = 3, fast.num_patches, 4 * 4 * 3, 32
    forbidden = {(n, length, pixels), (n, length, width), (n, 1 + length, pixels), (n, 1 + length, width)}
    assert not [shape for shape, _ in fast_saved if shape in forbidden], "full-length pred/target/encoder saved"
    assert any(shape in forbidden for shape, _ in reference_saved), "the check must be able to fail"
    fast_bytes = sum(b for _, b in fast_saved)
    reference_bytes = sum(b for _, b in reference_saved)
    assert fast_bytes < reference_bytes, f"fastmae saves {fast_bytes} B, the reference {reference_bytes} B"


def test_grad_checkpointing_saves_fewer_bytes(device):
    fast, _ = make_pair(device=device)
    imgs, noise = make_inputs(fast, 3)
    plain = sum(b for _, b in _saved_tensors(fast, imgs, noise))
    fast.set_grad_checkpointing(True)
    checkpointed = sum(b for _, b in _saved_tensors(fast, imgs, noise))
    assert checkpointed < plain


def test_same_seed_builds_the_same_weights_as_the_reference():
    torch.manual_seed(1234)
    fast = create_model("mae_vit_test")
    torch.manual_seed(1234)
    reference = create_reference_model("mae_vit_test")
    fast_state, reference_state = fast.state_dict(), reference.state_dict()
    assert list(fast_state) == list(reference_state)
    for key, value in reference_state.items():
        assert torch.equal(fast_state[key], value), key
