"""The training precisions by name, and the autocast dtype of each (None: no autocast, float32)."""

from __future__ import annotations

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
PRECISIONS: tuple[str, ...] = tuple(AUTOCAST_DTYPES)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """``"bf16"`` -> torch.bfloat16, ``"fp16"`` -> torch.float16, ``"fp32"`` -> None; ValueError otherwise."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return AUTOCAST_DTYPES[precision]
