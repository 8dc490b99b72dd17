"""unshuffle_with_mask_token against the reference decoder's cat/gather/cat/+pos, both backends."""

from __future__ import annotations

import pytest
import torch
from op_testing import assert_bitwise_equal, assert_dtype_rule

from fastmae.ops.masking import random_masking
from fastmae.ops.unshuffle import unshuffle_with_mask_token

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def reference_decoder_input(x, mask_token, ids_restore, pos_embed):  # type: ignore[no-untyped-def]
    """The official forward_decoder steps between decoder_embed and the blocks."""
    n, length = ids_restore.shape
    mask_tokens = mask_token.expand(n, length + 1 - x.shape[1], -1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens.to(x.dtype)], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1)
    return x + pos_embed if pos_embed is not None else x


@pytest.fixture(params=["torch", "triton"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FASTMAE_BACKEND", request.param)
    monkeypatch.setenv("FASTMAE_DEBUG", "1")  # poisoned outputs and id checks
    return request.param


def make_ids_restore(batch: int, length: int, keep: int) -> torch.Tensor:
    noise = torch.rand(batch, length)
    ids_shuffle = torch.argsort(noise, dim=1)
    return torch.argsort(ids_shuffle, dim=1)


def make_inputs(batch, length, keep, width, x_dtype, mask_dtype, pos_dtype, grads=(True, True, True)):  # type: ignore[no-untyped-def]
    x_vis = torch.randn(batch, 1 + keep, width).to(x_dtype).requires_grad_(grads[0])
    mask_token = (0.02 * torch.randn(1, 1, width)).to(mask_dtype).requires_grad_(grads[1])
    pos_embed = None
    if pos_dtype is not None:
        pos_embed = torch.randn(1, 1 + length, width).to(pos_dtype).requires_grad_(grads[2])
    return x_vis, mask_token, make_ids_restore(batch, length, keep), pos_embed


def detached_double(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().double().requires_grad_(t.requires_grad)


def check_against_reference(x_vis, mask_token, ids_restore, pos_embed, upstream: str) -> None:  # type: ignore[no-untyped-def]
    out = unshuffle_with_mask_token(x_vis, mask_token, ids_restore, pos_embed)
    expected = reference_decoder_input(x_vis, mask_token, ids_restore, pos_embed)
    assert_bitwise_equal(out, expected, "output")

    inputs = [t for t in (x_vis, mask_token, pos_embed) if t is not None and t.requires_grad]
    if not inputs:
        assert not out.requires_grad
        return
    weights = None if upstream == "sum" else torch.randn(out.shape).to(out.dtype)
    # .sum() hands the backward a stride-0 gradient (CPU_FACTS): launchers must not assume contiguity
    loss = out.sum() if weights is None else (out * weights).sum()
    expected_loss = expected.sum() if weights is None else (expected * weights).sum()
    grads = torch.autograd.grad(loss, inputs)
    expected_grads = torch.autograd.grad(expected_loss, inputs)

    doubles = [detached_double(t) for t in (x_vis, mask_token, pos_embed)]
    out64 = reference_decoder_input(doubles[0], doubles[1], ids_restore, doubles[2])
    loss64 = out64.sum() if weights is None else (out64 * weights.double()).sum()
    grads64 = torch.autograd.grad(loss64, [t for t in doubles if t is not None and t.requires_grad])

    names = [n for n, t in zip(("x_vis", "mask_token", "pos_embed"), (x_vis, mask_token, pos_embed))
             if t is not None and t.requires_grad]  # fmt: skip
    for name, grad, ref, ref64, source in zip(names, grads, expected_grads, grads64, inputs):
        assert grad.dtype == source.dtype, f"grad {name}: dtype {grad.dtype} != {source.dtype}"
        if name == "x_vis":
            assert_bitwise_equal(grad, ref, "grad x_vis")  # a pure scatter
        else:
            assert_dtype_rule(grad, ref, ref64, atol=1e-5, name=f"grad {name}")


CASES = [
    # batch, L, K, d, x_vis dtype, mask_token dtype, pos_embed dtype (None: no pos embed)
    pytest.param(1, 35, 1, 24, F32, F32, F32, id="b1-odd-L-K1-fp32"),
    pytest.param(3, 35, 34, 20, BF16, F32, F32, id="K=L-1-bf16-tokens-fp32-params"),
    pytest.param(2, 16, 4, 8, F16, F16, F16, id="fp16"),
    pytest.param(2, 35, 8, 20, BF16, BF16, None, id="bf16-no-pos"),
    pytest.param(2, 9, 3, 40, F32, F32, BF16, id="fp32-tokens-bf16-pos"),
    pytest.param(2, 6, 0, 8, F16, F32, None, id="K0-all-masked"),
    pytest.param(18, 5, 2, 8, BF16, F32, BF16, id="batch-over-one-backward-chunk"),
]


@pytest.mark.parametrize(("batch", "length", "keep", "width", "x_dtype", "mask_dtype", "pos_dtype"), CASES)
@pytest.mark.parametrize("upstream", ["sum", "weighted"])
def test_matches_reference(backend, batch, length, keep, width, x_dtype, mask_dtype, pos_dtype, upstream) -> None:  # type: ignore[no-untyped-def]
    inputs = make_inputs(batch, length, keep, width, x_dtype, mask_dtype, pos_dtype)
    check_against_reference(*inputs, upstream=upstream)


@pytest.mark.parametrize("grads", [(True, False, False), (False, True, True), (False, False, True), (False,) * 3])
def test_requires_grad_combinations(backend, grads) -> None:  # type: ignore[no-untyped-def]
    check_against_reference(*make_inputs(2, 11, 4, 12, BF16, F32, F32, grads), upstream="weighted")


def test_non_contiguous_inputs(backend) -> None:  # type: ignore[no-untyped-def]
    batch, length, keep, width = 3, 13, 5, 12
    x_vis = torch.randn(batch, width, 1 + keep).transpose(1, 2).requires_grad_()  # (B, 1+K, d), stride 1 on K
    mask_token = torch.randn(1, 1, 2 * width)[..., ::2].requires_grad_()
    pos_embed = torch.randn(1, width, 1 + length).transpose(1, 2).requires_grad_()
    ids_restore = make_ids_restore(batch, length, keep).t().contiguous().t()
    assert not (x_vis.is_contiguous() or mask_token.is_contiguous() or ids_restore.is_contiguous())
    check_against_reference(x_vis, mask_token, ids_restore, pos_embed, upstream="weighted")


def test_with_random_masking_and_autocast_dtype(backend) -> None:  # type: ignore[no-untyped-def]
    """Under bf16 autocast the decoder_embed output is bf16 and the params fp32: the output is fp32, as in the
    reference, where ``+ decoder_pos_embed`` is plain type promotion."""
    batch, length, width = 2, 16, 8
    masking = random_masking(batch, length, 0.75)
    embed = torch.nn.Linear(6, width)
    mask_token = torch.nn.Parameter(0.02 * torch.randn(1, 1, width))
    pos_embed = torch.nn.Parameter(torch.randn(1, 1 + length, width), requires_grad=False)
    latent = torch.randn(batch, 1 + masking.num_keep, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_vis = embed(latent)
        out = unshuffle_with_mask_token(x_vis, mask_token, masking.ids_restore, pos_embed)
        expected = reference_decoder_input(x_vis, mask_token, masking.ids_restore, pos_embed)
    assert x_vis.dtype == BF16 and expected.dtype == F32
    assert_bitwise_equal(out, expected)


def test_debug_mode_rejects_invalid_ids(backend) -> None:  # type: ignore[no-untyped-def]
    x_vis, mask_token, ids_restore, pos_embed = make_inputs(2, 8, 3, 8, F32, F32, F32)
    out_of_range = ids_restore.clone()
    out_of_range[1, 4] = 8
    with pytest.raises(ValueError, match=r"ids_restore values must lie in \[0, L\)"):
        unshuffle_with_mask_token(x_vis, mask_token, out_of_range, pos_embed)
    duplicated = ids_restore.clone()
    duplicated[0, 0] = duplicated[0, 1]
    with pytest.raises(ValueError, match="permutations"):
        unshuffle_with_mask_token(x_vis, mask_token, duplicated, pos_embed)


def _bad(**changes):  # type: ignore[no-untyped-def]
    args = dict(
        x_vis=torch.randn(2, 4, 8), mask_token=torch.randn(1, 1, 8),
        ids_restore=make_ids_restore(2, 6, 3), pos_embed=torch.randn(1, 7, 8),
    )  # fmt: skip
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (dict(x_vis=torch.randn(4, 8)), ValueError, "x_vis must have shape"),
        (dict(x_vis=torch.randn(2, 4, 8).to(torch.int32)), TypeError, "x_vis must be float32"),
        (dict(x_vis=[1.0]), TypeError, "x_vis must be a torch.Tensor"),
        (dict(x_vis=torch.randn(2, 8, 8)), ValueError, "K <= L=6"),
        (dict(ids_restore=make_ids_restore(2, 6, 3).int()), TypeError, "ids_restore must be int64"),
        (dict(ids_restore=make_ids_restore(3, 6, 3)), ValueError, "ids_restore must have shape"),
        (dict(mask_token=torch.randn(8)), ValueError, "mask_token must have shape"),
        (dict(mask_token=torch.randn(1, 1, 8).double()), TypeError, "mask_token must be float32"),
        (dict(pos_embed=torch.randn(1, 6, 8)), ValueError, "pos_embed must have shape"),
        (dict(pos_embed=torch.randn(1, 7, 8, device="meta")), ValueError, "pos_embed must be on cpu"),
    ],
)
def test_bad_inputs(changes, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        unshuffle_with_mask_token(**_bad(**changes))


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_opcheck(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both branches of the op bodies (FASTMAE_BACKEND=triton runs the interpreted kernels on real tensors)."""
    monkeypatch.setenv("FASTMAE_BACKEND", path)
    for pos_dtype in (F32, None):
        x_vis, mask_token, ids_restore, pos_embed = make_inputs(2, 7, 2, 8, BF16, F32, pos_dtype)
        torch.library.opcheck(torch.ops.fastmae.unshuffle_with_mask_token, (x_vis, mask_token, ids_restore, pos_embed))
    grad_out = torch.randn(2, 8, 8)
    for needs in ([True, True, True], [False, True, False], [True, False, False]):
        torch.library.opcheck(
            torch.ops.fastmae.unshuffle_with_mask_token_backward,
            (grad_out, ids_restore, 2, BF16, F32, F32, needs),
        )


def test_compiles_fullgraph_like_eager(backend: str) -> None:
    """aot_eager fullgraph on both paths. Under the interpreter the compiled graph holds the op's torch branch
    (fake tensors cannot enter an interpreted kernel) while eager runs the kernels: the gathers and the
    two-sample pos_embed sum agree bitwise, the mask_token sum (another summation order) to fp32 rounding."""
    x_vis, mask_token, ids_restore, pos_embed = make_inputs(2, 9, 3, 8, BF16, F32, F32)

    def step(x, token, ids, pos):  # type: ignore[no-untyped-def]
        return (unshuffle_with_mask_token(x, token, ids, pos).float() ** 2).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    inputs = [x_vis, mask_token, pos_embed]
    eager_loss = step(x_vis, mask_token, ids_restore, pos_embed)
    eager_grads = torch.autograd.grad(eager_loss, inputs)
    compiled_loss = compiled(x_vis, mask_token, ids_restore, pos_embed)
    compiled_grads = torch.autograd.grad(compiled_loss, inputs)
    assert_bitwise_equal(compiled_loss, eager_loss, "loss")
    for name, got, want in zip(("x_vis", "mask_token", "pos_embed"), compiled_grads, eager_grads):
        if name == "mask_token" and backend == "triton":
            torch.testing.assert_close(got, want, msg=f"grad {name}")
        else:
            assert_bitwise_equal(got, want, f"grad {name}")
