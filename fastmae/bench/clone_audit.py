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
from collections.abc import Callable, Sequence
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


def _capture(run: Callable[[Callable[..., Any]], None]) -> dict[str, torch.fx.GraphModule]:
    """The functionalized forward and backward graphs of whatever ``run`` compiles with the backend it is given
    (Triton branch of every op, a GPU target named, nothing compiled or launched)."""
    import triton.knobs
    from functorch.compile import min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    from fastmae.bench.triton_capture import gpu_target_driver

    if triton.knobs.runtime.interpret:
        raise RuntimeError("the audit needs the compiled Triton kernels' IR: unset TRITON_INTERPRET")
    graphs: dict[str, torch.fx.GraphModule] = {}

    def partition(joint: torch.fx.GraphModule, inputs: Any, **kwargs: Any) -> tuple[Any, Any]:
        graphs["forward"], graphs["backward"] = min_cut_rematerialization_partition(joint, inputs, **kwargs)
        return graphs["forward"], graphs["backward"]

    def stop(graph: torch.fx.GraphModule, inputs: Any) -> Any:
        raise _GraphsCaptured

    previous = os.environ.get("FASTMAE_BACKEND")
    os.environ["FASTMAE_BACKEND"] = "triton"
    try:
        with gpu_target_driver(90):
            try:
                run(aot_autograd(fw_compiler=stop, partition_fn=partition))
            except torch._dynamo.exc.BackendCompilerFailed as error:
                if not isinstance(error.inner_exception, _GraphsCaptured):
                    raise
    finally:
        if previous is None:
            del os.environ["FASTMAE_BACKEND"]
        else:
            os.environ["FASTMAE_BACKEND"] = previous
    if set(graphs) != {"forward", "backward"}:
        raise RuntimeError("the compiled function produced no forward/backward graphs to audit")
    return graphs


def functionalized_step_graphs(model_name: str, batch: int) -> dict[str, torch.fx.GraphModule]:
    """The functionalized forward and backward graphs of the trainer's compiled step (bf16) on CPU tensors."""
    from fastmae.models.configs import full_model_config
    from fastmae.train.step import build_train_step

    size = int(full_model_config(model_name)["img_size"])  # type: ignore[call-overload]

    def run(backend: Callable[..., Any]) -> None:
        step = build_train_step(model_name, device="cpu", precision="bf16", compile_model=True,
                                compile_backend=backend)  # type: ignore[arg-type]
        step(torch.randn(batch, 3, size, size))

    return _capture(run)


def functionalized_op_graphs() -> dict[str, torch.fx.GraphModule]:
    """The same for the kernel paths the step does not take: gradients into the images (the patchify scatter,
    the loss's source gradient through norm_pix) and an explicit target, with sample weights and a mask."""
    from fastmae.ops import masked_mse_loss, patchify_gather, random_masking

    batch, p, size = 2, 4, 8
    masking = random_masking(batch, (size // p) ** 2, 0.5)
    keep = masking.num_keep

    def ops(imgs: torch.Tensor, pred: torch.Tensor, full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        visible = patchify_gather(imgs, masking.ids_keep, p)
        pixel = masked_mse_loss(pred, imgs, masking.ids_restore, p, norm_pix=True)
        explicit = masked_mse_loss(full, None, None, None, target=target, mask=masking.mask, norm_pix=True,
                                   sample_weight=torch.ones(batch))  # fmt: skip
        return visible.sum() + pixel + explicit

    def run(backend: Callable[..., Any]) -> None:
        length = (size // p) ** 2
        leaves = (torch.randn(batch, 3, size, size), torch.randn(batch, length - keep, p * p * 3),
                  torch.randn(batch, length, 5), torch.randn(batch, length, 5))  # fmt: skip
        torch.compile(ops, backend=backend, fullgraph=True)(*(t.requires_grad_() for t in leaves))

    return _capture(run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmae.bench.clone_audit", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mae_vit_tiny_patch8_dec64d2b")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    graphs = functionalized_step_graphs(args.model, args.batch)
    graphs.update({f"ops_{name}": graph for name, graph in functionalized_op_graphs().items()})
    audit = {name: cloned_inputs(graph) for name, graph in graphs.items()}
    print(json.dumps(audit, indent=1))
    copies = [(name, launch) for name, launches in audit.items() for launch in launches if launch["cloned_inputs"]]
    for name, launch in copies:
        print(f"{name}: {launch['kernel']} clones its inputs {launch['cloned_inputs']}", file=sys.stderr)
    return 1 if copies else 0


if __name__ == "__main__":
    sys.exit(main())
