"""The op benchmark: each op at each shape on every path of the device (:mod:`fastmae.bench.op_paths`), its
GB/s read against a ``copy_`` of the same bytes timed in the same run.

Batch: a shape's preset batch (:mod:`fastmae.bench.op_cases`) is the most a run uses; :func:`probe_batch`
lowers it to what the device runs within a time budget per call (the eager reference's forward+backward,
the slowest path) and a share of its free memory. A forced size skips the probe.

Timing: CUDA: ``triton.testing.do_bench`` per path (L2 flushed between calls, its own repetitions). CPU: the
paths of one op, shape and pass take turns in rounds (:func:`fastmae.bench.timing.interleaved_times`, the
process CPU time with one torch thread); a row has the median and quartiles of its time per call and of its
ratio to the eager reference taken round by round.

Every row names the path, the FASTMAE_BACKEND it forced, the kernel the profiler saw run (a path that ran
another kernel than asked is an error row, not a timing), whether it is the kernel fastmae picks by default,
the dtype, the torch threads and the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastmae.bench.op_cases import BUILDERS, PASSES, Case, Implementation, Size, pass_fn
from fastmae.bench.op_paths import (
    KERNEL_PATHS,
    OpPath,
    check_kernel,
    default_kernel,
    observed_kernel,
    op_paths,
    with_backend,
)
from fastmae.bench.timing import (
    Spread,
    available_memory_bytes,
    clock_name,
    interleaved_times,
    median,
    op_median_ms,
    paired_ratios,
    peak_memory_above_baseline,
    time_calls,
)

BASELINE = "reference"  # ratios are each path's time over the eager reference's
MEMORY_FACTOR = 4  # held bytes per image: a generous multiple of the bytes moved (the reference's intermediates)


@dataclass(frozen=True)
class Budget:
    """What the probe may spend: seconds per call of the slowest path (None: no limit) and a share of the
    free memory."""

    call_s: float | None
    memory_share: float


DEFAULT_BUDGETS = {"cuda": Budget(None, 0.5), "cpu": Budget(0.05, 0.25)}


@dataclass(frozen=True)
class Timing:
    """How the paths are timed (CPU rounds; CUDA uses do_bench's own repetitions)."""

    rounds: int = 15
    warmup: int = 2
    block_s: float = 0.02


def probe_batch(op: str, size: Size, device: torch.device, dtype: torch.dtype, budget: Budget) -> dict[str, Any]:
    """The batch ``op`` runs at for ``size``: its preset batch, lowered to fit ``budget``.

    Times the eager reference's forward+backward at a small batch, then once more at the batch that estimate
    allows (per-call overhead makes a small batch look slower per image); memory per image is
    MEMORY_FACTOR times the bytes moved. Returns the batch and what the probe measured.
    """
    batch = min(size.batch, 4)
    per_image_s = per_image_bytes = 0.0
    for _ in range(2):
        case = BUILDERS[op](size.with_batch(batch), device, dtype)
        fn = pass_fn(case.reference, "fwd+bwd")
        per_image_s = median(time_calls(fn, device, warmup=1, iters=3)) / batch
        per_image_bytes = MEMORY_FACTOR * case.bytes_moved("fwd+bwd") / batch
        del case, fn
        limits = [size.batch, int(budget.memory_share * available_memory_bytes(device) // per_image_bytes)]
        if budget.call_s is not None:
            limits.append(int(budget.call_s // per_image_s))
        estimate = max(1, min(limits))
        if estimate == batch:
            break
        batch = estimate
    return {"batch": batch, "batch_source": "probe", "probe_ms_per_image": per_image_s * 1e3,
            "probe_bytes_per_image": int(per_image_bytes)}


def _path_fn(path: OpPath, case: Case, compiled: Implementation | None, pass_name: str,
             device: torch.device) -> Callable[[], object]:
    if path.name == "copy_":
        src = torch.randint(0, 255, (case.bytes_moved(pass_name) // 2,), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)
    impl = {"reference": case.reference, "compiled": compiled}.get(path.name, case.fastmae)
    assert impl is not None
    return with_backend(pass_fn(impl, pass_name), path.backend)


def _time_paths(fns: dict[str, Callable[[], object]], device: torch.device, timing: Timing
                ) -> tuple[dict[str, Spread], dict[str, Spread | None], str]:
    """Time per call (seconds) and ratio to BASELINE of each path, and the clock used."""
    if device.type == "cuda":
        ms = {name: op_median_ms(fn, device) for name, fn in fns.items()}
        times = {name: Spread.of([value / 1e3]) for name, value in ms.items()}
        base = ms.get(BASELINE)
        ratios = {name: Spread.of([value / base]) if base else None for name, value in ms.items()}
        return times, ratios, "do_bench"
    rounds = interleaved_times(fns, device, rounds=timing.rounds, warmup=timing.warmup, block_s=timing.block_s)
    times = {name: Spread.of(values) for name, values in rounds.items()}
    paired = paired_ratios(rounds, BASELINE) if BASELINE in rounds else {}
    return times, {name: paired.get(name) for name in rounds}, clock_name(device)


def run_case(op: str, size: Size, device: torch.device, dtype: torch.dtype, *, compile_reference: bool,
             timing: Timing, sizing: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for one op at one shape: one per path x pass (untimed paths included, with their reason)."""
    torch.manual_seed(0)
    case = BUILDERS[op](size, device, dtype)
    ref = case.reference
    compiled = Implementation(torch.compile(ref.fn), ref.args, ref.grad_args) if compile_reference else None
    paths = op_paths(device, has_native=case.has_native, compile_reference=compile_reference)
    picked = default_kernel(device, has_native=case.has_native)
    rows = []
    for pass_name in PASSES:
        moved = case.bytes_moved(pass_name)
        base = {"bench": "ops", "op": op, "size": size.name, "pass": pass_name,
                "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
                "batch": size.batch, "num_patches": size.num_patches, "num_keep": size.num_keep,
                "patch_size": size.patch, "decoder_dim": size.decoder_dim, "embed_dim": size.embed_dim,
                "bytes": moved, **sizing}  # fmt: skip
        fns: dict[str, Callable[[], object]] = {}
        status: dict[str, str] = {}
        kernels: dict[str, str] = {}
        for path in paths:
            if path.reason is not None:
                status[path.name] = f"skipped: {path.reason}"
                continue
            fn = _path_fn(path, case, compiled, pass_name, device)
            fn()  # compiles happen here, not under the profiler
            kernels[path.name] = observed_kernel(fn, device)
            problem = check_kernel(path, kernels[path.name])
            status[path.name] = f"error: {problem}" if problem else "ok"
            if problem is None:
                fns[path.name] = fn
        times, ratios, clock = _time_paths(fns, device, timing)
        ceiling = moved / times["copy_"].median / 1e9 if "copy_" in times else None
        for path in paths:
            row: dict[str, Any] = {
                **base, "provider": path.name, "backend": path.backend, "kernel": kernels.get(path.name),
                "default": path.name == picked if path.name in KERNEL_PATHS else None,
                "status": status[path.name], "clock": clock if path.name in times else None,
                "median_ms": None, "q1_ms": None, "q3_ms": None, "gbps": None,
                "ceiling": "copy_", "ceiling_gbps": ceiling, "frac_of_ceiling": None,
                "ratio_vs_reference": None, "ratio_q1": None, "ratio_q3": None, "peak_mem_bytes": None,
            }  # fmt: skip
            spread = times.get(path.name)
            if spread is not None:
                gbps = moved / spread.median / 1e9
                row.update(median_ms=spread.median * 1e3, gbps=gbps,
                           frac_of_ceiling=gbps / ceiling if ceiling else None,
                           peak_mem_bytes=peak_memory_above_baseline(fns[path.name], device))
                ratio = ratios.get(path.name)
                if ratio is not None:
                    row["ratio_vs_reference"] = ratio.median
                if clock != "do_bench":  # do_bench reports a median only: no quartiles to give
                    row.update(q1_ms=spread.q1 * 1e3, q3_ms=spread.q3 * 1e3)
                    if ratio is not None:
                        row.update(ratio_q1=ratio.q1, ratio_q3=ratio.q3)
            rows.append(row)
    return rows
