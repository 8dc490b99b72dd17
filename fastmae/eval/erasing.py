"""Random erasing (the fine-tuning recipe: probability 0.25, one box, per-pixel normal noise).

Per image, with probability ``prob``: up to 10 tries of a box with area drawn uniformly from
[0.02, 1/3] of the image and aspect ratio log-uniform in [0.3, 1/0.3]; the first that fits is
filled with N(0, 1) noise (the images are already normalised). Boxes are drawn on the host from a
NumPy generator; the fill is one masked write on the device, so shapes stay static.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MAX_TRIES = 10


def erase_boxes(batch: int, height: int, width: int, rng: np.random.Generator, prob: float = 0.25,
                area: tuple[float, float] = (0.02, 1 / 3), aspect: float = 0.3) -> np.ndarray:
    """(batch, 4) int64 (top, left, box height, box width); a zero-size box where nothing is erased."""
    boxes = np.zeros((batch, 4), dtype=np.int64)
    log_aspect = (math.log(aspect), math.log(1 / aspect))
    for i in range(batch):
        if rng.uniform() > prob:
            continue
        for _ in range(MAX_TRIES):
            target = rng.uniform(*area) * height * width
            ratio = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if w < width and h < height:
                boxes[i] = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
                break
    return boxes


def random_erase(images: torch.Tensor, boxes: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
    """images (N, C, H, W), boxes (N, 4) from :func:`erase_boxes` -> images with the boxes set to N(0, 1)."""
    box = torch.as_tensor(boxes, device=images.device)
    rows = torch.arange(images.shape[-2], device=images.device).view(1, -1, 1)
    cols = torch.arange(images.shape[-1], device=images.device).view(1, 1, -1)
    top, left, h, w = (box[:, j].view(-1, 1, 1) for j in range(4))
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)  # (N, H, W)
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return torch.where(inside.unsqueeze(1), noise, images)
