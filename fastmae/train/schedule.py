"""The MAE learning-rate schedule: per-iteration linear warmup, then a half-cycle cosine.

Like the official recipe, the lr is a function of the fractional epoch
``epoch + step_in_epoch / steps_per_epoch`` and is set before every optimizer step.
"""

from __future__ import annotations

import math


def lr_at(epoch_float: float, base_lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """The lr at a fractional epoch: linear from 0 over the warmup, then cosine from base_lr to min_lr."""
    if epoch_float < warmup_epochs:
        return base_lr * epoch_float / warmup_epochs
    if epochs <= warmup_epochs:
        return base_lr
    progress = (epoch_float - warmup_epochs) / (epochs - warmup_epochs)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_for_step(
    global_step: int, steps_per_epoch: int, base_lr: float, min_lr: float, warmup_epochs: float, epochs: float
) -> float:
    """The lr of optimizer step ``global_step`` (0-based) with ``steps_per_epoch`` optimizer steps per epoch."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    epoch, step_in_epoch = divmod(global_step, steps_per_epoch)
    return lr_at(epoch + step_in_epoch / steps_per_epoch, base_lr, min_lr, warmup_epochs, epochs)
