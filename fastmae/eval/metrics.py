"""Top-k accuracy counts, kept on the device until the end of an evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def topk_correct(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5),
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """scores (N, K), target (N,) -> (len(ks),) float32 counts of samples whose class is in the top k.

    k is capped at K (top-5 of a 3-class task counts every sample). ``valid`` (N,) bool leaves out
    padding rows. No host sync.
    """
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (N, k_max)
    hits = top.eq(target.unsqueeze(1))
    if valid is not None:
        hits = hits & valid.unsqueeze(1)
    return torch.stack([hits[:, :k].any(dim=1).float().sum() for k in ks])
