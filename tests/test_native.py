"""The native extension (kernels/): its ops against the reference, its registration, and the fallback.

On CI (env CI set) the CPU part must have been built: a missing extension fails the run there.
The ops are called directly through ``torch.ops.fastmae_native`` and through the public API with
FASTMAE_BACKEND=native. FASTMAE_DEBUG=1 makes the kernels poison their outputs with NaN.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from op_testing import DTYPES, assert_bitwise_equal, assert_dtype_rule

from fastmae import _native, info, reference
from fastmae.ops import _backend


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch):
    """torch.ops.fastmae_native, with poisoned outputs; fails on CI when the extension did not load."""
    if not _native.available():
        message = f"native extension did not load: {_native.load_error() or 'not built'}"
        if os.environ.get("CI"):
            pytest.fail(f"native extension did not load on CI ({message})")
        pytest.skip(message)
    monkeypatch.setenv("FASTMAE_DEBUG", "1")
    return torch.ops.fastmae_native


def patch_rows(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """Oracle patchify: images through the reference, video (B,C,T,H,W) in tubelet (t, i, j, c) order."""
    if x.dim() == 4:
        assert patch[0] == patch[1]
        return reference.patchify(x, patch[0])
    b, c, t, h, w = x.shape
    pt, ph, pw = patch
    x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def shuffle_ids(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids_shuffle = torch.rand(batch, length).argsort(dim=1)
    return ids_shuffle, ids_shuffle.argsort(dim=1)


# (imgs shape, patch): odd grids, C = 1 and 3, p = 14, batch 1, video
GATHER_CASES = [
    ((1, 3, 28, 20), (4, 4)),  # 7 x 5 grid
    ((2, 1, 28, 42), (14, 14)),  # 2 x 3 grid, C = 1
    ((2, 3, 4, 8, 12), (2, 4, 4)),  # video, 2 x 2 x 3 tubelets
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,patch", GATHER_CASES)
@pytest.mark.parametrize("keep", ["one", "all_but_one"])
def test_patchify_gather_bitwise(native, dtype, shape, patch, keep):
    imgs = torch.randn(shape).to(dtype).requires_grad_()
    rows_ref = patch_rows(imgs, patch)
    batch, length, dim = rows_ref.shape
    num_keep = 1 if keep == "one" else length - 1
    ids_keep = shuffle_ids(batch, length)[0][:, :num_keep]
    out = native.patchify_gather(imgs, ids_keep, list(patch))
    expected = rows_ref.gather(1, ids_keep[..., None].expand(-1, -1, dim))
    assert_bitwise_equal(out, expected, "patches")
    grad = torch.randn_like(out)
    (grad_imgs,) = torch.autograd.grad(out, imgs, grad)
    (grad_ref,) = torch.autograd.grad(expected, imgs, grad, retain_graph=True)
    assert_bitwise_equal(grad_imgs, grad_ref, "grad imgs")
    # the gradient of .sum() arrives expanded (stride 0)
    (grad_sum,) = torch.autograd.grad(native.patchify_gather(imgs, ids_keep, list(patch)).sum(), imgs)
    (grad_sum_ref,) = torch.autograd.grad(expected.sum(), imgs)
    assert_bitwise_equal(grad_sum, grad_sum_ref, "grad imgs from sum")


def test_patchify_gather_non_contiguous(native):
    imgs = torch.randn(2, 20, 12, 3).permute(0, 3, 1, 2)  # a channels-last view
    ids_keep = shuffle_ids(2, 15)[0][:, :4]
    expected = reference.patchify(imgs, 4).gather(1, ids_keep[..., None].expand(-1, -1, 48))
    assert_bitwise_equal(native.patchify_gather(imgs, ids_keep, [4, 4]), expected)


def test_patchify_gather_int64_offsets(native):
    """One image of more than 2^31 elements (never touched except its last patch): offsets must be int64."""
    side = 46342  # side * side > 2**31
    imgs = torch.empty((1, 1, side, side), dtype=torch.float16)
    corner = torch.randn(2, 2).to(torch.float16)
    imgs[0, 0, -2:, -2:] = corner
    last = (side // 2) ** 2 - 1
    out = native.patchify_gather(imgs, torch.tensor([[last]]), [2, 2])
    assert_bitwise_equal(out, corner.reshape(1, 1, 4))


def test_patchify_gather_bad_input(native):
    imgs = torch.randn(2, 3, 8, 8)
    with pytest.raises(TypeError, match="ids_keep must be int64"):
        native.patchify_gather(imgs, torch.zeros(2, 1, dtype=torch.int32), [4, 4])
    with pytest.raises(ValueError, match="outside"):
        native.patchify_gather(imgs, torch.full((2, 1), 4), [4, 4])
    with pytest.raises(ValueError, match="not divisible"):
        native.patchify_gather(imgs, torch.zeros(2, 1, dtype=torch.long), [3, 3])
    with pytest.raises(ValueError, match="patch_size must have 2 entries"):
        native.patchify_gather(imgs, torch.zeros(2, 1, dtype=torch.long), [4, 4, 4])


def unshuffle_reference(x_vis, mask_token, ids_restore, pos_embed):
    """The reference decoder's cat / gather / cat / + pos_embed."""
    batch, length = ids_restore.shape
    width = x_vis.shape[2]
    tokens = mask_token.to(x_vis.dtype).expand(batch, length + 1 - x_vis.shape[1], width)
    patches = torch.cat([x_vis[:, 1:], tokens], dim=1).gather(1, ids_restore[..., None].expand(-1, -1, width))
    out = torch.cat([x_vis[:, :1], patches], dim=1)
    return out + pos_embed if pos_embed is not None else out


UNSHUFFLE_DTYPES = [  # (x_vis, mask_token, pos_embed); None: no pos_embed
    (torch.float32, torch.float32, torch.float32),
    (torch.bfloat16, torch.float32, torch.float32),  # bf16 tokens, fp32 params: fp32 output
    (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16, None),
]


@pytest.mark.parametrize("dtypes", UNSHUFFLE_DTYPES, ids=lambda d: "-".join(str(t)[6:] for t in d))
@pytest.mark.parametrize("batch,length,num_keep", [(1, 35, 1), (3, 35, 34), (2, 12, 3)])
def test_unshuffle(native, dtypes, batch, length, num_keep):
    x_dtype, token_dtype, pos_dtype = dtypes
    width = 24
    x_vis = torch.randn(batch, 1 + num_keep, width).to(x_dtype).requires_grad_()
    mask_token = torch.randn(1, 1, width).to(token_dtype).requires_grad_()
    pos_embed = torch.randn(1, 1 + length, width).to(pos_dtype).requires_grad_() if pos_dtype else None
    ids_restore = shuffle_ids(batch, length)[1]
    out = native.unshuffle_with_mask_token(x_vis, mask_token, ids_restore, pos_embed)
    expected = unshuffle_reference(x_vis, mask_token, ids_restore, pos_embed)
    assert_bitwise_equal(out, expected, "unshuffled tokens")

    params = [x_vis, mask_token] + ([pos_embed] if pos_embed is not None else [])
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, params, grad)
    same_dtype = torch.autograd.grad(expected, params, grad)
    wide = [p.detach().double().requires_grad_() for p in params]
    wide_out = unshuffle_reference(wide[0], wide[1], ids_restore, wide[2] if pos_embed is not None else None)
    exact = torch.autograd.grad(wide_out, wide, grad.double())
    assert_bitwise_equal(ours[0], same_dtype[0], "grad x_vis")
    assert ours[1].dtype == token_dtype
    assert_dtype_rule(ours[1], same_dtype[1], exact[1], atol=1e-5, name="grad mask_token")
    if pos_embed is not None:
        assert ours[2].dtype == pos_dtype
        assert_dtype_rule(ours[2], same_dtype[2], exact[2], atol=1e-5, name="grad pos_embed")


def test_unshuffle_gradient_of_sum(native):
    x_vis = torch.randn(2, 4, 8, requires_grad=True)
    mask_token = torch.randn(1, 1, 8, requires_grad=True)
    ids_restore = shuffle_ids(2, 9)[1]
    ours = torch.autograd.grad(native.unshuffle_with_mask_token(x_vis, mask_token, ids_restore, None).sum(), x_vis)
    expected = torch.autograd.grad(unshuffle_reference(x_vis, mask_token, ids_restore, None).sum(), x_vis)
    assert_bitwise_equal(ours[0], expected[0], "grad x_vis from sum")


def test_unshuffle_rejects_non_permutation(native):
    ids_restore = torch.tensor([[0, 0, 1]])
    with pytest.raises(ValueError, match="not a permutation"):
        native.unshuffle_with_mask_token(torch.randn(1, 2, 4), torch.randn(1, 1, 4), ids_restore, None)


def loss_oracle(pred, source, mask, patch, norm_pix, eps, sample_weight=None, explicit=False):
    """The spec loss, generalised: explicit target, video, per-sample weights (mask 1 = removed)."""
    target = source if explicit else patch_rows(source, patch)
    if norm_pix:
        target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + eps) ** 0.5
    weights = mask if sample_weight is None else mask * sample_weight[:, None]
    return (((pred - target) ** 2).mean(dim=-1) * weights).sum() / weights.sum()


LOSS_CASES = [  # (source shape, patch, removed_only, norm_pix, weighted, explicit target)
    ((2, 3, 28, 20), (4, 4), False, False, False, False),
    ((1, 3, 28, 20), (4, 4), True, True, False, False),
    ((2, 1, 28, 42), (14, 14), True, False, True, False),
    ((2, 3, 4, 8, 12), (2, 4, 4), False, True, True, False),
    ((2, 3, 4, 8, 12), (2, 4, 4), True, False, False, False),
    ((3, 10, 16), (), True, True, True, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LOSS_CASES, ids=str)
def test_masked_mse_loss(native, dtype, case):
    shape, patch, removed_only, norm_pix, weighted, explicit = case
    eps = 1e-6
    source = torch.randn(shape).to(dtype).requires_grad_()
    length = shape[1] if explicit else patch_rows(source, patch).shape[1]
    dim = shape[2] if explicit else math.prod(patch) * shape[1]
    batch = shape[0]
    num_keep = 1 if removed_only and batch == 1 else length // 3
    ids_shuffle, ids_restore = shuffle_ids(batch, length)
    mask = (ids_restore >= num_keep).to(dtype)
    sample_weight = torch.rand(batch).to(dtype) + 0.5 if weighted else None
    pred_full = torch.randn(batch, length, dim).to(dtype).requires_grad_()
    imgs, target = (None, source) if explicit else (source, None)
    if removed_only:
        pred = pred_full[torch.arange(batch)[:, None], ids_shuffle[:, num_keep:]]
        loss = native.masked_mse_loss(pred, imgs, ids_restore, None, target, sample_weight, list(patch), norm_pix, eps)
    else:
        loss = native.masked_mse_loss(pred_full, imgs, None, mask, target, sample_weight, list(patch), norm_pix, eps)
    assert loss.dtype == torch.float32 and loss.dim() == 0

    def oracle(cast):
        weights = sample_weight if sample_weight is None else cast(sample_weight)
        return loss_oracle(cast(pred_full), cast(source), cast(mask), patch, norm_pix, eps, weights, explicit)

    same_dtype = oracle(lambda t: t)
    exact = oracle(lambda t: t.double())
    assert_dtype_rule(loss, same_dtype, exact, atol=1e-5, name="loss")
    ours = torch.autograd.grad(loss, [pred_full, source])
    same_grads = torch.autograd.grad(same_dtype, [pred_full, source])
    exact_grads = torch.autograd.grad(exact, [pred_full, source])
    for name, a, b, c in zip(("grad pred", "grad source"), ours, same_grads, exact_grads):
        assert a.dtype == dtype, name
        assert_dtype_rule(a, b, c, atol=1e-5, name=name)


def test_masked_mse_loss_matches_reference_mae_loss(native):
    imgs = torch.randn(2, 3, 16, 16)
    pred = torch.randn(2, 16, 48)
    ids_restore = shuffle_ids(2, 16)[1]
    mask = (ids_restore >= 4).float()
    for norm_pix in (False, True):
        loss = native.masked_mse_loss(pred, imgs, None, mask, None, None, [4, 4], norm_pix, reference.NORM_PIX_EPS)
        expected = reference.mae_loss(imgs.double(), pred.double(), mask.double(), 4, norm_pix).float()
        torch.testing.assert_close(loss, expected, rtol=2e-6, atol=1e-6)


def opcheck_cases(native):
    imgs = torch.randn(2, 3, 8, 12, requires_grad=True)
    ids_shuffle, ids_restore = shuffle_ids(2, 6)
    x_vis = torch.randn(2, 3, 8, requires_grad=True)
    token = torch.randn(1, 1, 8, requires_grad=True)
    pos = torch.randn(1, 7, 8)
    pred = torch.randn(2, 4, 48, requires_grad=True)
    grad_rows = torch.randn(2, 2, 48)
    return [
        (native.patchify_gather.default, (imgs, ids_shuffle[:, :2], [4, 4])),
        (native.patchify_gather_backward.default, (grad_rows, ids_shuffle[:, :2], [4, 4], [2, 3, 8, 12])),
        (native.unshuffle_with_mask_token.default, (x_vis, token, ids_restore, pos)),
        (
            native.unshuffle_with_mask_token_backward.default,
            (torch.randn(2, 7, 8), ids_restore, 2, torch.float32, torch.float32, torch.float32, [True, True, True]),
        ),
        (native.masked_mse_loss.default, (pred, imgs, ids_restore, None, None, None, [4, 4], True, 1e-6)),
        (
            native.masked_mse_loss_backward.default,
            (torch.tensor(1.0), pred.detach(), imgs.detach(), ids_restore, None, None, None, [4, 4], True, 1e-6, True),
        ),
    ]


def test_opcheck(native):
    for op, args in opcheck_cases(native):
        torch.library.opcheck(op, args)


def test_compile_fullgraph_matches_eager(native):
    imgs = torch.randn(2, 3, 8, 12)
    ids_shuffle, ids_restore = shuffle_ids(2, 6)
    embed = torch.nn.Linear(48, 16)
    mask_token = torch.nn.Parameter(torch.randn(1, 1, 16))
    head = torch.nn.Linear(16, 48)

    def step(imgs):
        visible = native.patchify_gather(imgs, ids_shuffle[:, :2], [4, 4])
        x = embed(visible)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        tokens = native.unshuffle_with_mask_token(x, mask_token, ids_restore, None)
        pred = head(tokens[:, 1:])
        removed = pred.gather(1, ids_shuffle[:, 2:, None].expand(-1, -1, 48))
        return native.masked_mse_loss(removed, imgs, ids_restore, None, None, None, [4, 4], True, 1e-6)

    params = [*embed.parameters(), mask_token, *head.parameters()]
    eager = step(imgs)
    eager_grads = torch.autograd.grad(eager, params)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(imgs)
    compiled_grads = torch.autograd.grad(compiled, params)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)



def test_model_compiles_fullgraph_with_auto_native_backend(native, monkeypatch):
    """The per-call backend choice (extension lookup included) must not break a compiled graph."""
    from fastmae.models import create_model

    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    monkeypatch.delenv("FASTMAE_DEBUG", raising=False)
    model = create_model("mae_vit_test")
    imgs, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    eager = model(imgs, 0.75, noise)[0]
    compiled = torch.compile(lambda i, n: model(i, 0.75, n)[0], fullgraph=True, backend="aot_eager")(imgs, noise)
    torch.testing.assert_close(compiled, eager)

# --------------------------------------------------------------------------------------
# Backend selection, the public API, the pure-Python fallback, `fastmae info`
# --------------------------------------------------------------------------------------
def test_auto_selects_native_for_cpu(native, monkeypatch):
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    assert _backend.select_backend(torch.device("cpu")) == "native"
    assert _backend.resolve_op("patchify_gather", torch.device("cpu")) is torch.ops.fastmae_native.patchify_gather


def test_public_api_with_native_backend(native, monkeypatch):
    # from the op modules: `fastmae.ops.patchify_gather` is also a submodule name, which shadows the lazy export
    from fastmae.ops import masked_mse_loss, patchify_gather
    from fastmae.ops.unshuffle import unshuffle_with_mask_token

    monkeypatch.setenv("FASTMAE_BACKEND", "native")
    imgs = torch.randn(2, 3, 28, 20, requires_grad=True)
    ids_shuffle, ids_restore = shuffle_ids(2, 35)
    ids_keep = ids_shuffle[:, :8]
    visible = patchify_gather(imgs, ids_keep, 4)
    assert_bitwise_equal(visible, reference.patchify(imgs, 4).gather(1, ids_keep[..., None].expand(-1, -1, 48)))
    x_vis = torch.randn(2, 9, 16)
    mask_token, pos_embed = torch.randn(1, 1, 16), torch.randn(1, 36, 16)
    tokens = unshuffle_with_mask_token(x_vis, mask_token, ids_restore, pos_embed)
    assert_bitwise_equal(tokens, unshuffle_reference(x_vis, mask_token, ids_restore, pos_embed))
    pred = torch.randn(2, 35, 48)
    mask = (ids_restore >= 8).float()
    loss = masked_mse_loss(pred, imgs, None, 4, norm_pix=True, mask=mask)
    expected = reference.mae_loss(imgs.double(), pred.double(), mask.double(), 4, True).float()
    torch.testing.assert_close(loss, expected, rtol=2e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(visible.sum() + loss, imgs)
    assert torch.isfinite(grad).all()


def test_fallback_when_extension_unavailable(monkeypatch):
    monkeypatch.setattr(_native, "available", lambda: False)
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    assert _backend.select_backend(torch.device("cpu")) == "torch"
    monkeypatch.setenv("FASTMAE_BACKEND", "native")
    with pytest.raises(RuntimeError, match="native extension is not available"):
        _backend.select_backend(torch.device("cpu"))


def test_public_api_falls_back_to_torch(monkeypatch):
    # from the op modules: `fastmae.ops.patchify_gather` is also a submodule name, which shadows the lazy export
    from fastmae.ops import masked_mse_loss, patchify_gather
    from fastmae.ops.unshuffle import unshuffle_with_mask_token

    monkeypatch.setattr(_native, "available", lambda: False)
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    imgs = torch.randn(1, 3, 28, 20)
    ids_shuffle, ids_restore = shuffle_ids(1, 35)
    visible = patchify_gather(imgs, ids_shuffle[:, :1], [4, 4])
    assert_bitwise_equal(visible, reference.patchify(imgs, 4).gather(1, ids_shuffle[:, :1, None].expand(-1, -1, 48)))
    x_vis, mask_token = torch.randn(1, 2, 8), torch.randn(1, 1, 8)
    tokens = unshuffle_with_mask_token(x_vis, mask_token, ids_restore)
    assert_bitwise_equal(tokens, unshuffle_reference(x_vis, mask_token, ids_restore, None))
    pred = torch.randn(1, 35, 48)
    mask = (ids_restore >= 1).float()
    loss = masked_mse_loss(pred, imgs, None, 4, mask=mask)
    expected = reference.mae_loss(imgs.double(), pred.double(), mask.double(), 4, False).float()
    torch.testing.assert_close(loss, expected, rtol=2e-6, atol=1e-6)


def test_info_reports_backends(capsys, monkeypatch):
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    assert info.main([]) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}" in text
    cpu_choice = "native" if _native.available() else "torch"
    for op in info.FUSED_OPS:
        rows = [line.split() for line in text.splitlines() if line.startswith(op)]
        assert [row[1] for row in rows] == ["cpu", "cuda"], text
        assert rows[0][-1] == cpu_choice and rows[1][-1] == "triton", text
    monkeypatch.setattr(_native, "available", lambda: False)
    assert info.main(["--json"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["native"]["available"] is False
    assert report["ops"]["patchify_gather"]["cpu"] == {"available": ["triton", "torch"], "chosen": "torch"}
