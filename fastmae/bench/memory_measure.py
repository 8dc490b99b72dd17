"""The memory report's predicted peak against a real training step's peak.

The step is the one that trains: fastmae's :func:`fastmae.train.step.build_train_step` (eager, so the
prediction of an eager step applies) and the references' :func:`fastmae.bench.providers.build_step`.
A first step allocates the AdamW state; the second is measured:

- on CUDA, ``torch.cuda.max_memory_allocated`` over that step (the figure the prediction stands for;
  what it adds, such as cuBLAS workspaces and CUDA autocast's fp32 softmax, shows in the ratio);
- on CPU (the dry run of the device check, fastmae only), the report's own storage ledger over the real
  step, with the parameters, AdamW state and batch counted as alive before it.
"""

from __future__ import annotations

from typing import Any

import torch

from fastmae.bench.memory import StepTracer, _ModuleScope, _storage_key, _StorageLedger


def _cpu_peak(step: Any, imgs: torch.Tensor) -> int:
    train_step = step.train_step
    model, optimizer = train_step.model, train_step.optimizer
    fixed = [*model.parameters(), *model.buffers(), imgs]
    fixed += [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    if train_step.master is not None:
        fixed += train_step.master.masters
    ledger = _StorageLedger(_ModuleScope(model), fixed, {_storage_key(p) for p in model.parameters()})
    with ledger:
        step(imgs)
    return ledger.peak


def measure_peak(provider: str, model_name: str, batch: int, device: torch.device | str, *,
                 recompute: str = "none", weights: str = "fp32") -> dict[str, Any]:
    """A ``memory_measured`` row: the predicted and the measured peak bytes of one steady-state step."""
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, got {device}")
    if device.type == "cpu" and provider != "fastmae":
        raise ValueError("on CPU only the fastmae step is measured (the references' steps hide their optimizer)")
    predicted = StepTracer(provider, model_name, recompute=recompute, weights=weights).trace(batch)
    torch.manual_seed(0)
    if provider == "fastmae":
        from fastmae.train.step import build_train_step

        step = build_train_step(model_name, device=device, precision=predicted.precision, compile_model=False,
                                norm_pix_loss=True, recompute=recompute, weights=weights)
    else:
        from fastmae.bench.providers import build_step

        step = build_step(provider, model_name, device, compile_model=False).step
    from fastmae.models.configs import full_model_config

    size = full_model_config(model_name)["img_size"]
    height, width = (size, size) if isinstance(size, int) else size
    imgs = torch.randn(batch, 3, height, width, device=device)
    step(imgs)  # allocates the AdamW state
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(imgs)
        torch.cuda.synchronize(device)
        measured = torch.cuda.max_memory_allocated(device)
    else:
        measured = _cpu_peak(step, imgs)
    return {"bench": "memory_measured", "model": model_name, "provider": provider, "batch": batch,
            "precision": predicted.precision, "recompute": recompute, "weights": weights,
            "device_measured": str(device), "predicted_peak_bytes": predicted.peak_bytes,
            "measured_peak_bytes": measured, "measured_over_predicted": measured / predicted.peak_bytes}
