"""masked_mse_loss against the reference MAE loss: both backends, forward and backward, all the call forms, on
``device`` (tests/conftest.py)."""

from __future__ import annotations

import math

import pytest
import torch
from op_testing import BACKENDS, assert_dtype_rule

from fastmae import reference
from fastmae.ops.loss import masked_mse_loss

EPS = 1e-6  # the spec's norm_pix epsilon, also the op's default


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, use_backend) -> str:  # type: ignore[no-untyped-def]
    """The kernel path (interpreted on CPU, compiled on CUDA) or the plain PyTorch path; outputs poisoned
    with NaN either way."""
    return use_backend(request.param, debug=True)


def _masking(
    batch: int, length: int, keep: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ids_shuffle, ids_restore, float mask (1 = removed) keeping exactly `keep` patches."""
    ids_shuffle = torch.argsort(torch.rand(batch, length, device=device), dim=1)
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
    (2, 3, (3, 3), 4, 2, "ids_removed", True, torch.bfloat16, 1.0),
]


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: f"B{c[0]}C{c[1]}g{c[2][0]}x{c[2][1]}p{c[3]}-{c[5]}")
def test_images_match_reference(backend: str, case: tuple, device: torch.device) -> None:
    batch, chans, (gh, gw), p, keep, form, norm_pix, dtype, scale = case
    length = gh * gw
    keep = length // 4 or 1 if keep is None else (length - 1 if keep == "L-1" else keep)
    dim = p * p * chans
    imgs = torch.randn(batch, chans, gh * p, gw * p, device=device).to(dtype)
    ids_shuffle, ids_restore, mask = _masking(batch, length, keep, device)
    pred_full = torch.randn(batch, length, dim, device=device).to(dtype)

    # the oracle: reference.mae_loss on the full pred, in the dtype under test and in float64
    grads = {}
    losses = {}
    for name, cast in (("same", dtype), ("exact", torch.float64)):
        leaf = pred_full.to(cast).clone().requires_grad_()
        loss = reference.mae_loss(imgs.to(cast), leaf, mask.to(cast) if cast == torch.float64 else mask, p, norm_pix)
        (loss * scale).backward()
        losses[name], grads[name] = loss.detach(), leaf.grad

    if form in ("removed", "ids_removed"):
        removed = ids_shuffle[:, keep:]  # a strided view, as the model passes it
        pred = _rows(pred_full, removed).requires_grad_()
        if form == "removed":
            loss = masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=norm_pix)
        else:
            loss = masked_mse_loss(pred, imgs, None, p, norm_pix=norm_pix, ids_removed=removed)
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


@pytest.mark.parametrize("level", [100.0, -3.0])
def test_norm_pix_on_bright_flat_patches(backend: str, level: float, device: torch.device) -> None:
    """Patches far from zero with a small spread (a bright sky): norm_pix's row statistics, merged over the
    kernels' column tiles (p14: five tiles of 128), keep the dtype rule for the loss and its gradient."""
    batch, p, keep = 2, 14, 1
    imgs = level + 0.01 * torch.randn(batch, 3, 2 * p, 2 * p, device=device)
    ids_shuffle, ids_restore, mask = _masking(batch, 4, keep, device)
    pred_full = torch.randn(batch, 4, p * p * 3, device=device)
    losses, grads = {}, {}
    for name, cast in (("same", torch.float32), ("exact", torch.float64)):
        leaf = pred_full.to(cast).clone().requires_grad_()
        losses[name] = reference.mae_loss(imgs.to(cast), leaf, mask.to(cast), p, True)
        losses[name].backward()
        grads[name] = _rows(leaf.grad, ids_shuffle[:, keep:])
    pred = _rows(pred_full, ids_shuffle[:, keep:]).requires_grad_()
    loss = masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=True)
    loss.backward()
    assert_dtype_rule(loss, losses["same"], losses["exact"], atol=_atol(losses["exact"], torch.float32), name="loss")
    assert_dtype_rule(pred.grad, grads["same"], grads["exact"], atol=_grad_atol(grads["exact"], torch.float32),
                      name="grad")  # fmt: skip


def test_sample_weight(backend: str, device: torch.device) -> None:
    batch, p, gh, gw, keep = 3, 4, 3, 3, 3
    length, dim = gh * gw, p * p * 3
    imgs = torch.randn(batch, 3, gh * p, gw * p, device=device)
    ids_shuffle, ids_restore, mask = _masking(batch, length, keep, device)
    pred = torch.randn(batch, length - keep, dim, device=device, requires_grad=True)
    plain = masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=True)
    ones = masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=True, sample_weight=torch.ones(batch, device=device))
    assert torch.equal(plain, ones), "w = 1 must give exactly the unweighted loss"

    weight = torch.rand(batch, device=device) + 0.1
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
    full = torch.randn(batch, length, dim, device=device)
    soft = torch.rand(batch, length, device=device) * mask
    got = masked_mse_loss(full, imgs, None, p, mask=soft, sample_weight=weight)
    want = _weighted_loss(full.double(), reference.patchify(imgs.double(), p), soft.double() * weight.double()[:, None],
                          norm_pix=False)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("form", ["removed", "mask"])
def test_explicit_target_and_its_gradient(backend: str, norm_pix: bool, form: str, device: torch.device) -> None:
    batch, length, dim, keep = 2, 7, 10, 2
    ids_shuffle, ids_restore, mask = _masking(batch, length, keep, device)
    target = torch.randn(batch, length, dim, device=device, requires_grad=True)
    pred_full = torch.randn(batch, length, dim, device=device)
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
def test_image_gradient(backend: str, norm_pix: bool, device: torch.device) -> None:
    batch, p, gh, gw, keep = 2, 4, 2, 3, 2
    imgs = torch.randn(batch, 3, gh * p, gw * p, device=device, requires_grad=True)
    ids_shuffle, ids_restore, mask = _masking(batch, gh * gw, keep, device)
    pred_full = torch.randn(batch, gh * gw, p * p * 3, device=device)
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
def test_video_tubelets(backend: str, norm_pix: bool, device: torch.device) -> None:
    patch = (2, 3, 2)
    batch, chans, grid = 2, 3, (2, 2, 3)
    video = torch.randn(batch, chans, *(g * q for g, q in zip(grid, patch)), device=device, requires_grad=True)
    length, dim, keep = math.prod(grid), math.prod(patch) * chans, 5
    ids_shuffle, ids_restore, mask = _masking(batch, length, keep, device)
    pred_full = torch.randn(batch, length, dim, device=device)
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


def test_non_contiguous_inputs(backend: str, device: torch.device) -> None:
    batch, p, gh, gw, keep = 2, 4, 3, 2, 2
    length, dim = gh * gw, p * p * 3
    imgs_storage = torch.randn(batch, 3, gw * p, gh * p, device=device)
    imgs = imgs_storage.transpose(2, 3)  # (B, C, H, W) with swapped strides
    _, ids_restore, mask = _masking(batch, length, keep, device)
    pred_storage = torch.randn(batch, dim, length - keep, device=device)
    pred = pred_storage.transpose(1, 2).requires_grad_()  # stride 1 along rows, not along D
    assert not pred.is_contiguous() and not imgs.is_contiguous()
    loss = masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=True)
    loss.backward()
    pred_c = pred.detach().contiguous().requires_grad_()
    loss_c = masked_mse_loss(pred_c, imgs.contiguous(), ids_restore, p, norm_pix=True)
    loss_c.backward()
    torch.testing.assert_close(loss, loss_c, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pred.grad, pred_c.grad, rtol=1e-6, atol=1e-9)

    full = torch.randn(batch, length, 2 * dim, device=device)[:, :, ::2]  # strided along D
    got = masked_mse_loss(full, imgs, None, p, mask=mask)
    want = reference.mae_loss(imgs.double(), full.double(), mask.double(), p, False)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_mixed_dtypes_int32_ids_and_expanded_grad(backend: str, device: torch.device) -> None:
    """bf16 pred on fp32 images (autocast), int32 ids, and a gradient that reaches the op through .sum()."""
    batch, p, gh, gw, keep = 2, 4, 2, 3, 2
    imgs = torch.randn(batch, 3, gh * p, gw * p, device=device)
    ids_shuffle, ids_restore, mask = _masking(batch, gh * gw, keep, device)
    pred_full = torch.randn(batch, gh * gw, p * p * 3, device=device).to(torch.bfloat16)
    pred = _rows(pred_full, ids_shuffle[:, keep:]).requires_grad_()
    loss = masked_mse_loss(pred, imgs, ids_restore.to(torch.int32), p, norm_pix=True)
    torch.stack([loss, loss]).sum().backward()  # the loss's gradient is 2, built from an expanded tensor
    exact_pred = pred_full.double().requires_grad_()
    exact = reference.mae_loss(imgs.double(), exact_pred, mask.double(), p, True)
    (2 * exact).backward()
    torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=1e-6)
    want = _rows(exact_pred.grad, ids_shuffle[:, keep:])
    torch.testing.assert_close(pred.grad.double(), want, rtol=1e-2, atol=_grad_atol(want, torch.bfloat16))


def test_removed_ids_is_the_shuffle_tail(device: torch.device) -> None:
    from fastmae.ops import removed_ids

    ids_shuffle, ids_restore, _ = _masking(3, 10, 4, device)
    assert torch.equal(removed_ids(ids_restore, 4), ids_shuffle[:, 4:])
    assert torch.equal(removed_ids(ids_restore.to(torch.int32), 0), ids_shuffle)
    with pytest.raises(ValueError, match="num_keep must be an int in"):
        removed_ids(ids_restore, 10)


@pytest.mark.parametrize("bad", ["out_of_range", "repeated"])
def test_debug_mode_rejects_bad_removed_ids(backend: str, bad: str, device: torch.device) -> None:
    ids_shuffle, _, _ = _masking(2, 6, 2, device)
    ids_removed = ids_shuffle[:, 2:].clone()
    ids_removed[1, 0] = 6 if bad == "out_of_range" else ids_removed[1, 1]
    pred = torch.randn(2, 4, 48, device=device)
    with pytest.raises(ValueError, match="ids_removed"):
        masked_mse_loss(pred, torch.randn(2, 3, 8, 12, device=device), None, 4, ids_removed=ids_removed)


@pytest.mark.parametrize("bad", ["out_of_range", "repeated"])
def test_debug_mode_rejects_bad_ids(backend: str, bad: str, device: torch.device) -> None:
    _, ids_restore, _ = _masking(2, 6, 2, device)
    ids_restore = ids_restore.clone()
    ids_restore[1, 0] = 6 if bad == "out_of_range" else ids_restore[1, 1]
    pred = torch.randn(2, 4, 48, device=device)
    with pytest.raises(ValueError, match="ids_restore"):
        masked_mse_loss(pred, torch.randn(2, 3, 8, 12, device=device), ids_restore, 4)


def _opcheck_samples(device: torch.device) -> list[tuple]:
    batch, p, gh, gw, keep = 2, 2, 2, 3, 2
    length, dim = gh * gw, p * p * 3
    ids_shuffle, _, mask = _masking(batch, length, keep, device)
    imgs = torch.randn(batch, 3, gh * p, gw * p, device=device)
    with torch.device(device):
        return [
            (torch.randn(batch, length - keep, dim, requires_grad=True), imgs, ids_shuffle[:, keep:], None, None,
             None, [p, p], True, EPS),
            (torch.randn(batch, length, dim, requires_grad=True), imgs, None, mask, None, torch.rand(batch), [p, p],
             False, EPS),
            (torch.randn(batch, length, 5, requires_grad=True), None, None, mask.bool(), torch.randn(batch, length, 5,
             requires_grad=True), None, [], True, 1e-5),
        ]


@pytest.mark.parametrize("path", ["torch", "triton"])
@pytest.mark.parametrize("index", range(3))
def test_opcheck(index: int, path: str, use_backend, device: torch.device) -> None:  # type: ignore[no-untyped-def]
    """Both branches of the op bodies (FASTMAE_BACKEND=triton runs the kernels on real tensors)."""
    use_backend(path)
    args = _opcheck_samples(device)[index]
    torch.library.opcheck(torch.ops.fastmae.masked_mse_loss.default, args)
    detached = (a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    backward_args = (torch.tensor(1.3, device=device), *detached, True)
    torch.library.opcheck(torch.ops.fastmae.masked_mse_loss_backward.default, backward_args)


def test_compiles_fullgraph_like_eager(backend: str, device: torch.device) -> None:
    """aot_eager fullgraph on every path. Under the interpreter the compiled graph holds the op's torch branch
    (fake tensors cannot enter an interpreted kernel) while eager runs the kernels: bitwise equal on the torch
    and native paths (the same kernels both ways), equal to fp32 rounding (another summation order) on the
    Triton path."""
    batch, p, gh, gw, keep = 2, 2, 2, 3, 2
    imgs = torch.randn(batch, 3, gh * p, gw * p, device=device)
    _, ids_restore, _ = _masking(batch, gh * gw, keep, device)
    pred = torch.randn(batch, gh * gw - keep, p * p * 3, device=device)

    def step(pred_leaf: torch.Tensor) -> torch.Tensor:
        return masked_mse_loss(pred_leaf * 2.0, imgs, ids_restore, p, norm_pix=True) * 3.0

    eager_leaf = pred.clone().requires_grad_()
    eager = step(eager_leaf)
    eager.backward()
    compiled_leaf = pred.clone().requires_grad_()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(compiled_leaf)
    compiled.backward()
    tolerance = {"rtol": 0, "atol": 0} if backend != "triton" else {}  # {}: the float32 defaults
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
        ("ids_both", {"ids_removed": torch.zeros(2, 4, dtype=torch.long)}, ValueError, "exactly one of them"),
        ("ids_removed_shape", {"ids_restore": None, "ids_removed": torch.zeros(2, 6, dtype=torch.long)}, ValueError,
         r"ids_removed must have shape \(B, L-K\)"),
        ("ids_removed_dtype", {"ids_restore": None, "ids_removed": torch.zeros(2, 4)}, TypeError,
         "ids_removed must be int64"),
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



def check_last_sample_only(form: str, batch: int, chans: int, side: int, p: int, device: torch.device) -> None:
    """Only the last sample counts (sample_weight, or a mask, zero elsewhere): the loss and the gradients of pred
    and imgs (bf16) against the reference computed on that sample only; every other gradient must be zero."""
    dtype = torch.bfloat16
    length, dim = (side // p) ** 2, p * p * chans
    keep = length // 4
    imgs = torch.randn(batch, chans, side, side, device=device, dtype=dtype, requires_grad=True)
    ids_shuffle, ids_restore, mask = _masking(batch, length, keep, device)
    pred = torch.randn(batch, length - keep if form == "removed" else length, dim, device=device, dtype=dtype,
                       requires_grad=True)  # fmt: skip
    if form == "removed":
        last_only = torch.zeros(batch, device=device)
        last_only[-1] = 1.0
        loss = masked_mse_loss(pred, imgs, ids_restore, p, norm_pix=True, sample_weight=last_only)
    else:
        mask[:-1] = 0.0
        loss = masked_mse_loss(pred, imgs, None, p, norm_pix=True, mask=mask)
    grad_pred, grad_imgs = torch.autograd.grad(loss, (pred, imgs))
    assert torch.count_nonzero(grad_pred[:-1]).item() == 0, "grad pred of a zero-weight sample"
    assert torch.count_nonzero(grad_imgs[:-1]).item() == 0, "grad imgs of a zero-weight sample"

    removed = ids_shuffle[-1:, keep:]
    losses, grads = {}, {}
    for name, cast in (("same", dtype), ("exact", torch.float64)):
        if form == "removed":  # the removed rows in a full-length pred; kept rows do not count
            full = torch.zeros(1, length, dim, device=device, dtype=cast)
            full[0, removed[0]] = pred[-1:].detach().to(cast)
        else:
            full = pred[-1:].detach().to(cast)
        leaves = (full.requires_grad_(), imgs[-1:].detach().to(cast).requires_grad_())
        weights = mask[-1:].to(cast) if cast == torch.float64 else mask[-1:]  # as test_images_match_reference
        reference_loss = reference.mae_loss(leaves[1], leaves[0], weights, p, True)
        losses[name] = reference_loss.detach()
        grad_full, grad_image = torch.autograd.grad(reference_loss, leaves)
        grads[name] = (_rows(grad_full, removed) if form == "removed" else grad_full, grad_image)
    assert_dtype_rule(loss, losses["same"], losses["exact"], atol=_atol(losses["exact"], torch.float32), name="loss")
    for index, name in enumerate(("grad pred", "grad imgs")):
        exact = grads["exact"][index]
        got = (grad_pred, grad_imgs)[index][-1:]
        assert_dtype_rule(got, grads["same"][index], exact, atol=_grad_atol(exact, dtype), name=name)


@pytest.mark.parametrize("form", ["removed", "mask"])
def test_zero_weight_samples(backend: str, form: str, device: torch.device) -> None:
    check_last_sample_only(form, batch=3, chans=3, side=12, p=4, device=device)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["removed", "mask"])
def test_int64_offsets_past_2_31(form: str, use_backend, cuda_device: torch.device) -> None:  # type: ignore[no-untyped-def]
    """bf16 images and pred with more than 2^31 elements (~6 GB each; GPU only, the compiled kernels): the last
    sample, the only one that counts, is read and written past 2^31."""
    use_backend("triton")
    batch, chans, side, p = 45, 1, 8192, 16
    length = (side // p) ** 2
    rows = length - length // 4 if form == "removed" else length
    assert (batch - 1) * chans * side * side > 2**31, "the last image must start past 2^31"
    assert (batch - 1) * rows * p * p * chans > 2**31, "the last sample's pred rows must start past 2^31"
    check_last_sample_only(form, batch, chans, side, p, cuda_device)


def test_native_kernel_checks_removed_ids(use_backend) -> None:  # type: ignore[no-untyped-def]
    """The native kernel checks ids_removed's shape and values itself (called directly: the API checks first)."""
    use_backend("native")
    imgs, pred = torch.randn(2, 3, 8, 12), torch.randn(2, 4, 48)
    loss = torch.ops.fastmae_kernels.masked_mse_loss
    with pytest.raises(ValueError, match=r"ids_removed must have shape \(B, L-K\) = \(2, 4\)"):
        loss(pred, imgs, torch.zeros(2, 6, dtype=torch.long), None, None, None, [4, 4], False, EPS)
    with pytest.raises(ValueError, match="does not hold distinct patches"):
        loss(pred, imgs, torch.zeros(2, 4, dtype=torch.long), None, None, None, [4, 4], False, EPS)
    with pytest.raises(ValueError, match="outside"):
        loss(pred, imgs, torch.full((2, 4), 6), None, None, None, [4, 4], False, EPS)
