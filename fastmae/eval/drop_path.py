"""Stochastic depth ("drop path") for residual branches, as in the fine-tuning recipe."""

from __future__ import annotations

import torch


def drop_path(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Zero the whole branch ``x`` (N, ...) of each sample with probability ``prob``; scale the kept by 1/(1-prob).

    The expectation is unchanged; identity in eval mode or when ``prob`` is 0. The keep mask is drawn
    from torch's default generator (its state is in every checkpoint, so a resume repeats it).
    """
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask.div_(keep)


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Per-block rates rising linearly from 0 (first block) to ``max_rate`` (last block)."""
    if depth == 1:
        return [0.0]
    return [max_rate * i / (depth - 1) for i in range(depth)]
