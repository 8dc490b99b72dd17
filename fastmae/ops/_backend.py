"""Which implementation runs an op: Triton kernels, the native extension, or plain PyTorch.

``FASTMAE_BACKEND`` (read per call, so tests can switch it with monkeypatch):

- ``auto`` (default): CUDA tensors take the Triton kernels; CPU tensors take the native
  extension when it is built and loads, plain PyTorch otherwise.
- ``triton``: the Triton launchers for every tensor (CPU tensors need ``TRITON_INTERPRET=1``).
- ``native``: the native extension (an error if it is not built).
- ``torch``: plain PyTorch everywhere.

Every op is registered twice with the same schema: ``torch.ops.fastmae.NAME`` (a
``triton_op`` whose body branches on :func:`use_triton`) and, when the extension is built,
``torch.ops.fastmae_native.NAME``. :func:`resolve_op` picks one per call.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

Backend = Literal["triton", "native", "torch"]
BACKEND_CHOICES = ("auto", "triton", "native", "torch")
ENV_VAR = "FASTMAE_BACKEND"


def requested_backend() -> str:
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in BACKEND_CHOICES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(BACKEND_CHOICES)}, got {choice!r}")
    return choice


def select_backend(device: torch.device) -> Backend:
    """The backend an op runs on for tensors on ``device``."""
    choice = requested_backend()
    if choice != "auto":
        if choice == "native":
            from fastmae import _native

            _native.require()
        return choice  # type: ignore[return-value]
    if device.type == "cuda":
        return "triton"
    from fastmae import _native

    return "native" if _native.available() else "torch"


def use_triton(device: torch.device) -> bool:
    """Inside a ``fastmae::`` op body: launch the Triton kernel (True) or run plain PyTorch."""
    return device.type == "cuda" or requested_backend() == "triton"


def resolve_op(name: str, device: torch.device) -> torch._ops.OpOverloadPacket:
    """``torch.ops.fastmae_native.NAME`` when the native backend is selected, else ``torch.ops.fastmae.NAME``."""
    if select_backend(device) == "native":
        return getattr(torch.ops.fastmae_native, name)
    return getattr(torch.ops.fastmae, name)


def debug_checks_enabled() -> bool:
    """``FASTMAE_DEBUG=1`` turns on value checks (ids in range) that cost a host sync."""
    return os.environ.get("FASTMAE_DEBUG", "0") not in ("", "0")


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate an op output; in debug mode it is poisoned (NaN) so unwritten elements show."""
    if debug_checks_enabled():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
