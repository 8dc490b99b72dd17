"""The training precisions by name, the autocast dtype of each (None: no autocast, float32), and the
dtypes the matrix weights may be held in (``--weights``)."""

from __future__ import annotations

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
PRECISIONS: tuple[str, ...] = tuple(AUTOCAST_DTYPES)

# fp32: autocast casts each Linear/conv weight every forward; bf16: held in bf16 with an fp32 master copy in
# the optimizer (fastmae.train.master_weights; needs bf16 autocast)
WEIGHTS: tuple[str, ...] = ("fp32", "bf16")
# measured with ``fastmae memory --weights`` (docs/memory.md): bf16 weights save no peak memory, the fp32 master
# takes the place of autocast's copies (ViT-H/14 batch 128: 26.77 GB either way without recomputation, 21.27
# against 21.10 GB with selective), and they accumulate gradients over micro-steps in bf16
DEFAULT_WEIGHTS = "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """``"bf16"`` -> torch.bfloat16, ``"fp16"`` -> torch.float16, ``"fp32"`` -> None; ValueError otherwise."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return AUTOCAST_DTYPES[precision]


def resolve_weights(weights: str | None, precision: str, fsdp: bool = False) -> str:
    """The dtype the forward's matrix weights are held in, by precision name.

    ``weights`` None: under FSDP2 the autocast precision (its MixedPrecisionPolicy gathers the fp32
    shards in that dtype, as it always has), else DEFAULT_WEIGHTS where the precision is bf16 and fp32
    otherwise. "bf16" needs bf16 autocast (ValueError naming both flags otherwise).
    """
    if weights is None:
        if fsdp:
            return precision
        return DEFAULT_WEIGHTS if precision == "bf16" else "fp32"
    if weights not in WEIGHTS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "bf16" and precision != "bf16":
        raise ValueError(f"--weights bf16 needs --precision bf16 (the forward runs under bf16 autocast), "
                         f"got --precision {precision}")
    return weights
