"""mask_token_blend against plain PyTorch ``x * (1 - m) + token * m``: Triton path and torch path, on ``device``."""

from __future__ import annotations

import pytest
import torch

import fastmae.ops.blend as blend_module
from fastmae.ops import mask_token_blend
from fastmae.ops.blend import blend_dtype
from tests.op_testing import DTYPES, assert_bitwise_equal, assert_dtype_rule

BACKENDS = ("triton", "torch")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, use_backend) -> str:  # type: ignore[no-untyped-def]
    """Run the test on one backend, in debug mode so outputs start poisoned (NaN)."""
    return use_backend(request.param, debug=True)


def reference_blend(x: torch.Tensor, mask: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch; a bool mask is cast to the promoted dtype of x and the token (plain torch cannot do 1 - bool)."""
    weight = mask.to(torch.result_type(x, token)) if mask.dtype == torch.bool else mask
    weight = weight.unsqueeze(-1)
    return x * (1 - weight) + token * weight


def make_inputs(
    shape: tuple[int, int, int],
    dtype: torch.dtype,
    mask_kind: str,
    token_dtype: torch.dtype | None = None,
    *,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, seq_len, dim = shape
    x = torch.randn(shape, device=device).to(dtype)
    token = torch.randn(1, 1, dim, device=device).to(token_dtype or dtype)
    draws = torch.rand(batch, seq_len, device=device)
    mask = {
        "bool": draws < 0.6,
        "binary": (draws < 0.6).to(dtype),
        "fractional": draws.to(dtype),
    }[mask_kind]
    return x, mask, token


def grads(fn, x: torch.Tensor, mask: torch.Tensor, token: torch.Tensor, grad_out: torch.Tensor | None):
    """(out, grad_x, grad_token) of fn; grad_out None means the stride-0 gradient of .sum()."""
    x = x.detach().clone().requires_grad_()
    token = token.detach().clone().requires_grad_()
    out = fn(x, mask, token)
    if grad_out is None:
        grad_x, grad_token = torch.autograd.grad(out.sum(), (x, token))
    else:
        grad_x, grad_token = torch.autograd.grad(out, (x, token), grad_out)
    return out.detach(), grad_x, grad_token


def as_double(x: torch.Tensor, mask: torch.Tensor, token: torch.Tensor):
    return x.double(), (mask if mask.dtype == torch.bool else mask.double()), token.double()


# (B, L, D): batch 1 and one token; odd sizes; two channel blocks (D > 256); several backward row chunks
SHAPES = [(1, 1, 3), (2, 7, 5), (2, 9, 300), (3, 200, 5)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", ["bool", "binary"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_binary_mask_matches_reference_bitwise(
    backend: str, device: torch.device, shape, mask_kind: str, dtype: torch.dtype
) -> None:
    """0/1 masks: forward and grad_x are bitwise plain torch (a select); grad_mask_token by the dtype rule."""
    x, mask, token = make_inputs(shape, dtype, mask_kind, device=device)
    for grad_out in (torch.randn(shape, device=device).to(dtype), None):
        out, grad_x, grad_token = grads(mask_token_blend, x, mask, token, grad_out)
        ref_out, ref_grad_x, ref_grad_token = grads(reference_blend, x, mask, token, grad_out)
        assert out.is_contiguous()
        assert_bitwise_equal(out, ref_out, "out")
        assert_bitwise_equal(grad_x, ref_grad_x, "grad_x")
        assert torch.equal(grad_x.signbit(), ref_grad_x.signbit()), "grad_x: signed zeros differ"
        exact_grad = None if grad_out is None else grad_out.double()
        _, _, exact_token = grads(reference_blend, *as_double(x, mask, token), exact_grad)
        assert grad_token.dtype == dtype
        assert_dtype_rule(grad_token, ref_grad_token, exact_token, atol=1e-5, name="grad_mask_token")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 7, 5), (2, 9, 300)], ids=lambda s: "x".join(map(str, s)))
def test_fractional_mask_dtype_rule(backend: str, device: torch.device, shape, dtype: torch.dtype) -> None:
    """Fractional masks blend in float32 with one rounding: within 2x PyTorch's own error against float64."""
    x, mask, token = make_inputs(shape, dtype, "fractional", device=device)
    grad_out = torch.randn(shape, device=device).to(dtype)
    results = grads(mask_token_blend, x, mask, token, grad_out)
    same_dtype = grads(reference_blend, x, mask, token, grad_out)
    exact = grads(reference_blend, *as_double(x, mask, token), grad_out.double())
    for name, ours, ref, ref64 in zip(("out", "grad_x", "grad_mask_token"), results, same_dtype, exact):
        assert ours.dtype == ref.dtype, name
        assert_dtype_rule(ours, ref, ref64, atol=1e-5, name=name)


@pytest.mark.parametrize(
    ("x_dtype", "mask_dtype", "token_dtype"),
    [
        (torch.bfloat16, torch.float32, torch.float32),
        (torch.bfloat16, torch.bool, torch.float32),
        (torch.float16, torch.bool, torch.bfloat16),
        (torch.float32, torch.float16, torch.bfloat16),
    ],
    ids=str,
)
def test_mixed_dtypes_follow_type_promotion(
    backend: str, device: torch.device, x_dtype, mask_dtype, token_dtype
) -> None:
    """Output dtype = plain torch's promotion; gradients come back in x's and the token's dtypes, bitwise for 0/1."""
    shape = (2, 6, 9)
    x = torch.randn(shape, device=device).to(x_dtype)
    token = torch.randn(1, 1, 9, device=device).to(token_dtype)
    mask = (torch.rand(2, 6, device=device) < 0.5).to(mask_dtype)
    expected_dtype = (reference_blend(x, mask.float(), token) if mask_dtype == torch.bool else
                      reference_blend(x, mask, token)).dtype  # fmt: skip
    if mask_dtype != torch.bool:
        assert blend_dtype(x_dtype, mask_dtype, token_dtype) == expected_dtype
    grad_out = torch.randn(shape, device=device).to(expected_dtype)
    out, grad_x, grad_token = grads(mask_token_blend, x, mask, token, grad_out)
    ref_out, ref_grad_x, ref_grad_token = grads(reference_blend, x, mask, token, grad_out)
    if mask_dtype == torch.bool:  # a bool mask takes no part in the promotion
        assert out.dtype == torch.promote_types(x_dtype, token_dtype)
    assert_bitwise_equal(out, ref_out, "out")
    assert_bitwise_equal(grad_x, ref_grad_x, "grad_x")
    assert grad_token.dtype == token_dtype
    _, _, exact_token = grads(reference_blend, *as_double(x, mask, token), grad_out.double())
    assert_dtype_rule(grad_token, ref_grad_token, exact_token, atol=1e-5, name="grad_mask_token")


def test_non_contiguous_inputs(backend: str, device: torch.device) -> None:
    x = torch.randn(2, 11, 6, device=device).transpose(1, 2)  # (2, 6, 11), strided
    mask = (torch.rand(2, 12, device=device) < 0.5)[:, ::2]  # (2, 6), stride 2
    token = torch.randn(1, 1, 22, device=device)[..., ::2]  # (1, 1, 11), stride 2
    assert not (x.is_contiguous() or mask.is_contiguous() or token.is_contiguous())
    grad_out = torch.randn(2, 11, 6, device=device).transpose(1, 2)
    ours = grads(mask_token_blend, x, mask, token, grad_out)
    ref = grads(reference_blend, x, mask, token, grad_out)
    for name, a, b in zip(("out", "grad_x"), ours[:2], ref[:2]):
        assert_bitwise_equal(a, b, name)
    torch.testing.assert_close(ours[2], ref[2], rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy inf * 0
def test_non_finite_values_propagate_like_plain_torch(backend: str, device: torch.device) -> None:
    """The blend is arithmetic, not a select: an inf in x under the mask gives inf * 0 = NaN, as plain torch."""
    x = torch.randn(1, 4, 3, device=device)
    token = torch.randn(1, 1, 3, device=device)
    mask = torch.tensor([[True, False, True, False]], device=device)
    x[0, 0, 1] = float("inf")  # masked: NaN
    x[0, 1, 2] = float("-inf")  # kept: -inf
    out = mask_token_blend(x, mask, token)
    ref = reference_blend(x, mask, token)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().sum() == 1
    finite = ~ref.isnan()
    assert torch.equal(out[finite], ref[finite])


@pytest.mark.parametrize("target_chunks", [256, 2])
def test_backward_loops_over_rows_and_partials(
    backend: str, device: torch.device, target_chunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(2, 150, 300): 19 row chunks, more than one partial-sum tile; with 2 target chunks each program loops
    over 16 row tiles. grad_x bitwise, grad_mask_token by the dtype rule."""
    monkeypatch.setattr(blend_module, "_TARGET_CHUNKS", target_chunks)
    x, mask, token = make_inputs((2, 150, 300), torch.bfloat16, "binary", device=device)
    grad_out = torch.randn(2, 150, 300, device=device).to(torch.bfloat16)
    _, grad_x, grad_token = grads(mask_token_blend, x, mask, token, grad_out)
    _, ref_grad_x, ref_grad_token = grads(reference_blend, x, mask, token, grad_out)
    _, _, exact_token = grads(reference_blend, *as_double(x, mask, token), grad_out.double())
    assert_bitwise_equal(grad_x, ref_grad_x, "grad_x")
    assert_dtype_rule(grad_token, ref_grad_token, exact_token, atol=1e-5, name="grad_mask_token")


def test_token_gradient_is_deterministic(backend: str, device: torch.device) -> None:
    x, mask, token = make_inputs((3, 200, 5), torch.float32, "fractional", device=device)
    grad_out = torch.randn(3, 200, 5, device=device)
    first = grads(mask_token_blend, x, mask, token, grad_out)[2]
    second = grads(mask_token_blend, x, mask, token, grad_out)[2]
    assert_bitwise_equal(first, second, "grad_mask_token run to run")


def test_autocast_keeps_plain_torch_dtypes(backend: str, device: torch.device) -> None:
    """The op is not autocast (like mul/add): bf16 tokens from an autocast Linear with a float32 token give float32."""
    proj = torch.nn.Linear(4, 8, device=device)
    token = torch.randn(1, 1, 8, device=device)
    mask = torch.rand(2, 5, device=device) < 0.5
    inputs = torch.randn(2, 5, 4, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        x = proj(inputs)
        out = mask_token_blend(x, mask, token)
        ref = reference_blend(x, mask, token)
    assert x.dtype == torch.bfloat16 and out.dtype == ref.dtype == torch.float32
    assert_bitwise_equal(out, ref, "out under autocast")


@pytest.mark.parametrize("path", BACKENDS)
def test_opcheck(path: str, use_backend, device: torch.device) -> None:  # type: ignore[no-untyped-def]
    """Both branches of the op bodies (FASTMAE_BACKEND=triton runs the kernels on real tensors)."""
    use_backend(path)
    x = torch.randn(2, 5, 7, device=device, requires_grad=True)
    token = torch.randn(1, 1, 7, device=device, requires_grad=True)
    for mask in (torch.rand(2, 5, device=device) < 0.5, torch.rand(2, 5, device=device)):
        torch.library.opcheck(torch.ops.fastmae.mask_token_blend, (x, mask, token))
    grad_out = torch.randn(2, 5, 7, device=device, requires_grad=True)
    torch.library.opcheck(
        torch.ops.fastmae.mask_token_blend_backward,
        (grad_out, torch.rand(2, 5, device=device), torch.bfloat16, torch.float32),
    )


def test_double_backward_gradgradcheck(use_backend, device: torch.device) -> None:  # type: ignore[no-untyped-def]
    """The backward op is differentiable too (its adjoint is the blend): gradgradcheck in float64, torch path
    (the kernels compute in float32, too coarse for float64 finite differences)."""
    use_backend("torch")
    x = torch.randn(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    token = torch.randn(1, 1, 4, dtype=torch.float64, device=device, requires_grad=True)
    mask = torch.rand(2, 3, dtype=torch.float64, device=device)
    assert torch.autograd.gradgradcheck(lambda a, t: torch.ops.fastmae.mask_token_blend(a, mask, t), (x, token))


@pytest.mark.parametrize("path", BACKENDS)
def test_compile_fullgraph_matches_eager(path: str, use_backend, device: torch.device) -> None:  # type: ignore[no-untyped-def]
    """aot_eager fullgraph on both paths. Under the interpreter the compiled graph holds the op's torch branch
    (fake tensors cannot enter an interpreted kernel) while eager runs the kernels; on CUDA both trace them."""
    use_backend(path)

    def step(x: torch.Tensor, mask: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        return (mask_token_blend(x, mask, token) ** 2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x, mask, token = make_inputs((2, 6, 5), torch.float32, "fractional", device=device)
    eager = grads(lambda *a: step(*a).reshape(1, 1, 1), x, mask, token, None)
    traced = grads(lambda *a: compiled(*a).reshape(1, 1, 1), x, mask, token, None)
    for name, a, b in zip(("loss", "grad_x", "grad_mask_token"), traced, eager):
        assert_bitwise_equal(a, b, name)


def test_bad_inputs() -> None:
    x = torch.randn(2, 5, 7)
    mask = torch.rand(2, 5) < 0.5
    token = torch.randn(1, 1, 7)
    cases = [
        ((x[0], mask, token), ValueError, "x must have shape"),
        ((x.long(), mask, token), TypeError, "x must be float32"),
        (([1.0], mask, token), TypeError, "x must be a torch.Tensor"),
        ((x, mask[:, :4], token), ValueError, "mask must have shape"),
        ((x, mask.long(), token), TypeError, "mask must be bool or float"),
        ((x, mask, token.view(7)), ValueError, "mask_token must have shape"),
        ((x, mask, torch.randn(1, 1, 6)), ValueError, "mask_token must have shape"),
        ((x, mask, token.double()), TypeError, "mask_token must be float32"),
        ((x, mask.to("meta"), token), ValueError, "mask must be on"),
        ((x, mask, token.to("meta")), ValueError, "mask_token must be on"),
        ((x, torch.rand(2, 5, requires_grad=True), token), ValueError, "mask must not require grad"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            mask_token_blend(*args)
