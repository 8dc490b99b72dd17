"""Input checks shared by the reference, the ops and the models.

Every check raises a ValueError/TypeError that names the argument and says what was
expected. None of them reads tensor *values* (that would be a host sync): they look
only at shapes, dtypes and devices.
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
        # K = int(L(1-r)) >= 1 needs r <= 1 - 1/L; K <= L-1 holds for every r > 0
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps {keep} of {num_patches} patches; at least 1 must be kept and at least "
            f"1 removed, so for L={num_patches} mask_ratio must be in (0, {1 - 1 / num_patches:.6g}]"
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
    for dim_name, size, p in (("height", height, ph), ("width", width, pw)):
        if size % p != 0 or size == 0:
            nearest = max(p, size // p * p)
            raise ValueError(
                f"{name} {dim_name} {size} is not divisible by the patch size {p}; "
                f"crop or resize to {nearest} (the nearest valid size not larger)"
            )
    return height // ph, width // pw


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
