"""Weighted cosine k-NN classification of features, the usual self-supervised monitor.

Each query votes with its ``k`` most cosine-similar reference features; neighbour j adds
``exp(sim_j / temperature)`` to its class. k = 20 and temperature 0.07 are the common choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KNN_K = 20
KNN_TEMPERATURE = 0.07


def knn_scores(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
               k: int = KNN_K, temperature: float = KNN_TEMPERATURE, chunk: int = 1024) -> torch.Tensor:
    """queries (N, D), bank (M, D), bank_labels (M,) int64 -> class votes (N, num_classes) float32.

    Features are L2-normalised here; k is capped at M. Queries go in chunks of ``chunk`` rows so the
    (chunk, M) similarity matrix bounds the memory.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"queries (N, D) and bank (M, D) must share D, got {tuple(queries.shape)} and "
                         f"{tuple(bank.shape)}")
    if bank_labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels must be ({bank.shape[0]},), got {tuple(bank_labels.shape)}")
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        sim, index = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        out.append(votes.scatter_add_(1, bank_labels[index], (sim / temperature).exp()))
    return torch.cat(out)
