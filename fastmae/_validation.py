"""Input checks shared by the reference, the ops and the models.

Every check raises a ValueError/TypeError that names the argument and says what was
expected. All but two look only at shapes, dtypes and devices. The two that read id *values*:
:func:`check_id_values` (a host sync, so the ops call it only in debug mode, FASTMAE_DEBUG=1) and
:func:`assert_id_values` (device-side assertions, no host sync: a RuntimeError naming the argument).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as an (H, W) pair of positive ints: an int means a square."""
    if isinstance(value, int) and not isinstance(value, bool):
        result = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        result = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (H, W), got {value!r}")
    if min(result) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return result


def check_mask_ratio(mask_ratio: float) -> float:
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)):
        raise TypeError(f"mask_ratio must be a float in (0, 1), got {type(mask_ratio).__name__}")
    if not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio must be in the open interval (0, 1), got {mask_ratio}")
    return float(mask_ratio)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """The official ``len_keep = int(L * (1 - mask_ratio))``, required in [1, L-1]."""
    mask_ratio = check_mask_ratio(mask_ratio)
    keep = int(num_patches * (1 - mask_ratio))
    if not 1 <= keep <= num_patches - 1:
        # int(L(1-r)) >= 1 iff r <= 1 - 1/L; int(L(1-r)) <= L-1 iff 1 - r < 1, i.e. r > 0 (in floating point)
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps {keep} of {num_patches} patches; at least 1 must be kept and "
            f"at least 1 removed, so mask_ratio must lie in (0, ~{1 - 1 / num_patches:.6g}] for L={num_patches} "
            f"(int(L * (1 - mask_ratio)) in floating point must be in [1, L-1])"
        )
    return keep


def check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float(x: torch.Tensor, name: str) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")


def check_images(
    imgs: torch.Tensor,
    patch_size: tuple[int, int],
    *,
    name: str = "imgs",
    in_chans: int | None = None,
    img_size: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """Check an (N, C, H, W) image batch; return the patch grid (H/p, W/p)."""
    check_tensor(imgs, name)
    if imgs.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {imgs.dim()} dims {tuple(imgs.shape)}")
    check_float(imgs, name)
    _, chans, height, width = imgs.shape
    if in_chans is not None and chans != in_chans:
        raise ValueError(f"{name} must have {in_chans} channels (dim 1), got {chans}")
    if img_size is not None and (height, width) != tuple(img_size):
        raise ValueError(
            f"{name} must be {img_size[0]}x{img_size[1]} for this model, got {height}x{width}"
        )
    ph, pw = patch_size
    return _patch_grid(name, (("height", height, ph), ("width", width, pw)))  # type: ignore[return-value]


def _patch_grid(name: str, dims: Sequence[tuple[str, int, int]]) -> tuple[int, ...]:
    """Patches per dimension for (dimension name, size, patch extent) triples; the error suggests a crop."""
    for dim_name, size, p in dims:
        if size % p != 0 or size == 0:
            nearest = max(p, size // p * p)
            raise ValueError(
                f"{name} {dim_name} {size} is not divisible by the patch size {p}; "
                f"crop or resize to {nearest} (the nearest valid size not larger)"
            )
    return tuple(size // p for _, size, p in dims)


def patch_shape(patch_size: int | Sequence[int], rank: int, name: str = "patch_size") -> tuple[int, ...]:
    """Patch extent for a rank-4 image batch, (ph, pw), or a rank-5 video batch, (pt, ph, pw).

    Images take an int (square) or an (ph, pw) pair; videos need a (pt, ph, pw) tubelet.
    """
    if rank == 4:
        return pair(patch_size, name)
    if isinstance(patch_size, Sequence) and len(patch_size) == 3 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in patch_size
    ):
        if min(patch_size) <= 0:
            raise ValueError(f"{name} must be positive, got {patch_size!r}")
        return tuple(int(v) for v in patch_size)
    raise TypeError(f"{name} for a video batch (N, C, T, H, W) must be a tubelet (pt, ph, pw), got {patch_size!r}")


def check_videos(videos: torch.Tensor, tubelet: tuple[int, int, int], *, name: str = "imgs") -> tuple[int, int, int]:
    """Check an (N, C, T, H, W) video batch; return the tubelet grid (T/pt, H/ph, W/pw)."""
    check_tensor(videos, name)
    if videos.dim() != 5:
        raise ValueError(f"{name} must have shape (N, C, T, H, W), got {videos.dim()} dims {tuple(videos.shape)}")
    check_float(videos, name)
    _, _, frames, height, width = videos.shape
    pt, ph, pw = tubelet
    return _patch_grid(name, (("frames", frames, pt), ("height", height, ph), ("width", width, pw)))  # type: ignore[return-value]


def check_patch_batch(
    imgs: torch.Tensor, patch_size: int | Sequence[int], name: str = "imgs"
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """An image (N, C, H, W) or video (N, C, T, H, W) batch with its patch size -> (patch extent, patch grid)."""
    check_tensor(imgs, name)
    if imgs.dim() not in (4, 5):
        raise ValueError(
            f"{name} must be images (N, C, H, W) or videos (N, C, T, H, W), got {imgs.dim()} dims "
            f"{tuple(imgs.shape)}"
        )
    patch = patch_shape(patch_size, imgs.dim())
    grid = check_images(imgs, patch, name=name) if imgs.dim() == 4 else check_videos(imgs, patch, name=name)
    return patch, grid


def check_ids(ids: torch.Tensor, batch: int, num_patches: int, device: torch.device, name: str = "ids_keep") -> int:
    """Check (N, K) int64 patch indices on ``device`` with 1 <= K <= L; return K. Values are not read."""
    check_tensor(ids, name)
    if ids.dtype != torch.int64:
        raise TypeError(f"{name} must be int64 (torch.long), got {ids.dtype}")
    if ids.dim() != 2 or ids.shape[0] != batch:
        raise ValueError(f"{name} must have shape (N, K) with N = {batch}, got {tuple(ids.shape)}")
    if not 1 <= ids.shape[1] <= num_patches:
        raise ValueError(f"{name} must keep between 1 and L = {num_patches} patches, got K = {ids.shape[1]}")
    if not same_device(ids.device, device):
        raise ValueError(f"{name} must be on {device} like the images, got {ids.device}")
    return int(ids.shape[1])


def check_id_values(ids: torch.Tensor, num_patches: int, name: str) -> None:
    """Patch indices (N, K): every id in [0, L) and distinct within its row, so an (N, L) ids_restore holds
    permutations of [0, L). Reads the values (a host sync): for debug mode only."""
    if ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= num_patches:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name} holds patch index {bad}, outside the valid range [0, {num_patches}) "
            f"({name} values must lie in [0, L), L = {num_patches} patches)"
        )
    sorted_ids = ids.sort(dim=1).values
    if (sorted_ids[:, 1:] == sorted_ids[:, :-1]).any():
        raise ValueError(f"{name} repeats a patch index within a row; {_id_rule(ids, num_patches)}")


def _id_rule(ids: torch.Tensor, num_patches: int) -> str:
    whole = ids.shape[1] == num_patches
    return "rows must be permutations of [0, L)" if whole else "each row must hold distinct indices"


def assert_id_values(ids: torch.Tensor, num_patches: int, name: str) -> None:
    """The rule of :func:`check_id_values` as device-side assertions: no host sync, and it traces into a
    ``torch.compile(fullgraph=True)`` graph. ``torch._assert_async`` raises a RuntimeError naming ``name`` at
    once on CPU tensors; on CUDA a failed assertion stops the stream before the op's kernel runs (a device-side
    assert, printing the message), so a bad id is never read. O(N*L): compares, and a scatter-add of ones
    into an (N, L) int32 count (deterministic: integer adds)."""
    in_range = ((ids >= 0) & (ids < num_patches)).all()
    torch._assert_async(in_range, f"{name} holds a patch index outside [0, L) = [0, {num_patches})")
    counts = torch.zeros((ids.shape[0], num_patches), dtype=torch.int32, device=ids.device)
    ones = torch.ones((), dtype=torch.int32, device=ids.device).expand(ids.shape)
    counts.scatter_add_(1, ids.clamp(0, num_patches - 1).long(), ones)  # clamped: the range is asserted above
    torch._assert_async((counts <= 1).all(), f"{name} repeats a patch index within a row; {_id_rule(ids, num_patches)}")


def same_device(a: torch.device, b: torch.device) -> bool:
    """Device equality where 'cuda' (no index) matches any 'cuda:i'."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_noise(noise: torch.Tensor, batch: int, num_patches: int, device: torch.device) -> None:
    check_tensor(noise, "noise")
    if tuple(noise.shape) != (batch, num_patches):
        raise ValueError(f"noise must have shape (N, L) = ({batch}, {num_patches}), got {tuple(noise.shape)}")
    if not same_device(noise.device, device):
        raise ValueError(f"noise must be on {device} like the images, got {noise.device}")
    if not noise.is_floating_point():
        raise TypeError(f"noise must be a floating-point tensor, got {noise.dtype}")
