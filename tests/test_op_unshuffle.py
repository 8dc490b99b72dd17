"""unshuffle_with_mask_token against the reference decoder's cat/gather/cat/+pos, both backends, on ``device``."""

from __future__ import annotations

import pytest
import torch
from op_testing import BACKENDS, assert_bitwise_equal, assert_dtype_rule

from fastmae.ops.masking import random_masking
from fastmae.ops.unshuffle import unshuffle_with_mask_token
from fastmae.reference import decoder_input as reference_decoder_input

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, use_backend) -> str:  # type: ignore[no-untyped-def]
    return use_backend(request.param, debug=True)  # poisoned outputs and id checks


def make_ids_restore(batch: int, length: int, keep: int, device: torch.device | str = "cpu") -> torch.Tensor:
    noise = torch.rand(batch, length, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    return torch.argsort(ids_shuffle, dim=1)


def make_inputs(batch, length, keep, width, x_dtype, mask_dtype, pos_dtype, grads=(True, True, True), *, device):  # type: ignore[no-untyped-def]
    x_vis = torch.randn(batch, 1 + keep, width, device=device).to(x_dtype).requires_grad_(grads[0])
    mask_token = (0.02 * torch.randn(1, 1, width, device=device)).to(mask_dtype).requires_grad_(grads[1])
    pos_embed = None
    if pos_dtype is not None:
        pos_embed = torch.randn(1, 1 + length, width, device=device).to(pos_dtype).requires_grad_(grads[2])
    return x_vis, mask_token, make_ids_restore(batch, length, keep, device), pos_embed


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
    weights = None if upstream == "sum" else torch.randn(out.shape, device=out.device).to(out.dtype)
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
def test_matches_reference(  # type: ignore[no-untyped-def]
    backend, batch, length, keep, width, x_dtype, mask_dtype, pos_dtype, upstream, device
) -> None:
    inputs = make_inputs(batch, length, keep, width, x_dtype, mask_dtype, pos_dtype, device=device)
    check_against_reference(*inputs, upstream=upstream)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_native_backward_of_a_large_grad_x_vis(use_backend, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
    """The ViT-B decoder at batch 24: the output and grad_x_vis fill over 1 MiB, so the native CPU kernels stream
    them (kernels/cpu/streaming_stores.h: the bf16 forward, the backward's rows); the output stays bitwise,
    grad_x_vis a bitwise scatter, the sums within the dtype rule."""
    use_backend("native", debug=True)
    inputs = make_inputs(24, 196, 49, 512, dtype, dtype, dtype, device="cpu")
    assert inputs[0].numel() * inputs[0].element_size() >= 1 << 20
    check_against_reference(*inputs, upstream="weighted")


@pytest.mark.parametrize("grads", [(True, False, False), (False, True, True), (False, False, True), (False,) * 3])
def test_requires_grad_combinations(backend, grads, device) -> None:  # type: ignore[no-untyped-def]
    check_against_reference(*make_inputs(2, 11, 4, 12, BF16, F32, F32, grads, device=device), upstream="weighted")


def test_non_contiguous_inputs(backend, device) -> None:  # type: ignore[no-untyped-def]
    batch, length, keep, width = 3, 13, 5, 12
    x_vis = torch.randn(batch, width, 1 + keep, device=device).transpose(1, 2).requires_grad_()  # stride 1 on K
    mask_token = torch.randn(1, 1, 2 * width, device=device)[..., ::2].requires_grad_()
    pos_embed = torch.randn(1, width, 1 + length, device=device).transpose(1, 2).requires_grad_()
    ids_restore = make_ids_restore(batch, length, keep, device).t().contiguous().t()
    assert not (x_vis.is_contiguous() or mask_token.is_contiguous() or ids_restore.is_contiguous())
    check_against_reference(x_vis, mask_token, ids_restore, pos_embed, upstream="weighted")


def test_with_random_masking_and_autocast_dtype(backend, device) -> None:  # type: ignore[no-untyped-def]
    """Under bf16 autocast the decoder_embed output is bf16 and the params fp32: the output is fp32, as in the
    reference, where ``+ decoder_pos_embed`` is plain type promotion."""
    batch, length, width = 2, 16, 8
    masking = random_masking(batch, length, 0.75, device=device)
    embed = torch.nn.Linear(6, width, device=device)
    mask_token = torch.nn.Parameter(0.02 * torch.randn(1, 1, width, device=device))
    pos_embed = torch.nn.Parameter(torch.randn(1, 1 + length, width, device=device), requires_grad=False)
    latent = torch.randn(batch, 1 + masking.num_keep, 6, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        x_vis = embed(latent)
        out = unshuffle_with_mask_token(x_vis, mask_token, masking.ids_restore, pos_embed)
        expected = reference_decoder_input(x_vis, mask_token, masking.ids_restore, pos_embed)
    assert x_vis.dtype == BF16 and expected.dtype == F32
    assert_bitwise_equal(out, expected)


def test_debug_mode_rejects_invalid_ids(backend, device) -> None:  # type: ignore[no-untyped-def]
    x_vis, mask_token, ids_restore, pos_embed = make_inputs(2, 8, 3, 8, F32, F32, F32, device=device)
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


@pytest.mark.parametrize("path", BACKENDS)
def test_opcheck(path: str, use_backend, device: torch.device) -> None:  # type: ignore[no-untyped-def]
    """Both branches of the op bodies (FASTMAE_BACKEND=triton runs the kernels on real tensors)."""
    use_backend(path)
    for pos_dtype in (F32, None):
        x_vis, mask_token, ids_restore, pos_embed = make_inputs(2, 7, 2, 8, BF16, F32, pos_dtype, device=device)
        torch.library.opcheck(torch.ops.fastmae.unshuffle_with_mask_token, (x_vis, mask_token, ids_restore, pos_embed))
    grad_out = torch.randn(2, 8, 8, device=device)
    for needs in ([True, True, True], [False, True, False], [True, False, False]):
        torch.library.opcheck(
            torch.ops.fastmae.unshuffle_with_mask_token_backward,
            (grad_out, ids_restore, 2, BF16, F32, F32, needs),
        )


def test_compiles_fullgraph_like_eager(backend: str, device: torch.device) -> None:
    """aot_eager fullgraph on every path. The torch and native paths run the same kernels compiled and eager:
    bitwise equal. Under the interpreter the compiled graph holds the op's torch branch (fake tensors cannot enter
    an interpreted kernel) while eager runs the Triton kernels: the gathers and the two-sample pos_embed sum agree
    bitwise, the mask_token sum (another summation order) to fp32 rounding."""
    x_vis, mask_token, ids_restore, pos_embed = make_inputs(2, 9, 3, 8, BF16, F32, F32, device=device)

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


@pytest.mark.slow
@pytest.mark.parametrize("path", ["torch", "triton"])
def test_int64_offsets_past_2_31(path: str, use_backend, cuda_device: torch.device) -> None:  # type: ignore[no-untyped-def]
    """bf16 x_vis and output with more than 2^31 elements each (~4.5 GB; GPU only): the last samples' rows,
    forward and x_vis gradient, bitwise equal to the reference computed on those samples only."""
    use_backend(path)
    batch, length, keep, width = 544, 4095, 4000, 1024
    assert (batch - 1) * (1 + keep) * width > 2**31, "the last sample's x_vis rows must start past 2^31"
    assert (batch - 1) * (1 + length) * width > 2**31, "the last sample's output rows must start past 2^31"
    x_vis = torch.randn(batch, 1 + keep, width, device=cuda_device, dtype=BF16, requires_grad=True)
    mask_token = (0.02 * torch.randn(1, 1, width, device=cuda_device)).to(BF16)
    pos_embed = torch.randn(1, 1 + length, width, device=cuda_device).to(BF16)
    ids_restore = make_ids_restore(batch, length, keep, cuda_device)
    out = unshuffle_with_mask_token(x_vis, mask_token, ids_restore, pos_embed)
    assert out.shape == (batch, 1 + length, width) and out.dtype == BF16
    grad_out = torch.randn(out.shape, device=cuda_device, dtype=BF16)
    (grad_x_vis,) = torch.autograd.grad(out, x_vis, grad_out)

    far = slice(batch - 2, batch)
    far_x_vis = x_vis.detach()[far].requires_grad_()
    expected = reference_decoder_input(far_x_vis, mask_token, ids_restore[far], pos_embed)
    assert_bitwise_equal(out[far], expected, "output (far samples)")
    (expected_grad,) = torch.autograd.grad(expected, far_x_vis, grad_out[far])
    assert_bitwise_equal(grad_x_vis[far], expected_grad, "grad x_vis (far samples)")


def test_native_kernel_rejects_non_permutation(use_backend) -> None:  # type: ignore[no-untyped-def]
    """The native kernel checks ids_restore's values itself on the CPU (called directly: the API checks first)."""
    use_backend("native")
    ids_restore = torch.tensor([[0, 0, 1]])
    with pytest.raises(ValueError, match="not a permutation"):
        x_vis, mask_token = torch.randn(1, 2, 4), torch.randn(1, 1, 4)
        torch.ops.fastmae_kernels.unshuffle_with_mask_token(x_vis, mask_token, ids_restore, None)


# float32 bit patterns a GPU produces: NaNs with every payload kind (max positive, all ones = negative, the
# canonical quiet NaN, a signalling NaN just above inf) and both infinities
NAN_INF_BITS = (0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0x7F800001, 0x7F800000, 0xFF800000)


def float32_from_bits(bits: tuple[int, ...]) -> torch.Tensor:
    signed = [b - (1 << 32) if b >= 1 << 31 else b for b in bits]
    return torch.tensor(signed, dtype=torch.int32).view(torch.float32)


def test_backward_narrowing_keeps_nan_and_inf(backend: str, device: torch.device) -> None:
    """float32 gradient rows narrowed to bf16 x_vis's gradient (the one narrowing cast of the backward): every
    NaN stays NaN, and +-inf stay +-inf (a rounding by bit arithmetic must not turn a NaN into +-0 or inf)."""
    batch, length, keep = 2, 5, 3
    width = len(NAN_INF_BITS)
    x_vis = torch.randn(batch, 1 + keep, width, device=device).to(torch.bfloat16).requires_grad_()
    mask_token = torch.zeros(1, 1, width, device=device)
    pos_embed = torch.zeros(1, 1 + length, width, device=device)  # float32: the output (and its grad) is float32
    ids_restore = make_ids_restore(batch, length, keep, device)
    out = unshuffle_with_mask_token(x_vis, mask_token, ids_restore, pos_embed)
    assert out.dtype == torch.float32
    grad_out = float32_from_bits(NAN_INF_BITS).to(device).expand(batch, 1 + length, width).contiguous()
    (grad_x,) = torch.autograd.grad(out, x_vis, grad_out)
    assert grad_x.dtype == torch.bfloat16
    nan_columns = [i for i, b in enumerate(NAN_INF_BITS) if (b & 0x7FFFFFFF) > 0x7F800000]
    assert grad_x[..., nan_columns].isnan().all(), f"a NaN lost its NaN-ness: {grad_x[..., nan_columns]}"
    assert (grad_x[..., 4] == float("inf")).all() and (grad_x[..., 5] == float("-inf")).all(), grad_x[..., 4:]
    reference = grad_out[:, :1 + keep].to(torch.bfloat16)  # any rows: every row holds the same patterns
    assert torch.equal(grad_x.isnan(), reference.isnan()) and torch.equal(grad_x.isinf(), reference.isinf())
    assert torch.equal(grad_x.signbit() & grad_x.isinf(), reference.signbit() & reference.isinf())


def test_native_backward_sums_do_not_depend_on_the_thread_count(use_backend) -> None:  # type: ignore[no-untyped-def]
    """The native backward splits rows over threads and samples into groups of four: a fixed summation order,
    so one and two threads give the same bits (batch 7: groups of 4 and 3; enough rows for two tasks)."""
    use_backend("native")
    cpu = torch.device("cpu")
    inputs = make_inputs(7, 64, 16, 256, BF16, F32, F32, device=cpu)
    weights = torch.randn(7, 65, 256)
    grads = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = unshuffle_with_mask_token(*inputs)
            grads.append(torch.autograd.grad((out.float() * weights).sum(), [inputs[0], inputs[1], inputs[3]]))
    finally:
        torch.set_num_threads(previous)
    for name, one, two in zip(("x_vis", "mask_token", "pos_embed"), *grads):
        assert_bitwise_equal(two, one, f"grad {name}")
