"""Which implementation runs an op: Triton kernels, the native extension, or plain PyTorch.

``FASTMAE_BACKEND`` (read per call, so tests can switch it with monkeypatch):

- ``auto`` (default): CUDA tensors take the Triton kernels; CPU tensors take the native
  extension when it is built and loads, plain PyTorch otherwise.
- ``triton``: the Triton launchers for every tensor (CPU tensors need ``TRITON_INTERPRET=1``).
- ``native``: the native extension (an error if it is not built).
- ``torch``: plain PyTorch everywhere.

Every op is registered twice with the same schema: ``torch.ops.fastmae.NAME`` (a
``triton_op`` whose body branches on :func:`launch_triton`) and, when the extension is built,
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
    """Whether tensors on ``device`` take the Triton kernels (CUDA, or FASTMAE_BACKEND=triton)."""
    return device.type == "cuda" or requested_backend() == "triton"


def launch_triton(tensor: torch.Tensor) -> bool:
    """Inside a ``fastmae::`` op body: launch the Triton kernel (True) or run the plain PyTorch branch.

    :func:`use_triton` for ``tensor``'s device, except for fake tensors while the kernels are interpreted
    (TRITON_INTERPRET=1): ``wrap_triton`` then holds a bare interpreted kernel that cannot run on the fake
    tensors of ``torch.compile`` or ``opcheck``, so those traces take the PyTorch branch (same shapes, dtypes
    and strides). ``torch.compile`` inlines a ``triton_op``'s body, so a graph compiled on CPU under the
    interpreter holds the PyTorch branch; eager calls still run the kernels. Compiled kernels (a GPU) are
    traced into the graph as usual, so nothing changes on CUDA.
    """
    if not use_triton(tensor.device):
        return False
    from torch._subclasses.fake_tensor import is_fake

    if not is_fake(tensor):
        return True
    import triton.knobs  # only reached from op modules, which have imported triton already

    return not triton.knobs.runtime.interpret


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


def debug_value_checks() -> bool:
    """Run the value checks (ids in range; a host sync): debug mode, in eager code only (they cannot be traced)."""
    return debug_checks_enabled() and not torch.compiler.is_compiling()
