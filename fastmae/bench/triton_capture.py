"""Triton launches without a GPU: record what the launchers pass, and a stub driver for a GPU target.

:func:`capture_launches` replaces the two ways a launch starts, ``kernel[grid](...)`` (``JITFunction.run``)
and ``wrap_triton(kernel)[grid](...)`` (inside a ``triton_op`` body: the call of torch's
``TraceableTritonKernelWrapper``), by a recorder, so the op launchers run unchanged on meta tensors and every
launch is kept as a :class:`Launch` (kernel, arguments as the launcher passed them, grid) instead of running.
:meth:`Launch.compile_source` then specialises it with Triton's own binder for a target, exactly as a
launch on that GPU would (16-byte-aligned pointers and ints divisible by 16 get divisibility 16, ints equal
to 1 become constants), and gives the ``ASTSource`` + options that ``triton.compile`` takes.

:func:`gpu_target_driver` makes ``triton.runtime.driver.active`` answer ``get_current_target()`` with a CUDA
target, which is all torch's Triton mutation analysis (what decides the clones inductor puts around a
``wrap_triton`` call) needs from a driver. Nothing can be launched through it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


def gpu_target(arch: int) -> Any:
    """``GPUTarget("cuda", arch, 32)``: sm_80 is 80, sm_90 is 90."""
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", arch, 32)


@dataclass
class Launch:
    """One recorded launch: the kernel, its positional and keyword arguments, and its grid."""

    kernel: Any  # triton.runtime.jit.JITFunction
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    grid: tuple[int, ...]
    label: str = ""  # the workload that made it (set by the caller)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def programs(self) -> int:
        return math.prod(self.grid)

    def bound(self) -> dict[str, Any]:
        """Every kernel parameter by name, defaults filled in (what the kernel body sees)."""
        bound = self.kernel.signature.bind(*self.args, **{k: v for k, v in self.kwargs.items()
                                                        if k in self.kernel.signature.parameters})
        bound.apply_defaults()
        return dict(bound.arguments)

    def compile_source(self, arch: int) -> tuple[Any, Any, dict[str, Any]]:
        """(ASTSource, target, options dict) for ``triton.compile``, specialised by Triton's binder."""
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature

        target = gpu_target(arch)
        backend = make_backend(target)
        kernel = self.kernel
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        kwargs = dict(self.kwargs)
        kwargs.setdefault("debug", False)
        bound_args, specialization, options = binder(*self.args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization,
                                                                  options)
        return ASTSource(kernel, signature, constexprs, attrs), target, options.__dict__


def _as_grid(grid: Any) -> tuple[int, ...]:
    if callable(grid):
        raise TypeError("a recorded launch needs a static grid (the fastmae launchers pass tuples)")
    return tuple(int(g) for g in grid)


@contextlib.contextmanager
def capture_launches() -> Iterator[list[Launch]]:
    """Record every Triton launch made inside the block instead of running it (nothing reaches a GPU)."""
    from torch._higher_order_ops.triton_kernel_wrap import TraceableTritonKernelWrapper
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []
    originals = JITFunction.run, TraceableTritonKernelWrapper.__call__

    def record_run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        launches.append(Launch(self, args, kwargs, _as_grid(grid)))

    def record_wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        launches.append(Launch(self.kernel, args, kwargs, _as_grid(self.grid)))

    JITFunction.run = record_run  # type: ignore[method-assign]
    TraceableTritonKernelWrapper.__call__ = record_wrapped  # type: ignore[method-assign]
    try:
        yield launches
    finally:
        JITFunction.run, TraceableTritonKernelWrapper.__call__ = originals  # type: ignore[method-assign]


class _TargetOnlyDriver:
    """A driver that knows its target and nothing else: enough for analysis, never for a launch."""

    def __init__(self, arch: int) -> None:
        self._target = gpu_target(arch)

    def get_current_target(self) -> Any:
        return self._target

    def get_current_device(self) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cuda", 0)

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no GPU here: the stub Triton driver cannot {name}")


@contextlib.contextmanager
def gpu_target_driver(arch: int = 90) -> Iterator[None]:
    """Make Triton's active driver report a CUDA target (sm_``arch``) for the duration of the block."""
    from triton.runtime import driver

    previous = driver._active  # reset_active() would build the default driver, which fails without a GPU
    driver.set_active(_TargetOnlyDriver(arch))
    try:
        yield
    finally:
        driver._active = previous
