"""Activation recomputation policies for the transformer blocks and the prediction head.

``RECOMPUTE_MODES``:

- ``"none"``: autograd keeps what each op saves (LayerNorm inputs, the GELU input and output, the
  casts autocast makes, ...).
- ``"selective"``: the outputs of matrix products and attention kernels are kept; everything else in
  the region (LayerNorm, GELU, residual adds, autocast casts of inputs and weights) is recomputed in
  backward from the region's input and those kept outputs. Only elementwise and normalisation work
  is repeated (no extra matrix-product FLOPs), and nothing is kept twice in two dtypes.
- ``"full"``: the whole region is recomputed (classic activation checkpointing; a second forward).

Selective recomputation uses ``torch.utils.checkpoint.create_selective_checkpoint_contexts``, which
``torch.compile(fullgraph=True)`` traces as it stands (the policy becomes the partitioner's recompute tags).
Recomputation replays the same ops on the same inputs, so the values and gradients are those of "none".
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

RECOMPUTE_MODES: tuple[str, ...] = ("none", "selective", "full")
# the trainer's default: measured with ``fastmae memory`` (docs/memory.md), about 0.6x the activations of
# "none" for ViT-B/L/H in bf16, for elementwise recomputation only (no extra matrix-product FLOPs)
DEFAULT_RECOMPUTE = "selective"

_aten = torch.ops.aten
# ops whose outputs "selective" keeps: the matrix products and the attention kernels (all devices)
_KEPT_OPS = frozenset({
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
})
_KEPT_OP_NAMES = frozenset({"fastmae::xformers_attention"})  # custom ops, matched by name (lazy registration)


def check_recompute(mode: str) -> str:
    """``mode`` if it is one of RECOMPUTE_MODES, else ValueError naming the choices."""
    if mode not in RECOMPUTE_MODES:
        raise ValueError(f"recompute must be one of {', '.join(map(repr, RECOMPUTE_MODES))}, got {mode!r}")
    return mode


def _keep_matmul_outputs(ctx: object, op: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    name = getattr(op, "name", lambda: "")()
    kept = op in _KEPT_OPS or name.split(".")[0] in _KEPT_OP_NAMES
    return CheckpointPolicy.MUST_SAVE if kept else CheckpointPolicy.PREFER_RECOMPUTE


def run_recomputed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """``fn(x)`` with the activations it keeps for backward chosen by ``mode`` (see the module doc)."""
    if mode == "none" or not torch.is_grad_enabled():
        return fn(x)
    if mode == "full":
        return checkpoint(fn, x, use_reentrant=False)
    context = partial(create_selective_checkpoint_contexts, _keep_matmul_outputs)
    return checkpoint(fn, x, use_reentrant=False, context_fn=context)
