"""Timing, ceilings and memory measurement on CPU and CUDA.

CUDA calls are timed with CUDA events (or ``triton.testing.do_bench`` for short ops). CPU calls are timed
with :func:`cpu_clock`: the process's CPU time when torch runs one thread, so other processes on a shared
machine do not inflate the figures (they still share caches and memory bandwidth); wall time otherwise,
since the CPU time of several threads is not elapsed time. Contenders that are compared take turns
(:func:`interleaved_times`), and their ratio is taken round by round (:func:`paired_ratios`), so a load
change hits both sides of a ratio alike and the spread of the ratios shows how much it moved.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch


def pick_device(name: str | None = None) -> torch.device:
    """The device named (e.g. a ``--device`` option), else cuda when available, else cpu."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Clock:
    """What a CPU timing reads: its name goes into every row timed with it."""

    name: str
    read: Callable[[], float]


def cpu_clock() -> Clock:
    """Process CPU time with one torch thread (it ignores time spent waiting for a shared core); wall time
    (``perf_counter``) with more threads."""
    if torch.get_num_threads() == 1:
        return Clock("process_time", time.process_time)
    return Clock("perf_counter", time.perf_counter)


def clock_name(device: torch.device) -> str:
    """The clock :func:`time_calls` and :func:`interleaved_times` use on ``device``."""
    return "cuda_event" if device.type == "cuda" else cpu_clock().name


def _time_block(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """Seconds for ``calls`` back-to-back calls of ``fn`` (CUDA: events around the block)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        synchronize(device)
        return start.elapsed_time(end) / 1e3
    read = cpu_clock().read
    begin = read()
    for _ in range(calls):
        fn()
    return read() - begin


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn`` for ``iters`` calls after ``warmup`` untimed ones.

    CUDA calls are timed with events around each call (the host may run ahead between them);
    CPU calls with :func:`cpu_clock`.
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
    return [_time_block(fn, device, 1) for _ in range(iters)]


def interleaved_times(
    fns: Mapping[str, Callable[[], object]], device: torch.device, *, rounds: int, warmup: int = 2,
    block_s: float = 0.02,
) -> dict[str, list[float]]:
    """Seconds per call of each contender, one value per round.

    After ``warmup`` untimed calls each (compiles happen there), every round times each contender once, in an
    order rotated by one each round; a contender's turn is as many calls as fill about ``block_s`` (counted
    once, from one timed call; one call when ``block_s`` is 0), so short ops are not timed at the clock's
    resolution.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    synchronize(device)
    calls = {name: 1 if block_s <= 0 else max(1, min(10_000, math.ceil(
        block_s / max(_time_block(fns[name], device, 1), 1e-9)))) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_time_block(fns[name], device, calls[name]) / calls[name])
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass(frozen=True)
class Spread:
    """Median and quartiles of a sample (all three equal for a single value)."""

    median: float
    q1: float
    q3: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if len(values) < 2:
            return cls(values[0], values[0], values[0])
        q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(q2, q1, q3)


def paired_ratios(times: Mapping[str, Sequence[float]], baseline: str) -> dict[str, Spread]:
    """Each contender's time over ``baseline``'s, round by round (the rounds of :func:`interleaved_times`)."""
    base = times[baseline]
    return {name: Spread.of([t / b for t, b in zip(values, base)]) for name, values in times.items()}


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


def available_memory_bytes(device: torch.device) -> int:
    """Memory free for a benchmark's tensors now: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


# (M, K, N) of the products a ceiling tries: squares, and a ViT-B MLP product (tokens x 768 @ 768 x 3072)
CEILING_SHAPES = {"cuda": ((8192, 8192, 8192), (16384, 1024, 4096)),
                  "cpu": ((512, 512, 512), (1024, 1024, 1024), (400, 768, 3072))}


@dataclass(frozen=True)
class MatmulCeiling:
    """The best matrix-product throughput measured in one dtype: the MFU denominator of providers computing
    their products in that dtype."""

    tflops: float
    dtype: str
    shape: str  # "MxKxN" of the best product
    clock: str


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> MatmulCeiling:
    """Time ``a @ b`` in ``dtype`` at each of the device's :data:`CEILING_SHAPES`; the best rate wins."""
    best: tuple[float, str] = (0.0, "")
    iters = 20 if device.type == "cuda" else 5
    for m, k, n in CEILING_SHAPES["cuda" if device.type == "cuda" else "cpu"]:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        seconds = median(time_calls(partial(torch.matmul, a, b), device, warmup=2, iters=iters))
        best = max(best, (2 * m * k * n / seconds / 1e12, f"{m}x{k}x{n}"))
    return MatmulCeiling(best[0], str(dtype).replace("torch.", ""), best[1], clock_name(device))
