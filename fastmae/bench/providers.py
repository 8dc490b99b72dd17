"""The train-step providers compared by the benchmarks.

- ``reference-published``: the reference model in the official loop: fp16 autocast with a
  GradScaler, explicit-softmax attention, eager, non-fused AdamW, ``loss.item()`` every step.
- ``reference-modern``: the same loop with bf16 autocast, SDPA and ``torch.compile(model)``: the
  five-minute changes a careful user makes.
- ``fastmae``: fastmae's own training step (fused ops, compiled forward+backward, fused AdamW,
  no host sync).

Each provider returns a ``step(imgs)`` closure doing one full optimizer step on a batch. On
CPU, fp16 autocast is replaced by fp32 (CPU fp16 matmuls are emulated) and compilation is
opt-in; the row's ``precision`` says what ran (its matrix products run in ``AUTOCAST_DTYPES[precision]``, the
dtype its MFU ceiling is measured in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

REFERENCE_PROVIDERS = ("reference-published", "reference-modern")  # the baselines fastmae is compared with
PROVIDERS = (*REFERENCE_PROVIDERS, "fastmae")
# what each provider runs on a GPU: attention of the reference model, autocast precision
REFERENCE_ATTN = {"reference-published": "math", "reference-modern": "sdpa"}
GPU_PRECISION = {"reference-published": "fp16", "reference-modern": "bf16", "fastmae": "bf16"}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class BuiltStep:
    step: Callable[[torch.Tensor], None]
    precision: str  # "bf16", "fp16" or "fp32": the autocast that ran
    compiled: bool
    attn: str  # the attention the model runs: "math" (explicit softmax), "sdpa", "xformers"
    op_kernel: str | None = None  # fastmae's fused ops: the kernel they pick ("triton", "native", "torch")


def provider_precision(provider: str, device: torch.device) -> str:
    """The precision ``provider`` runs at on ``device``: its GPU precision, fp32 for fp16 off CUDA."""
    _check_provider(provider)
    precision = GPU_PRECISION[provider]
    return "fp32" if precision == "fp16" and device.type != "cuda" else precision  # CPU fp16 matmuls are emulated


def _check_provider(name: str) -> None:
    if name not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {name!r}")


def build_step(
    provider: str, model_name: str, device: torch.device, *, mask_ratio: float = 0.75, compile_model: bool,
    norm_pix_loss: bool = True,
) -> BuiltStep:
    """``provider``'s optimizer step for ``model_name`` on ``device``: ``step(imgs (N, C, H, W))``."""
    _check_provider(provider)
    if provider == "fastmae":
        return _fastmae_step(model_name, device, mask_ratio, compile_model, norm_pix_loss)
    return _reference_step(provider, model_name, device, mask_ratio, compile_model, norm_pix_loss)


def _reference_step(
    provider: str, model_name: str, device: torch.device, mask_ratio: float, compile_model: bool, norm_pix: bool
) -> BuiltStep:
    from fastmae.reference import create_reference_model
    from fastmae.train.optim import param_groups

    published = provider == "reference-published"
    model = create_reference_model(model_name, attn_impl=REFERENCE_ATTN[provider], norm_pix_loss=norm_pix).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=False)
    precision = provider_precision(provider, device)
    dtype = AUTOCAST_DTYPES[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    compiled = compile_model and not published
    forward = torch.compile(model) if compiled else model

    def step(imgs: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, _, _ = forward(imgs, mask_ratio)
        loss.item()  # the official loop reads the loss every step (a host sync)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return BuiltStep(step, precision, compiled, REFERENCE_ATTN[provider])


def _fastmae_step(
    model_name: str, device: torch.device, mask_ratio: float, compile_model: bool, norm_pix: bool
) -> BuiltStep:
    from fastmae.models.attention import resolve_attn_backend
    from fastmae.ops._backend import select_backend
    from fastmae.train.step import build_train_step

    precision = provider_precision("fastmae", device)
    train_step = build_train_step(
        model_name, device=device, precision=precision, compile_model=compile_model, norm_pix_loss=norm_pix,
        mask_ratio=mask_ratio,
    )
    return BuiltStep(train_step, precision, compile_model, resolve_attn_backend("auto"), select_backend(device))
