"""Mixup and CutMix with label smoothing (the fine-tuning recipe), applied per batch on the device.

Per batch, with probability ``prob``: if both are enabled, CutMix with probability ``switch_prob``,
else Mixup; the mixing weight lam ~ Beta(alpha, alpha). Each sample is mixed with the sample at the
mirrored position of the batch (``flip(0)``). Mixup: ``x = lam x + (1 - lam) x_flipped``. CutMix: a box of
side ``int(side * sqrt(1 - lam))`` centred uniformly (clipped at the border) is pasted from
``x_flipped`` and lam becomes the uncovered share of the image. Targets: smoothed one-hot
(``1 - smoothing + smoothing/K`` on the class, ``smoothing/K`` elsewhere) mixed with the same lam.

The random draws come from a NumPy generator seeded with (seed, step, micro-step): no device read,
no state to checkpoint, the same batches after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def smooth_one_hot(target: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(N,) int64 -> (N, K) float32: ``1 - smoothing + smoothing/K`` on the class, ``smoothing/K`` elsewhere."""
    off = smoothing / num_classes
    return F.one_hot(target, num_classes).float() * (1.0 - smoothing) + off


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k target_k log softmax(logits)_k`` (float32); logits (N, K), target (N, K)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the CutMix box for weight ``lam`` (bottom/right exclusive)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    return int(top), int(bottom), int(left), int(right)


@dataclass(frozen=True)
class Mixup:
    """``mixup(images (N, C, H, W), target (N,), rng) -> (mixed images, soft targets (N, K))``."""

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.1

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def draw(self, rng: np.random.Generator) -> tuple[float, bool]:
        """(lam, use CutMix) for one batch; lam 1.0 means unmixed."""
        if not self.enabled or rng.uniform() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.uniform() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    def __call__(self, images: torch.Tensor, target: torch.Tensor,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.enabled and images.shape[0] % 2:
            raise ValueError(f"mixup/cutmix pair sample i with sample N-1-i: the batch size must be even, "
                             f"got {images.shape[0]}")
        lam, use_cutmix = self.draw(rng)
        if lam < 1.0:
            flipped = images.flip(0)
            if use_cutmix:
                top, bottom, left, right = cutmix_box(images.shape[-2], images.shape[-1], lam, rng)
                images = images.clone()
                images[:, :, top:bottom, left:right] = flipped[:, :, top:bottom, left:right]
                lam = 1.0 - (bottom - top) * (right - left) / (images.shape[-2] * images.shape[-1])
            else:
                images = images * lam + flipped * (1.0 - lam)
        soft = smooth_one_hot(target, self.num_classes, self.smoothing)
        return images, soft * lam + soft.flip(0) * (1.0 - lam)
