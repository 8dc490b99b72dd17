"""RandAugment ("rand-m9-mstd0.5-inc1", the fine-tuning recipe) on uint8 images, in torch.

Per image, ``num_ops`` (2) operations are drawn uniformly with replacement from :data:`OPS`; each
runs with probability ``prob`` (0.5) at a magnitude drawn from N(magnitude, magnitude_std) =
N(9, 0.5) clipped to [0, 10], on a scale where 10 is the strongest. The "increasing" variants are
used: a larger magnitude always means a stronger change. Signed operations (rotate, shear,
translate, colour, contrast, brightness, sharpness) flip their sign with probability 0.5.
Geometric operations sample bilinearly and fill uncovered pixels with the dataset mean colour.
Randomness comes from the caller's NumPy generator, so the loader's per-sample seeding fixes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

MAX_LEVEL = 10.0
FILL = (124.0, 116.0, 104.0)  # round(255 * ImageNet mean)
APPLY_PROB = 0.5  # each drawn operation runs with this probability
# the strength at magnitude MAX_LEVEL (the torch ops here and the DALI suite both scale these)
ROTATE_DEGREES = 30.0
SHEAR = 0.3
TRANSLATE = 0.45  # fraction of the image side
ENHANCE = 0.9  # colour / contrast / brightness / sharpness factor 1 +- this
POSTERIZE_BITS = 4  # bits kept at magnitude 0 (none at MAX_LEVEL)
SOLARIZE_ADD = 110


def _gray(img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float -> (1, H, W): the ITU-R 601-2 luma PIL's "L" mode uses."""
    return (img[0] * 0.299 + img[1] * 0.587 + img[2] * 0.114).unsqueeze(0)


def _blend(degenerate: torch.Tensor, img: torch.Tensor, factor: float) -> torch.Tensor:
    return (degenerate + factor * (img - degenerate)).clamp(0, 255)


def _affine(img: torch.Tensor, matrix: tuple[float, float, float, float, float, float]) -> torch.Tensor:
    """Output pixel (x, y) samples the input at (a x + b y + c, d x + e y + f), pixel coordinates."""
    a, b, c, d, e, f = matrix
    _, height, width = img.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    src_x, src_y = a * xs + b * ys + c, d * xs + e * ys + f
    grid = torch.stack([(2 * src_x + 1) / width - 1, (2 * src_y + 1) / height - 1], dim=-1).unsqueeze(0)
    fill = torch.tensor(FILL).view(3, 1, 1)
    out = F.grid_sample((img - fill).unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0] + fill


def auto_contrast(img: torch.Tensor, _: float) -> torch.Tensor:
    low = img.amin(dim=(1, 2), keepdim=True)
    high = img.amax(dim=(1, 2), keepdim=True)
    scale = torch.where(high > low, 255.0 / (high - low).clamp_min(1e-6), torch.ones_like(high))
    return torch.where(high > low, (img - low) * scale, img)


def equalize(img: torch.Tensor, _: float) -> torch.Tensor:
    """PIL's per-channel histogram equalisation (same lookup table)."""
    out = []
    for channel in img.round().to(torch.int64):
        hist = torch.bincount(channel.flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = int((nonzero.sum() - nonzero[-1]) // 255)
        if step == 0:
            out.append(channel.float())
            continue
        lut = ((torch.cumsum(hist, 0) - hist + step // 2) // step).clamp(max=255)
        out.append(lut[channel].float())
    return torch.stack(out)


def invert(img: torch.Tensor, _: float) -> torch.Tensor:
    return 255.0 - img


def rotate(img: torch.Tensor, level: float) -> torch.Tensor:
    """Counter-clockwise by ``level`` degrees about the centre."""
    _, height, width = img.shape
    angle = math.radians(level)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    return _affine(img, (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy))


def shear_x(img: torch.Tensor, level: float) -> torch.Tensor:
    """PIL's affine (1, level, 0, 0, 1, 0), which maps pixel centres: x samples x + level (y + 1/2)."""
    return _affine(img, (1.0, level, level / 2, 0.0, 1.0, 0.0))


def shear_y(img: torch.Tensor, level: float) -> torch.Tensor:
    return _affine(img, (1.0, 0.0, 0.0, level, 1.0, level / 2))


def translate_x(img: torch.Tensor, level: float) -> torch.Tensor:
    return _affine(img, (1.0, 0.0, level * img.shape[2], 0.0, 1.0, 0.0))


def translate_y(img: torch.Tensor, level: float) -> torch.Tensor:
    return _affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, level * img.shape[1]))


def posterize(img: torch.Tensor, bits: float) -> torch.Tensor:
    """Keep the top ``bits`` bits of each value."""
    drop = 8 - int(bits)
    if drop <= 0:
        return img
    return (img.round().to(torch.int64) >> drop << drop).float()


def solarize(img: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(img >= threshold, 255.0 - img, img)


def solarize_add(img: torch.Tensor, amount: float) -> torch.Tensor:
    return torch.where(img < 128, (img + amount).clamp(max=255), img)


def color(img: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(_gray(img).expand_as(img), img, factor)


def contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(torch.full_like(img, float(int(_gray(img).mean() + 0.5))), img, factor)


def brightness(img: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(torch.zeros_like(img), img, factor)


def sharpness(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13), border pixels unchanged."""
    kernel = torch.ones(3, 1, 3, 3)
    kernel[:, :, 1, 1] = 5.0
    smooth = img.clone()
    if img.shape[1] > 2 and img.shape[2] > 2:
        smooth[:, 1:-1, 1:-1] = F.conv2d(img.unsqueeze(0), kernel / 13.0, groups=3)[0].round()
    return _blend(smooth, img, factor)


def _signed(rng: np.random.Generator, value: float) -> float:
    return -value if rng.uniform() > 0.5 else value


# name -> (operation, level from (magnitude in [0, 10], rng)); the "increasing" set
OPS: dict[str, tuple[Callable[[torch.Tensor, float], torch.Tensor],
                     Callable[[float, np.random.Generator], float]]] = {
    "AutoContrast": (auto_contrast, lambda m, rng: 0.0),
    "Equalize": (equalize, lambda m, rng: 0.0),
    "Invert": (invert, lambda m, rng: 0.0),
    "Rotate": (rotate, lambda m, rng: _signed(rng, ROTATE_DEGREES * m / MAX_LEVEL)),
    "PosterizeIncreasing": (posterize, lambda m, rng: POSTERIZE_BITS - int(POSTERIZE_BITS * m / MAX_LEVEL)),
    "SolarizeIncreasing": (solarize, lambda m, rng: 256 - int(256 * m / MAX_LEVEL)),
    "SolarizeAdd": (solarize_add, lambda m, rng: int(SOLARIZE_ADD * m / MAX_LEVEL)),
    "ColorIncreasing": (color, lambda m, rng: 1.0 + _signed(rng, ENHANCE * m / MAX_LEVEL)),
    "ContrastIncreasing": (contrast, lambda m, rng: 1.0 + _signed(rng, ENHANCE * m / MAX_LEVEL)),
    "BrightnessIncreasing": (brightness, lambda m, rng: 1.0 + _signed(rng, ENHANCE * m / MAX_LEVEL)),
    "SharpnessIncreasing": (sharpness, lambda m, rng: 1.0 + _signed(rng, ENHANCE * m / MAX_LEVEL)),
    "ShearX": (shear_x, lambda m, rng: _signed(rng, SHEAR * m / MAX_LEVEL)),
    "ShearY": (shear_y, lambda m, rng: _signed(rng, SHEAR * m / MAX_LEVEL)),
    "TranslateXRel": (translate_x, lambda m, rng: _signed(rng, TRANSLATE * m / MAX_LEVEL)),
    "TranslateYRel": (translate_y, lambda m, rng: _signed(rng, TRANSLATE * m / MAX_LEVEL)),
}
_NAMES = tuple(OPS)


def parse_policy(policy: str) -> tuple[int, float, float]:
    """``"rand-m9-mstd0.5-inc1"`` (the official ``--aa``) -> (num_ops 2, magnitude 9, magnitude_std 0.5)."""
    parts = policy.split("-")
    if parts[0] != "rand":
        raise ValueError(f"--aa {policy!r}: only RandAugment policies 'rand-m<M>[-n<N>][-mstd<S>][-inc1]' are "
                         f"supported")
    num_ops, magnitude, std = 2, 9.0, 0.0
    for part in parts[1:]:
        if part.startswith("mstd"):
            std = float(part[4:])
        elif part.startswith("m"):
            magnitude = float(part[1:])
        elif part.startswith("n"):
            num_ops = int(part[1:])
        elif part != "inc1":
            raise ValueError(f"--aa {policy!r}: unknown part {part!r} (only the increasing ops, inc1, exist here)")
    return num_ops, magnitude, std


def rand_augment(pixels: np.ndarray, rng: np.random.Generator, num_ops: int = 2, magnitude: float = 9.0,
                 magnitude_std: float = 0.5, prob: float = APPLY_PROB) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) uint8 with RandAugment applied."""
    img = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float()  # a writable copy
    for index in rng.integers(0, len(_NAMES), num_ops):
        if rng.uniform() > prob:
            continue
        level_magnitude = min(MAX_LEVEL, max(0.0, rng.normal(magnitude, magnitude_std))) if magnitude_std > 0 \
            else magnitude
        operation, level = OPS[_NAMES[index]]
        img = operation(img, level(level_magnitude, rng))
    return img.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
