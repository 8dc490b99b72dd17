"""Which tensors the compiled training step copies around its Triton kernels, found without a GPU.

    python -m fastmae.bench.clone_audit [--model mae_vit_tiny_patch8_dec64d2b] [--batch 2]

Under ``torch.compile`` a ``wrap_triton`` launch is functionalized: torch analyses the kernel's Triton IR
for the tensors it writes, and every written argument is cloned first (inductor removes a clone only when
it can prove the original dead). A kernel that torch believes writes its inputs therefore copies images,
predictions or ids on every step. This traces the trainer's step (:func:`fastmae.train.step.build_train_step`,
bf16 autocast) on CPU tensors with the Triton branch of every op (``FASTMAE_BACKEND=triton``, interpreter off)
and a stub driver that only names a GPU target, stops at the functionalized forward and backward graphs
(nothing is compiled or launched), and lists, per kernel, the written arguments that are not fresh
allocations of the op itself: those are the needless copies.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

# ops whose result is a fresh tensor: a kernel writing one of these is writing its own output
_ALLOCATIONS = {"empty", "empty_strided", "zeros", "full", "empty_like", "zeros_like", "full_like", "new_empty",
                "new_zeros", "new_full"}


class _GraphsCaptured(Exception):
    """Raised by the capturing backend once it has the graphs: nothing may run after that."""


def _is_allocation(node: Any) -> bool:
    target = getattr(node, "target", None)
    name = getattr(target, "__name__", "")  # e.g. "empty.memory_format"
    return name.split(".")[0] in _ALLOCATIONS


def cloned_inputs(graph: torch.fx.GraphModule) -> list[dict[str, Any]]:
    """Every Triton launch in ``graph``: its kernel, the arguments torch clones, and which of those are inputs."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    launches = []
    for node in graph.graph.nodes:
        if node.target is not torch.ops.higher_order.triton_kernel_wrapper_functional:
            continue
        kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
        arguments = node.kwargs["kwargs"]
        cloned = list(node.kwargs["tensors_to_clone"])
        launches.append({
            "kernel": getattr(kernel, "fn", kernel).__name__,
            "cloned": cloned,
            "cloned_inputs": [name for name in cloned if not _is_allocation(arguments[name])],
        })
    return launches


def functionalized_step_graphs(model_name: str, batch: int) -> dict[str, torch.fx.GraphModule]:
    """The functionalized forward and backward graphs of the trainer's compiled step (bf16) on CPU tensors."""
    import triton.knobs
    from functorch.compile import min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    from fastmae.bench.triton_capture import gpu_target_driver
    from fastmae.models.configs import full_model_config
    from fastmae.train.step import build_train_step

    if triton.knobs.runtime.interpret:
        raise RuntimeError("the audit needs the compiled Triton kernels' IR: unset TRITON_INTERPRET")
    graphs: dict[str, torch.fx.GraphModule] = {}

    def partition(joint: torch.fx.GraphModule, inputs: Any, **kwargs: Any) -> tuple[Any, Any]:
        graphs["forward"], graphs["backward"] = min_cut_rematerialization_partition(joint, inputs, **kwargs)
        return graphs["forward"], graphs["backward"]

    def stop(graph: torch.fx.GraphModule, inputs: Any) -> Any:
        raise _GraphsCaptured

    backend = aot_autograd(fw_compiler=stop, partition_fn=partition)
    size = int(full_model_config(model_name)["img_size"])  # type: ignore[call-overload]
    previous = os.environ.get("FASTMAE_BACKEND")
    os.environ["FASTMAE_BACKEND"] = "triton"
    try:
        with gpu_target_driver(90):
            step = build_train_step(model_name, device="cpu", precision="bf16", compile_model=True,
                                    compile_backend=backend)  # type: ignore[arg-type]
            try:
                step(torch.randn(batch, 3, size, size))
            except torch._dynamo.exc.BackendCompilerFailed as error:
                if not isinstance(error.inner_exception, _GraphsCaptured):
                    raise
    finally:
        if previous is None:
            del os.environ["FASTMAE_BACKEND"]
        else:
            os.environ["FASTMAE_BACKEND"] = previous
    if set(graphs) != {"forward", "backward"}:
        raise RuntimeError("the compiled step produced no forward/backward graphs to audit")
    return graphs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmae.bench.clone_audit", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mae_vit_tiny_patch8_dec64d2b")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    graphs = functionalized_step_graphs(args.model, args.batch)
    audit = {name: cloned_inputs(graph) for name, graph in graphs.items()}
    print(json.dumps(audit, indent=1))
    copies = [(name, launch) for name, launches in audit.items() for launch in launches if launch["cloned_inputs"]]
    for name, launch in copies:
        print(f"{name}: {launch['kernel']} clones its inputs {launch['cloned_inputs']}", file=sys.stderr)
    return 1 if copies else 0


if __name__ == "__main__":
    sys.exit(main())
