"""masked_mse_loss against the reference MAE loss: both backends, forward and backward, all the call forms."""

from __future__ import annotations

import math

import pytest
import torch
from op_testing import assert_dtype_rule

from fastmae import reference
from fastmae.ops.loss import masked_mse_loss

EPS = 1e-6  # the spec's norm_pix epsilon, also the op's default


@pytest.fixture(params=["triton", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Kernel path under the interpreter, or the plain PyTorch path; outputs poisoned with NaN either way."""
    monkeypatch.setenv("FASTMAE_BACKEND", request.param)
    monkeypatch.setenv("FASTMAE_DEBUG", "1")
    return request.param


def _masking(batch: int, length: int, keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ids_shuffle, ids_restore, float mask (1 = removed) keeping exactly `keep` patches."""
    ids_shuffle = torch.argsort(torch.rand(batch, length), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    return ids_shuffle, ids_restore, (ids_restore >= keep).to(torch.float32)


def _rows(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x[b, ids[b, r]] for (B, L, D) x and (B, R) ids."""
    return x.gather(1, ids[:, :, None].expand(-1, -1, x.shape[-1]))


def _atol(reference_value: torch.Tensor, dtype: torch.dtype) -> float:
    """A few ulps of the output dtype at the value's magnitude."""
    return 2 * torch.finfo(dtype).eps * max(1.0, reference_value.abs().max().item())


def _grad_atol(grad_reference: torch.Tensor, dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps * grad_reference.abs().max().item()


def _normalised(target: torch.Tensor) -> torch.Tensor:
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)  # unbiased
    return (target - mean) / (var + EPS) ** 0.5


def _weighted_loss(pred, target, weights, norm_pix):
    """Independent formula: sum_{b,l} weights * mean_d (pred - target)^2 / sum weights."""
    target = _normalised(target) if norm_pix else target
    mse = ((pred - target) ** 2).mean(dim=-1)
    return (mse * weights).sum() / weights.sum()


# (batch, chans, grid (gh, gw), p, keep, pred form, norm_pix, dtype, grad scale); keep None = L // 4
IMAGE_CASES = [
    (2, 3, (3, 2), 4, None, "removed", True, torch.float32, 1.0),
    (1, 1, (7, 5), 2, 1, "removed", False, torch.bfloat16, 0.37),
    (2, 3, (2, 3), 4, "L-1", "removed", True, torch.float16, 1.0),
    (2, 3, (2, 2), 14, 1, "mask", True, torch.float32, 2.5),
    (1, 3, (2, 1), 16, 1, "removed", True, torch.bfloat16, 1.0),
    (2, 1, (3, 3), 4, 4, "num_keep", False, torch.float16, 1.0),
    (3, 3, (3, 3), 2, 3, "bool_mask", False, torch.bfloat16, 1.0),
    (2, 3, (1, 2), 16, 1, "mask", False, torch.float32, 1.0),
]


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: f"B{c[0]}C{c[1]}g{c[2][0]}x{c[2][1]}p{c[3]}-{c[5]}")
def test_images_match_reference(backend: str, case: tuple) -> None:
    batch, chans, (gh, gw), p, keep, form, norm_pix, dtype, scale = case
    length = gh * gw
    keep = length // 4 or 1 if keep is None else (length - 1 if keep == "L-1" else keep)
    dim = p * p * chans
    imgs = torch.randn(batch, chans, gh * p, gw * p).to(dtype)
    ids_shuffle, ids_restore, mask = _masking(batch, length, keep)
    pred_full = torch.randn(batch, length, dim).to(dtype)

    # the oracle: reference.mae_loss on the full pred, in the dtype under test and in float64
    grads = {}
    losses = {}
    for name, cast in (("same", dtype), ("exact", torch.float64)):
        leaf = pred_full.to(cast).clone().requires_grad_()
        loss = reference.mae_loss(imgs.to(cast), leaf, mask.to(cast) if cast == torch.float64 else mask, p, norm_pix)
        (loss * scale).backward()
        losses[name], grads[name] = loss.detach(), leaf.grad

    if form == "removed":
        removed = ids_shuffle[:, keep:]
        pred = _rows(pred_full, removed).requires_grad_()
        loss = masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=norm_pix)
        grads = {k: _rows(v, removed) for k, v in grads.items()}
    else:
        pred = pred_full.clone().requires_grad_()
        if form == "num_keep":
            loss = masked_mse_loss(pred, imgs, ids_restore, (p, p), norm_pix=norm_pix, num_keep=keep)
        else:
            given = mask.bool() if form == "bool_mask" else mask
            loss = masked_mse_loss(pred, imgs, None, p, norm_pix=norm_pix, mask=given)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    (loss * scale).backward()
    assert_dtype_rule(loss, losses["same"], losses["exact"], atol=_atol(losses["exact"], torch.float32), name="loss")
    assert pred.grad.dtype == dtype and pred.grad.shape == pred.shape
    assert_dtype_rule(pred.grad, grads["same"], grads["exact"], atol=_grad_atol(grads["exact"], dtype), name="grad")


def test_sample_weight(backend: str) -> None:
    batch, p, gh, gw, keep = 3, 4, 3, 3, 3
    length, dim = gh * gw, p * p * 3
    imgs = torch.randn(batch, 3, gh * p, gw * p)
    ids_shuffle, ids_restore, mask = _masking(batch, length, keep)
    pred = torch.randn(batch, length - keep, dim, requires_grad=True)
    plain = masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=True)
    ones = masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=True, sample_weight=torch.ones(batch))
    assert torch.equal(plain, ones), "w = 1 must give exactly the unweighted loss"

    weight = torch.rand(batch) + 0.1
    loss = masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=True, sample_weight=weight)
    loss.backward()
    exact_pred = pred.detach().double().requires_grad_()
    target = _rows(reference.patchify(imgs.double(), p), ids_shuffle[:, keep:])
    weights = weight.double()[:, None].expand(-1, length - keep)
    exact = _weighted_loss(exact_pred, target, weights, norm_pix=True)
    exact.backward()
    torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred.grad.double(), exact_pred.grad, rtol=1e-4, atol=1e-7)

    # with a full pred and a soft mask, both weightings combine
    full = torch.randn(batch, length, dim)
    soft = torch.rand(batch, length) * mask
    got = masked_mse_loss(full, imgs, None, p, mask=soft, sample_weight=weight)
    want = _weighted_loss(full.double(), reference.patchify(imgs.double(), p), soft.double() * weight.double()[:, None],
                          norm_pix=False)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("form", ["removed", "mask"])
def test_explicit_target_and_its_gradient(backend: str, norm_pix: bool, form: str) -> None:
    batch, length, dim, keep = 2, 7, 10, 2
    ids_shuffle, ids_restore, mask = _masking(batch, length, keep)
    target = torch.randn(batch, length, dim, requires_grad=True)
    pred_full = torch.randn(batch, length, dim)
    if form == "removed":
        pred = _rows(pred_full, ids_shuffle[:, keep:]).requires_grad_()
        loss = masked_mse_loss(pred, None, ids_restore, None, target=target, norm_pix=norm_pix)
    else:
        pred = pred_full.clone().requires_grad_()
        loss = masked_mse_loss(pred, None, None, None, target=target, mask=mask, norm_pix=norm_pix)
    (loss * 1.7).backward()

    exact_pred = pred_full.double().requires_grad_()
    exact_target = target.detach().double().requires_grad_()
    exact = _weighted_loss(exact_pred, exact_target, mask.double(), norm_pix)
    (exact * 1.7).backward()
    torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=1e-6)
    want_pred_grad = _rows(exact_pred.grad, ids_shuffle[:, keep:]) if form == "removed" else exact_pred.grad
    torch.testing.assert_close(pred.grad.double(), want_pred_grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(target.grad.double(), exact_target.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_image_gradient(backend: str, norm_pix: bool) -> None:
    batch, p, gh, gw, keep = 2, 4, 2, 3, 2
    imgs = torch.randn(batch, 3, gh * p, gw * p, requires_grad=True)
    ids_shuffle, ids_restore, mask = _masking(batch, gh * gw, keep)
    pred_full = torch.randn(batch, gh * gw, p * p * 3)
    pred = _rows(pred_full, ids_shuffle[:, keep:])
    masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=norm_pix).backward()
    exact_imgs = imgs.detach().double().requires_grad_()
    reference.mae_loss(exact_imgs, pred_full.double(), mask.double(), p, norm_pix).backward()
    torch.testing.assert_close(imgs.grad.double(), exact_imgs.grad, rtol=1e-4, atol=1e-7)


def _video_target(video: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """Independent tubelet patchify by explicit loops: tubelets (T, H, W) row-major, elements (t, i, j, c)."""
    batch, chans, frames, height, width = video.shape
    pt, ph, pw = patch
    rows = []
    for lt in range(frames // pt):
        for lh in range(height // ph):
            for lw in range(width // pw):
                block = video[:, :, lt * pt:(lt + 1) * pt, lh * ph:(lh + 1) * ph, lw * pw:(lw + 1) * pw]
                rows.append(block.permute(0, 2, 3, 4, 1).reshape(batch, pt * ph * pw * chans))
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_video_tubelets(backend: str, norm_pix: bool) -> None:
    patch = (2, 3, 2)
    batch, chans, grid = 2, 3, (2, 2, 3)
    video = torch.randn(batch, chans, *(g * q for g, q in zip(grid, patch)), requires_grad=True)
    length, dim, keep = math.prod(grid), math.prod(patch) * chans, 5
    ids_shuffle, ids_restore, mask = _masking(batch, length, keep)
    pred_full = torch.randn(batch, length, dim)
    pred = _rows(pred_full, ids_shuffle[:, keep:]).requires_grad_()
    loss = masked_mse_loss(pred, video, ids_restore, patch, norm_pix=norm_pix)
    loss.backward()

    exact_video = video.detach().double().requires_grad_()
    exact_pred = pred_full.double().requires_grad_()
    exact = _weighted_loss(exact_pred, _video_target(exact_video, patch), mask.double(), norm_pix)
    exact.backward()
    torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred.grad.double(), _rows(exact_pred.grad, ids_shuffle[:, keep:]), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(video.grad.double(), exact_video.grad, rtol=1e-4, atol=1e-7)


def test_non_contiguous_inputs(backend: str) -> None:
    batch, p, gh, gw, keep = 2, 4, 3, 2, 2
    length, dim = gh * gw, p * p * 3
    imgs_storage = torch.randn(batch, 3, gw * p, gh * p)
    imgs = imgs_storage.transpose(2, 3)  # (B, C, H, W) with swapped strides
    _, ids_restore, mask = _masking(batch, length, keep)
    pred_storage = torch.randn(batch, dim, length - keep)
    pred = pred_storage.transpose(1, 2).requires_grad_()  # stride 1 along rows, not along D
    assert not pred.is_contiguous() and not imgs.is_contiguous()
    loss = masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=True)
    loss.backward()
    pred_c = pred.detach().contiguous().requires_grad_()
    loss_c = masked_mse_loss(pred_c, imgs.contiguous(), ids_restore, p, norm_pix=True)
    loss_c.backward()
    torch.testing.assert_close(loss, loss_c, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pred.grad, pred_c.grad, rtol=1e-6, atol=1e-9)

    full = torch.randn(batch, length, 2 * dim)[:, :, ::2]  # strided along D
    got = masked_mse_loss(full, imgs, None, p, mask=mask)
    want = reference.mae_loss(imgs.double(), full.double(), mask.double(), p, False)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_mixed_dtypes_int32_ids_and_expanded_grad(backend: str) -> None:
    """bf16 pred on fp32 images (autocast), int32 ids, and a gradient that reaches the op through .sum()."""
    batch, p, gh, gw, keep = 2, 4, 2, 3, 2
    imgs = torch.randn(batch, 3, gh * p, gw * p)
    ids_shuffle, ids_restore, mask = _masking(batch, gh * gw, keep)
    pred_full = torch.randn(batch, gh * gw, p * p * 3).to(torch.bfloat16)
    pred = _rows(pred_full, ids_shuffle[:, keep:]).requires_grad_()
    loss = masked_mse_loss(pred, imgs, ids_restore.to(torch.int32), p, norm_pix=True)
    torch.stack([loss, loss]).sum().backward()  # the loss's gradient is 2, built from an expanded tensor
    exact_pred = pred_full.double().requires_grad_()
    exact = reference.mae_loss(imgs.double(), exact_pred, mask.double(), p, True)
    (2 * exact).backward()
    torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=1e-6)
    want = _rows(exact_pred.grad, ids_shuffle[:, keep:])
    torch.testing.assert_close(pred.grad.double(), want, rtol=1e-2, atol=_grad_atol(want, torch.bfloat16))


@pytest.mark.parametrize("bad", ["out_of_range", "repeated"])
def test_debug_mode_rejects_bad_ids(backend: str, bad: str) -> None:
    _, ids_restore, _ = _masking(2, 6, 2)
    ids_restore = ids_restore.clone()
    ids_restore[1, 0] = 6 if bad == "out_of_range" else ids_restore[1, 1]
    pred = torch.randn(2, 4, 48)
    with pytest.raises(ValueError, match="ids_restore"):
        masked_mse_loss(pred, torch.randn(2, 3, 8, 12), ids_restore, 4)


def _opcheck_samples() -> list[tuple]:
    batch, p, gh, gw, keep = 2, 2, 2, 3, 2
    length, dim = gh * gw, p * p * 3
    _, ids_restore, mask = _masking(batch, length, keep)
    imgs = torch.randn(batch, 3, gh * p, gw * p)
    return [
        (torch.randn(batch, length - keep, dim, requires_grad=True), imgs, ids_restore, None, None, None, [p, p],
         True, EPS),
        (torch.randn(batch, length, dim, requires_grad=True), imgs, None, mask, None, torch.rand(batch), [p, p],
         False, EPS),
        (torch.randn(batch, length, 5, requires_grad=True), None, None, mask.bool(), torch.randn(batch, length, 5,
         requires_grad=True), None, [], True, 1e-5),
    ]


@pytest.mark.parametrize("path", ["torch", "triton"])
@pytest.mark.parametrize("index", range(3))
def test_opcheck(index: int, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both branches of the op bodies (FASTMAE_BACKEND=triton runs the interpreted kernels on real tensors)."""
    monkeypatch.setenv("FASTMAE_BACKEND", path)
    args = _opcheck_samples()[index]
    torch.library.opcheck(torch.ops.fastmae.masked_mse_loss.default, args)
    backward_args = (torch.tensor(1.3), *(a.detach() if isinstance(a, torch.Tensor) else a for a in args), True)
    torch.library.opcheck(torch.ops.fastmae.masked_mse_loss_backward.default, backward_args)


def test_compiles_fullgraph_like_eager(backend: str) -> None:
    """aot_eager fullgraph on both paths. Under the interpreter the compiled graph holds the op's torch branch
    (fake tensors cannot enter an interpreted kernel) while eager runs the kernels: bitwise equal on the torch
    path, equal to fp32 rounding (another summation order) on the Triton path."""
    batch, p, gh, gw, keep = 2, 2, 2, 3, 2
    imgs = torch.randn(batch, 3, gh * p, gw * p)
    _, ids_restore, _ = _masking(batch, gh * gw, keep)
    pred = torch.randn(batch, gh * gw - keep, p * p * 3)

    def step(pred_leaf: torch.Tensor) -> torch.Tensor:
        return masked_mse_loss(pred_leaf * 2.0, imgs, ids_restore, p, norm_pix=True) * 3.0

    eager_leaf = pred.clone().requires_grad_()
    eager = step(eager_leaf)
    eager.backward()
    compiled_leaf = pred.clone().requires_grad_()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(compiled_leaf)
    compiled.backward()
    tolerance = {"rtol": 0, "atol": 0} if backend == "torch" else {}  # {}: the float32 defaults
    torch.testing.assert_close(compiled, eager, **tolerance)
    torch.testing.assert_close(compiled_leaf.grad, eager_leaf.grad, **tolerance)


def _bad_calls() -> list[tuple[str, dict, type, str]]:
    """(id, overrides of a valid removed-only call, error type, message fragment)."""
    return [
        ("pred_rank", {"pred": torch.randn(8, 48)}, ValueError, "pred must have shape"),
        ("pred_int", {"pred": torch.zeros(2, 4, 48, dtype=torch.int32)}, TypeError, "pred must be float"),
        ("pred_dim", {"pred": torch.randn(2, 4, 47)}, ValueError, "pred last dim"),
        ("pred_rows", {"pred": torch.randn(2, 7, 48)}, ValueError, "rows"),
        ("pred_batch", {"pred": torch.randn(3, 4, 48)}, ValueError, "batch"),
        ("imgs_rank", {"imgs": torch.randn(3, 8, 12)}, ValueError, "imgs must be images"),
        ("imgs_indivisible", {"imgs": torch.randn(2, 3, 9, 12)}, ValueError, "not divisible by the patch size"),
        ("video_int_patch", {"imgs": torch.randn(2, 3, 2, 8, 12)}, TypeError, r"tubelet \(pt, ph, pw\)"),
        ("patch_type", {"patch_size": "4"}, TypeError, "patch_size"),
        ("ids_dtype", {"ids_restore": torch.zeros(2, 6)}, TypeError, "ids_restore must be int64"),
        ("ids_shape", {"ids_restore": torch.zeros(2, 5, dtype=torch.long)}, ValueError, "ids_restore must have"),
        ("ids_missing", {"ids_restore": None}, ValueError, "needs ids_restore"),
        ("mask_with_removed", {"mask": torch.ones(2, 6)}, ValueError, "mask applies only"),
        ("both_sources", {"target": torch.randn(2, 6, 48)}, ValueError, "exactly one of imgs"),
        ("weight_shape", {"sample_weight": torch.ones(3)}, ValueError, "sample_weight must have shape"),
        ("num_keep_removed", {"num_keep": 2}, ValueError, "num_keep applies only"),
        ("eps", {"eps": -1.0}, ValueError, "eps"),
        ("full_no_mask", {"pred": torch.randn(2, 6, 48)}, ValueError, "num_keep"),
        ("full_mask_shape", {"pred": torch.randn(2, 6, 48), "ids_restore": None, "mask": torch.ones(2, 5)},
         ValueError, "mask must have shape"),
        ("target_shape", {"imgs": None, "target": torch.randn(2, 6, 40)}, ValueError, "target must have shape"),
        ("norm_pix_d1", {"pred": torch.randn(2, 4, 1), "imgs": None, "target": torch.randn(2, 6, 1),
                         "norm_pix": True}, ValueError, "norm_pix"),
        ("weight_grad", {"sample_weight": torch.ones(2, requires_grad=True)}, ValueError, "must not require grad"),
    ]


@pytest.mark.parametrize("bad", _bad_calls(), ids=lambda b: b[0])
def test_bad_inputs_name_the_argument(bad: tuple) -> None:
    _, overrides, error, fragment = bad
    _, ids_restore, _ = _masking(2, 6, 2)
    call = {"pred": torch.randn(2, 4, 48), "imgs": torch.randn(2, 3, 8, 12), "ids_restore": ids_restore,
            "patch_size": 4}
    call.update(overrides)
    positional = [call.pop(k) for k in ("pred", "imgs", "ids_restore", "patch_size")]
    with pytest.raises(error, match=fragment):
        masked_mse_loss(*positional, **call)


def test_compiles_on_meta_tensors() -> None:
    """Shape-only tracing (meta inputs) must not create real tensors inside the op body."""
    with torch.device("meta"):
        imgs = torch.randn(2, 3, 16, 16)
        pred = torch.randn(2, 12, 48, requires_grad=True)
        ids_restore = torch.argsort(torch.rand(2, 16), dim=1)
    compiled = torch.compile(lambda p, i, r: masked_mse_loss(p, i, r, 4, norm_pix=True), fullgraph=True,
                             backend="aot_eager")
    loss = compiled(pred, imgs, ids_restore)
    loss.backward()
    assert loss.shape == () and loss.device.type == "meta" and pred.grad.shape == pred.shape
