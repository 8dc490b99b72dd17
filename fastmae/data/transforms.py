"""The MAE augmentation on the host: RandomResizedCrop (bicubic) + horizontal flip, with PIL.

The crop follows the RandomResizedCrop recipe MAE uses: up to 10 tries of a target area drawn
uniformly from ``scale`` times the image area and an aspect ratio drawn log-uniformly from
``ratio``; the first window that fits is taken at a uniform position; if none fits, the
largest centred window whose aspect ratio is clamped to ``ratio``. DALI's
``image_random_crop`` draws from the same distribution.
"""

from __future__ import annotations

import math

import numpy as np

MAX_CROP_TRIES = 10


def random_resized_crop_window(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of one random crop of a ``height`` x ``width`` image."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(MAX_CROP_TRIES):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    # fallback: whole image, trimmed to the nearest allowed aspect ratio, centred
    image_ratio = width / height
    if image_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif image_ratio > ratio[1]:
        crop_h, crop_w = height, round(height * ratio[1])
    else:
        crop_h, crop_w = height, width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def load_rgb(path: str):
    """Decode ``path`` fully as an RGB PIL image (grayscale, CMYK, palette, misnamed PNG all work).

    Any failure (unreadable, not an image, truncated, corrupt) raises ImageDecodeError (an OSError)
    naming the file.
    """
    from PIL import Image

    from fastmae.data.files import not_regular
    from fastmae.errors import ImageDecodeError

    kind = not_regular(path)
    if kind is not None:  # opening a FIFO would block forever
        raise ImageDecodeError(f"cannot decode image {path}: not a regular file ({kind})")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces the full decode inside the try
    except Exception as error:
        raise ImageDecodeError(f"cannot decode image {path}: {type(error).__name__}: {error} (run 'fastmae "
                               "scan-dataset DATA_PATH' to find such files and train on its clean list)") from error


def crop_resize_flip(
    path: str,
    rng: np.random.Generator,
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_prob: float,
) -> np.ndarray:
    """(H, W, 3) uint8: decode, random-resized-crop to ``size`` (bicubic, antialiased), random flip."""
    from PIL import Image

    image = load_rgb(path)
    top, left, crop_h, crop_w = random_resized_crop_window(rng, image.height, image.width, scale, ratio)
    # PIL's resize widens the bicubic kernel when downscaling, i.e. it is antialiased like DALI's
    resized = image.resize(
        (size[1], size[0]), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h)
    )
    pixels = np.asarray(resized)
    if rng.uniform() < flip_prob:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels)
