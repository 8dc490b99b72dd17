"""The paths an op can run on a device, how each one is forced, and what actually ran.

Paths, in the order rows are written:

- ``triton``, ``native``, ``torch``: fastmae's op on each of its kernels (the backends of
  ``fastmae.ops._backend``), forced with ``FASTMAE_BACKEND`` for the duration of a call;
- ``reference`` and ``compiled``: the reference computation, eager and under ``torch.compile``;
- ``copy_``: ``dst.copy_(src)`` of the bytes the op must move, the bandwidth ceiling GB/s is read against.

A path that does not exist on the device still gets a row, with the reason and no timing. On CPU the Triton
kernels run only under the interpreter (``TRITON_INTERPRET=1``): a correctness path, far from a kernel's
speed, so it is never timed there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from fastmae import _native
from fastmae.ops import _backend

KERNEL_PATHS = ("triton", "native", "torch")  # fastmae's op, one path per kernel choice
PATH_NAMES = (*KERNEL_PATHS, "reference", "compiled", "copy_")
TRITON_ON_CPU = "Triton runs on CPU only in its interpreter, a correctness path: not timed"
UNOBSERVED = "unobserved (the profiler recorded no GPU activity)"
# what each path's observed kernel label (observed_kernel) starts with
EXPECTED_KERNEL = {"triton": "triton", "native": "native", "torch": "aten", "reference": "aten",
                   "compiled": "inductor", "copy_": "aten"}


@dataclass(frozen=True)
class OpPath:
    """One way to run an op: ``backend`` is the FASTMAE_BACKEND it forces (kernel paths only); ``reason`` says
    why it is not timed on this device (None: it is)."""

    name: str
    backend: str | None = None
    reason: str | None = None


def _native_reason(device: torch.device, has_native: bool) -> str | None:
    if not has_native:
        return "the op has no native kernel"
    if not _native.available():
        return f"native library not available ({_native.load_error() or 'not built'})"
    if device.type == "cuda" and not _native.has_cuda_kernels():
        return "native library built without its CUDA kernels"
    return None


def op_paths(device: torch.device, *, has_native: bool, compile_reference: bool = True) -> list[OpPath]:
    """Every path of :data:`PATH_NAMES` for an op on ``device``; those that cannot be timed carry a reason."""
    return [
        OpPath("triton", "triton", None if device.type == "cuda" else TRITON_ON_CPU),
        OpPath("native", "native", _native_reason(device, has_native)),
        OpPath("torch", "torch"),
        OpPath("reference"),
        OpPath("compiled", reason=None if compile_reference else "torch.compile of the reference not asked for"),
        OpPath("copy_"),
    ]


@contextlib.contextmanager
def forced_backend(choice: str | None) -> Iterator[None]:
    """Set FASTMAE_BACKEND for the duration (None: leave it as it is)."""
    previous = os.environ.get(_backend.ENV_VAR)
    if choice is not None:
        os.environ[_backend.ENV_VAR] = choice
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_backend.ENV_VAR, None)
        else:
            os.environ[_backend.ENV_VAR] = previous


def default_kernel(device: torch.device, *, has_native: bool) -> str:
    """The kernel fastmae's op picks on ``device`` with FASTMAE_BACKEND=auto (what a user gets)."""
    with forced_backend("auto"):
        return _backend.select_backend(device, has_native=has_native)


def with_backend(fn: Callable[[], object], backend: str | None) -> Callable[[], object]:
    """``fn`` run with FASTMAE_BACKEND forced to ``backend`` on each call (None: unchanged)."""
    if backend is None:
        return fn

    def forced() -> object:
        with forced_backend(backend):
            return fn()

    return forced


def _is_triton_kernel(name: str) -> bool:
    # aten's CUDA kernels are C++ symbols ("void at::native::...") and copies are "Memcpy ..."; Triton kernels
    # carry their Python function's bare name
    return "::" not in name and not name.startswith(("void ", "Memcpy", "Memset"))


def observed_kernel(fn: Callable[[], object], device: torch.device) -> str:
    """What one call of ``fn`` ran, read from the profiler: ``native: <fastmae_kernels ops>``, ``triton: <GPU
    kernels>``, ``inductor`` (a compiled graph), ``aten`` (plain PyTorch ops), or :data:`UNOBSERVED` on a GPU
    whose activity the profiler could not record."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from fastmae.bench.timing import synchronize

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    events = prof.events()
    host = {e.name for e in events if e.device_type == DeviceType.CPU}
    prefix = f"{_native.NAMESPACE}::"
    native = sorted({name[len(prefix):] for name in host if name.startswith(prefix)})
    if native:
        return "native: " + ", ".join(native)
    if any("CompiledFxGraph" in name or name.startswith("Torch-Compiled Region") for name in host):
        return "inductor"
    gpu_events = [e.name for e in events if e.device_type == DeviceType.CUDA]
    if device.type == "cuda" and not gpu_events:
        return UNOBSERVED  # the profiler recorded no GPU activity (no CUPTI): nothing to tell kernels apart by
    gpu = sorted({name for name in gpu_events if _is_triton_kernel(name)})
    if gpu:
        return "triton: " + ", ".join(gpu)
    return "aten"


def check_kernel(path: OpPath, kernel: str) -> str | None:
    """None when ``kernel`` (from :func:`observed_kernel`) is what ``path`` should run (or could not be observed),
    else what went wrong."""
    expected = EXPECTED_KERNEL[path.name]
    if kernel.startswith(expected) or kernel == UNOBSERVED:
        return None
    return f"asked for the {path.name} path, which runs {expected}, but {kernel} ran"
