"""Timing and memory measurement on CPU and CUDA."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def pick_device(name: str | None = None) -> torch.device:
    """The device named (e.g. a ``--device`` option), else cuda when available, else cpu."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn`` for ``iters`` calls after ``warmup`` untimed ones.

    CUDA calls are timed with events around each call (the host may run ahead between them);
    CPU calls with ``time.perf_counter``.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for start, end in zip(starts, ends):
            start.record()
            fn()
            end.record()
        synchronize(device)
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    times = []
    for _ in range(iters):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def op_median_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, iters: int = 10) -> float:
    """Median milliseconds per call of a short op.

    CUDA: ``triton.testing.do_bench`` (it flushes the L2 cache between calls and picks its own
    warm-up and repetitions); without triton, and on CPU, the median of ``time_calls``.
    """
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            pass
        else:
            return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    return median(time_calls(fn, device, warmup=warmup, iters=iters)) * 1e3


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak bytes allocated since the last reset (CUDA); None where torch does not track it."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def peak_memory_above_baseline(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes one call of ``fn`` allocates above what was allocated before it (CUDA); None elsewhere."""
    if device.type != "cuda":
        return None
    reset_peak_memory(device)
    baseline = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device)) - baseline


def matmul_peak_tflops(device: torch.device, *, size: int | None = None) -> tuple[float, str]:
    """Measured matrix-product throughput: bf16 on CUDA (the MFU denominator), fp32 on CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = size or (8192 if device.type == "cuda" else 512)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median(time_calls(lambda: a @ b, device, warmup=3, iters=20 if device.type == "cuda" else 5))
    return 2 * n**3 / seconds / 1e12, str(dtype).replace("torch.", "")
