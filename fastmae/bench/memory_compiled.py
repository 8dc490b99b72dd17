"""Bytes a ``torch.compile``d training step keeps for backward, read off the partitioned forward graph.

The model is compiled with AOTAutograd and inductor's partitioner (``min_cut_rematerialization_partition``)
but no code generation: the forward-graph compiler receives the partitioned forward, whose outputs after
the user outputs are the tensors saved for backward, records their sizes and stops the call. Tracing
happens on fake tensors, so no activation is allocated; the model's parameters are real CPU tensors
(ViT-H: 2.6 GB). Parameters (graph inputs) and views of them are not counted; distinct storages are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from fastmae.bench.memory import _build_model
from fastmae.bench.providers import AUTOCAST_DTYPES, GPU_PRECISION


class _Partitioned(Exception):
    """Raised by the forward compiler once it has read the graph: nothing is run."""


def _saved_bytes(graph: torch.fx.Graph, num_user_outputs: int) -> int:
    inputs = {StorageWeakRef(n.meta["val"].untyped_storage()) for n in graph.nodes
              if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)}
    outputs = next(n for n in graph.nodes if n.op == "output").args[0]
    saved: dict[StorageWeakRef, int] = {}
    for node in outputs[num_user_outputs:]:
        value = getattr(node, "meta", {}).get("val")
        if isinstance(value, torch.Tensor):
            key = StorageWeakRef(value.untyped_storage())
            if key not in inputs:
                saved[key] = value.untyped_storage().nbytes()
    return sum(saved.values())


def compiled_saved_bytes(provider: str, model_name: str, batch: int, *, recompute: str = "none",
                         weights: str = "fp32", precision: str | None = None, mask_ratio: float = 0.75,
                         norm_pix_loss: bool = True) -> int:
    """Bytes the min-cut partition of ``provider``'s compiled forward saves for backward at ``batch``
    (``weights`` "bf16": fastmae's Linear/conv weights held in bf16, as the trainer's ``--weights bf16``)."""
    from functorch.compile import min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    model = _build_model(provider, model_name, norm_pix_loss, recompute, weights)
    found: dict[str, int] = {}

    def forward_compiler(gm: torch.fx.GraphModule, example_inputs: Any, **kwargs: Any) -> Any:
        meta = torch._guards.TracingContext.get().fw_metadata
        num_user_outputs = meta.num_forward_returns  # then the saved tensors (and saved sizes)
        found["bytes"] = _saved_bytes(gm.graph, num_user_outputs)
        raise _Partitioned

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=lambda gm, _: gm,
                           partition_fn=min_cut_rematerialization_partition)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    imgs = torch.randn(batch, model.in_chans, *model.img_size)
    noise = torch.rand(batch, model.num_patches)
    dtype = AUTOCAST_DTYPES[precision or GPU_PRECISION[provider]]
    try:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            compiled(imgs, mask_ratio, noise)
    except Exception as error:  # dynamo wraps what a backend raises
        if "bytes" not in found:
            raise
        del error
    finally:
        torch._dynamo.reset()
    return found["bytes"]
