"""Which kernel runs an op: Triton, the native library, or plain PyTorch.

Every op is one ``torch.ops.fastmae.NAME`` op (a ``triton_op``); its body asks :func:`kernel_for` which
kernel to run for its input tensor. ``FASTMAE_BACKEND`` (read per call, so tests can switch it with
monkeypatch):

- ``auto`` (default): CUDA tensors take the Triton kernels; CPU tensors take the native library's
  kernels when it is built and loads, plain PyTorch otherwise.
- ``triton``: the Triton kernels for every tensor (CPU tensors need ``TRITON_INTERPRET=1``).
- ``native``: the native library's kernels (an error if it is not built).
- ``torch``: plain PyTorch everywhere.

The native library implements kernels, not ops: :func:`define_native_kernel` declares
``fastmae_kernels::NAME`` with the schema of ``fastmae::NAME`` (so each schema is written once, by the
op's type hints) and the library registers its CPU/CUDA implementations under that name. Those kernels
have no autograd of their own: the ``fastmae::`` op's autograd calls the ``fastmae::`` backward op,
whose body picks its kernel the same way. An op without a native twin (``has_native=False``) runs Triton
on CUDA and PyTorch on CPU when the native backend is asked for.

Also here, as they depend on the same per-call environment: debug mode (``FASTMAE_DEBUG``: poisoned outputs,
host-side id checks) and :func:`check_ids_values`, the functional APIs' one rule for id values.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import torch

from fastmae import _native
from fastmae._validation import assert_id_values, check_id_values

Backend = Literal["triton", "native", "torch"]
BACKEND_CHOICES = ("auto", "triton", "native", "torch")
ENV_VAR = "FASTMAE_BACKEND"


def requested_backend() -> str:
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in BACKEND_CHOICES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(BACKEND_CHOICES)}, got {choice!r}")
    return choice


def select_backend(device: torch.device, *, has_native: bool = True) -> Backend:
    """The backend an op runs on for tensors on ``device`` (``has_native``: the op has a native twin)."""
    choice = requested_backend()
    if choice == "native" and not has_native:
        choice = "auto"
    if choice != "auto":
        if choice == "native":
            _native.require()
        return choice  # type: ignore[return-value]
    if device.type == "cuda":
        return "triton"
    if not has_native:
        return "torch"
    return "native" if _native.available() else "torch"


def kernel_for(tensor: torch.Tensor, *, has_native: bool = True) -> Backend:
    """Inside a ``fastmae::`` op body: the kernel to run for ``tensor``, :func:`select_backend` for its device.

    One exception: fake tensors while the Triton kernels are interpreted (TRITON_INTERPRET=1) take the
    PyTorch branch. ``wrap_triton`` then holds a bare interpreted kernel that cannot run on the fake tensors
    of ``torch.compile`` or ``opcheck``; the PyTorch branch gives the same shapes, dtypes and strides.
    ``torch.compile`` inlines a ``triton_op``'s body, so a graph compiled on CPU under the interpreter holds
    the PyTorch branch; eager calls still run the kernels. Compiled kernels (a GPU) are traced into the graph
    as usual, and native kernels enter the graph as ``fastmae_kernels`` ops (their fake is the PyTorch branch).
    """
    backend = select_backend(tensor.device, has_native=has_native)
    if backend != "triton":
        return backend
    from torch._subclasses.fake_tensor import is_fake

    if not is_fake(tensor):
        return backend
    import triton.knobs  # only reached from the Triton branch's callers, which import triton anyway

    return "torch" if triton.knobs.runtime.interpret else backend


def native_or_torch(tensor: torch.Tensor, name: str, torch_branch: Callable[..., Any]) -> Callable[..., Any] | None:
    """Inside the body of ``fastmae::NAME``: the kernel that runs instead of the Triton launch for ``tensor``
    (:func:`kernel_for`), the native library's ``fastmae_kernels::NAME`` or the op's PyTorch branch (called
    with the op's arguments either way); None when the Triton kernels run."""
    kernel = kernel_for(tensor)
    if kernel == "triton":
        return None
    return getattr(torch.ops.fastmae_kernels, name) if kernel == "native" else torch_branch


def define_native_kernel(op: torch._ops.OpOverloadPacket, fake: Callable[..., object]) -> None:
    """Declare ``fastmae_kernels::NAME`` with the schema of ``op`` (``fastmae::NAME``); ``fake`` (the op's
    PyTorch branch, same arguments) gives its shapes under tracing. The native library, once loaded,
    provides the CPU (and CUDA) implementations; nothing here loads it."""
    schema = op.default._schema
    qualname = f"{_native.NAMESPACE}::{schema.name.split('::', 1)[1]}"
    torch.library.define(qualname, str(schema)[len(schema.name) :])
    torch.library.register_fake(qualname, fake)


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


def check_ids_values(ids: torch.Tensor, num_patches: int, name: str, *, validate: bool) -> None:
    """The one rule for patch-id values at an op's functional API (every id in [0, L), none repeated in a row).

    ``validate`` is False for ids fastmae's own masking made (valid by construction: the model's training
    step passes them); those skip the device-side check. Ids a caller passes get :func:`assert_id_values`
    (device-side assertions, no host sync). Debug mode, in eager code, checks every call on the host instead
    (:func:`check_id_values`: a ValueError naming the offending index).
    """
    if debug_value_checks():
        check_id_values(ids, num_patches, name)
    elif validate:
        assert_id_values(ids, num_patches, name)
