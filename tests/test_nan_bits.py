"""NaN and Inf go through every op, forward and backward, as NaN and Inf: GPU bit patterns, every output dtype.

The float32 patterns are the ones a GPU makes or passes on: 0x7FFFFFFF (CUDA's canonical NaN), 0xFFFFFFFF,
0x7FC00000 (the quiet NaN CPUs make), 0x7F800001 (a signalling NaN with the lowest payload), +inf and -inf;
16-bit inputs get the same six classes in their own format. They are written, as bits, into every floating
input and into the upstream gradient, on the Triton path (interpreter on CPU, compiled kernels on CUDA), the
plain PyTorch path and the native extension. Each output element must be NaN, +inf or -inf exactly where
the op on the PyTorch path in float32 gives NaN, +inf or -inf: a rounding that turns a NaN into a zero or an
inf (integer rounding without a NaN guard does both) fails here. Gathers also keep the bits themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from fastmae import _native
from fastmae.ops import mask_token_blend, masked_mse_loss, patchify_gather, random_masking, unshuffle_with_mask_token

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

# (bits, integer view dtype) of the six classes per format, in the order of the float32 list above
PATTERNS: dict[torch.dtype, tuple[tuple[int, ...], torch.dtype]] = {
    F32: ((0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0x7F800001, 0x7F800000, 0xFF800000), torch.int32),
    BF16: ((0x7FFF, 0xFFFF, 0x7FC0, 0x7F81, 0x7F80, 0xFF80), torch.int16),
    F16: ((0x7FFF, 0xFFFF, 0x7E00, 0x7C01, 0x7C00, 0xFC00), torch.int16),
}


def _signed(bits: int, width: int) -> int:
    return bits - (1 << width) if bits >= 1 << (width - 1) else bits


def with_patterns(t: torch.Tensor, every: int = 1) -> torch.Tensor:
    """A copy of ``t`` in which every ``every``-th element holds one of the six patterns in turn (one slot in
    seven stays finite), as exact bits; requires_grad as ``t``."""
    bits, int_dtype = PATTERNS[t.dtype]
    width = torch.iinfo(int_dtype).bits
    out = t.detach().clone()
    flat = out.view(-1).view(int_dtype)
    slots = torch.arange(0, flat.numel(), every, device=t.device)
    for k, pattern in enumerate(bits):
        flat[slots[(slots // every) % 7 == k]] = _signed(pattern, width)
    return out.requires_grad_(t.requires_grad)


def _classes(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return torch.stack([torch.isnan(t), torch.isposinf(t), torch.isneginf(t)])


def assert_same_nonfinite(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    got, want = _classes(actual), _classes(expected)
    if torch.equal(got, want):
        return
    index = (got != want).any(dim=0).nonzero()[0].tolist()
    value, reference = actual.detach()[tuple(index)].item(), expected.detach()[tuple(index)].item()
    pytest.fail(f"{name}[{index}] is {value} ({actual.dtype}) where float32 PyTorch gives {reference}; "
                f"{int((got != want).any(dim=0).sum())} elements differ")


def run_op(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None], upstream: torch.Tensor | None):  # type: ignore[no-untyped-def]
    """fn(*inputs), and the gradients of every input that requires grad for ``upstream`` (or a plain backward)."""
    out = fn(*inputs)
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, leaves, upstream)
    return out, grads


def check_op(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None], upstream: torch.Tensor | None,
             monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run ``fn`` on the selected backend and on PyTorch in float32; compare NaN/+inf/-inf element by element."""
    out, grads = run_op(fn, inputs, upstream)
    with monkeypatch.context() as m:
        m.setenv("FASTMAE_BACKEND", "torch")
        upcast = [t.detach().float().requires_grad_(t.requires_grad) if t is not None and t.is_floating_point()
                  else t for t in inputs]
        ref_out, ref_grads = run_op(fn, upcast, None if upstream is None else upstream.float())
    assert_same_nonfinite(out, ref_out, "output")
    for i, (grad, ref) in enumerate(zip(grads, ref_grads, strict=True)):
        assert_same_nonfinite(grad, ref, f"gradient {i}")
    return out, grads


@pytest.fixture(params=["triton", "torch", "native"])
def backend(request: pytest.FixtureRequest, use_backend) -> str:  # type: ignore[no-untyped-def]
    if request.param == "native" and not _native.available():
        pytest.skip(f"native extension not available: {_native.load_error() or 'not built'}")
    return use_backend(request.param)


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_patchify_gather_keeps_nonfinite_bits(dtype, backend, device, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    imgs = with_patterns(torch.randn(3, 3, 24, 32, device=device).to(dtype)).requires_grad_()
    ids_keep = random_masking(3, 12, 0.5, device=device).ids_keep
    upstream = with_patterns(torch.randn(3, 6, 8 * 8 * 3, device=device).to(dtype))
    out, _ = check_op(lambda x, ids: patchify_gather(x, ids, 8), [imgs, ids_keep], upstream, monkeypatch)
    with monkeypatch.context() as m:  # a gather moves bits: NaN payloads and all
        m.setenv("FASTMAE_BACKEND", "torch")
        expected = patchify_gather(imgs.detach(), ids_keep, 8)
    int_dtype = PATTERNS[dtype][1]
    assert torch.equal(out.detach().view(int_dtype), expected.view(int_dtype)), "gathered bits differ"


# (x_vis, mask_token, pos_embed) dtypes: every output dtype, and the trainer's bf16 tokens + float32 parameters
UNSHUFFLE_DTYPES = [(F32, F32, F32), (BF16, BF16, BF16), (F16, F16, F16),
                    (BF16, F32, F32), (BF16, BF16, None)]


@pytest.mark.parametrize("dtypes", UNSHUFFLE_DTYPES, ids=str)
def test_unshuffle_keeps_nonfinite(dtypes, backend, device, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    x_dtype, token_dtype, pos_dtype = dtypes
    batch, length, keep, width = 3, 10, 4, 24
    x_vis = with_patterns(torch.randn(batch, 1 + keep, width, device=device).to(x_dtype)).requires_grad_()
    token = with_patterns(torch.randn(1, 1, width, device=device).to(token_dtype), every=5).requires_grad_()
    pos = None
    if pos_dtype is not None:
        pos = with_patterns(torch.randn(1, 1 + length, width, device=device).to(pos_dtype), every=3).requires_grad_()
    ids_restore = random_masking(batch, length, 1 - keep / length, device=device).ids_restore
    out_dtype = x_dtype if pos_dtype is None else torch.promote_types(x_dtype, pos_dtype)
    upstream = with_patterns(torch.randn(batch, 1 + length, width, device=device).to(out_dtype))
    check_op(lambda x, t, ids, p: unshuffle_with_mask_token(x, t, ids, p), [x_vis, token, ids_restore, pos],
             upstream, monkeypatch)


# (pred, imgs) dtypes; the trainer's is bf16 pred with float32 images
LOSS_DTYPES = [(F32, F32), (BF16, F32), (BF16, BF16), (F16, F16)]


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("dtypes", LOSS_DTYPES, ids=str)
def test_masked_mse_loss_keeps_nonfinite(dtypes, norm_pix, backend, device, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pred_dtype, img_dtype = dtypes
    batch, p, length = 4, 4, 16
    masking = random_masking(batch, length, 0.5, device=device)
    removed = length - masking.num_keep
    dim = p * p * 3
    # a few elements per row, so that some rows stay finite and the infs are not all drowned in NaN
    pred = with_patterns(torch.randn(batch, removed, dim, device=device).to(pred_dtype), every=dim + 5)
    imgs = with_patterns(torch.randn(batch, 3, 16, 16, device=device).to(img_dtype), every=3 * dim + 7)
    check_op(lambda pr, im, ids: masked_mse_loss(pr, im, ids, p, norm_pix=norm_pix),
             [pred.requires_grad_(), imgs.requires_grad_(), masking.ids_restore], None, monkeypatch)


# (x, mask_token) dtypes, bool and float masks
BLEND_DTYPES = [(F32, F32), (BF16, BF16), (F16, F16), (BF16, F32)]


@pytest.mark.parametrize("mask_dtype", [torch.bool, F32])
@pytest.mark.parametrize("dtypes", BLEND_DTYPES, ids=str)
def test_mask_token_blend_keeps_nonfinite(dtypes, mask_dtype, backend, device, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if backend == "native":
        pytest.skip("mask_token_blend has no native twin")
    x_dtype, token_dtype = dtypes
    x = with_patterns(torch.randn(3, 10, 24, device=device).to(x_dtype)).requires_grad_()
    token = with_patterns(torch.randn(1, 1, 24, device=device).to(token_dtype), every=5).requires_grad_()
    mask = (torch.rand(3, 10, device=device) < 0.5).to(mask_dtype)
    out_dtype = torch.promote_types(x_dtype, token_dtype)
    upstream = with_patterns(torch.randn(3, 10, 24, device=device).to(out_dtype))
    check_op(lambda a, m, t: mask_token_blend(a, m, t), [x, mask, token], upstream, monkeypatch)
