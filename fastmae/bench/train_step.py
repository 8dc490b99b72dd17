"""Train-step benchmark: img/s, peak memory and MFU per provider, measured in one run.

On CUDA providers are measured in turn with the others freed (so each peak memory is its own), and
the order alternates across repetitions; on CPU they step in turn within each round (process CPU
time with one torch thread) and speedups are taken round by round. img/s is the batch over the
median step time; MFU uses one analytic FLOP count (fastmae.bench.flops) over a matrix-product
ceiling measured in the same run in the dtype the provider's products run in (bf16 for bf16
autocast, fp32 without autocast).
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from fastmae.bench.flops import mae_train_flops_per_image
from fastmae.bench.providers import (
    AUTOCAST_DTYPES,
    PROVIDERS,
    REFERENCE_PROVIDERS,
    BuiltStep,
    build_step,
    provider_precision,
)
from fastmae.bench.timing import (
    Spread,
    clock_name,
    interleaved_times,
    matmul_ceiling,
    median,
    paired_ratios,
    peak_memory_bytes,
    reset_peak_memory,
    time_calls,
)
from fastmae.models.configs import full_model_config


@dataclass(frozen=True)
class StepBenchDefaults:
    """What a train-step benchmark runs on a kind of device when its flags leave it open."""

    models: tuple[str, ...]
    batch: int
    warmup: int
    iters: int


# `fastmae bench` (one model: the first) and benchmarks/bench_train_step.py (all of them) share these
STEP_BENCH_DEFAULTS: dict[str, StepBenchDefaults] = {
    "cuda": StepBenchDefaults(("mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"),
                              batch=128, warmup=5, iters=20),
    "cpu": StepBenchDefaults(("mae_vit_tiny", "mae_vit_test"), batch=4, warmup=1, iters=2),
}


def step_bench_defaults(device: torch.device) -> StepBenchDefaults:
    return STEP_BENCH_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]


def add_step_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both train-step CLIs take (--providers --warmup --iters --repeats --compile --device);
    None means the device's :data:`STEP_BENCH_DEFAULTS`."""
    gpu, cpu = STEP_BENCH_DEFAULTS["cuda"], STEP_BENCH_DEFAULTS["cpu"]
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed steps per provider (default {gpu.warmup} CUDA, {cpu.warmup} CPU)")
    parser.add_argument("--iters", type=int, default=None,
                        help=f"timed steps per provider (default {gpu.iters} CUDA, {cpu.iters} CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="repetitions, provider order alternating")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the compiled providers (default: on CUDA only)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")


def run_with_defaults(args: argparse.Namespace, models: Sequence[str], batch: int | None,
                      device: torch.device) -> list[dict[str, Any]]:
    """:func:`run` with the flags of :func:`add_step_bench_arguments`, filling what they leave open."""
    defaults = step_bench_defaults(device)
    return run(
        models, batch or defaults.batch, device, providers=args.providers,
        warmup=args.warmup if args.warmup is not None else defaults.warmup,
        iters=args.iters if args.iters is not None else defaults.iters,
        repeats=args.repeats, compile_model=args.compile,
    )


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fixed_batch(model_name: str, batch: int, device: torch.device, seed: int) -> torch.Tensor:
    cfg = full_model_config(model_name)
    size = cfg["img_size"]
    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg["in_chans"], height, width, generator=generator).to(device)


_LABELS = ("precision", "compiled", "attn", "op_kernel")  # what a row says ran, from the built step


def _labels(built: BuiltStep) -> dict[str, Any]:
    return {key: getattr(built, key) for key in _LABELS}


def measure_provider(
    provider: str, model_name: str, imgs: torch.Tensor, *, warmup: int, iters: int, compile_model: bool
) -> dict[str, Any]:
    """``provider`` alone: its step times and peak memory (the others freed, so the peak is its own)."""
    device = imgs.device
    reset_peak_memory(device)
    built = build_step(provider, model_name, device, compile_model=compile_model)
    times = time_calls(partial(built.step, imgs), device, warmup=warmup, iters=iters)
    result = {"times": times, "peak_mem_bytes": peak_memory_bytes(device), **_labels(built)}
    del built
    _free(device)
    return result


def _isolated(model_name: str, imgs: torch.Tensor, providers: Sequence[str], *, warmup: int, iters: int,
              repeats: int, compile_model: bool) -> dict[str, dict[str, Any]]:
    """Each provider measured alone (its own peak memory), provider order alternating across repeats."""
    collected: dict[str, dict[str, Any]] = {}
    for rep in range(repeats):
        order = list(providers) if rep % 2 == 0 else list(reversed(providers))
        for provider in order:
            result = measure_provider(provider, model_name, imgs, warmup=warmup, iters=iters,
                                      compile_model=compile_model)
            entry = collected.setdefault(provider, {
                "times": [], "peaks": [], **{key: result[key] for key in _LABELS}})
            entry["times"] += result["times"]
            entry["peaks"].append(result["peak_mem_bytes"])
    return collected


def _interleaved(model_name: str, imgs: torch.Tensor, providers: Sequence[str], *, warmup: int, rounds: int,
                 compile_model: bool) -> dict[str, dict[str, Any]]:
    """Every provider built at once and stepped in turn, one step each per round (order rotating), so the
    per-round ratios pair steps taken under the same load."""
    device = imgs.device
    built = {p: build_step(p, model_name, device, compile_model=compile_model) for p in providers}
    times = interleaved_times({p: partial(b.step, imgs) for p, b in built.items()}, device, rounds=rounds,
                              warmup=warmup, block_s=0.0)
    collected = {p: {"times": times[p], "peaks": [None], **_labels(b)} for p, b in built.items()}
    del built
    _free(device)
    return collected


def run(
    model_names: Sequence[str],
    batch: int,
    device: torch.device,
    *,
    providers: Sequence[str] = PROVIDERS,
    warmup: int = 3,
    iters: int = 10,
    repeats: int = 2,
    compile_model: bool | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (model, provider) with img_per_s, peak_mem_bytes and mfu.

    CUDA: each provider alone (:func:`_isolated`), so each peak memory is its own; CPU (no peak memory to
    isolate): all providers interleaved for ``iters * repeats`` rounds (:func:`_interleaved`), with speedups
    taken round by round (median and quartiles). MFU divides the analytic FLOP count by the matrix-product
    ceiling measured in this run in the dtype the provider's products run in.
    """
    compile_model = device.type == "cuda" if compile_model is None else compile_model
    ceilings = {}
    for provider in providers:
        dtype = AUTOCAST_DTYPES[provider_precision(provider, device)]
        if dtype not in ceilings:
            ceilings[dtype] = matmul_ceiling(device, dtype)
    interleaved = device.type != "cuda"
    rows = []
    for model_name in model_names:
        imgs = _fixed_batch(model_name, batch, device, seed)
        flops = mae_train_flops_per_image(model_name)
        if interleaved:
            collected = _interleaved(model_name, imgs, providers, warmup=warmup, rounds=iters * repeats,
                                     compile_model=compile_model)
        else:
            collected = _isolated(model_name, imgs, providers, warmup=warmup, iters=iters, repeats=repeats,
                                  compile_model=compile_model)
        model_rows = []
        for provider in providers:
            entry = collected[provider]
            step = Spread.of(entry["times"])
            img_per_s = batch / step.median
            peaks = [p for p in entry["peaks"] if p is not None]
            ceiling = ceilings[AUTOCAST_DTYPES[entry["precision"]]]
            model_rows.append({
                "bench": "train_step", "model": model_name, "provider": provider, "batch": batch,
                "step_ms": step.median * 1e3, "step_q1_ms": step.q1 * 1e3, "step_q3_ms": step.q3 * 1e3,
                "img_per_s": img_per_s, "peak_mem_bytes": max(peaks) if peaks else None,
                "flops_per_image": flops, "flops_source": "analytic", "achieved_tflops": img_per_s * flops / 1e12,
                "peak_tflops": ceiling.tflops, "peak_dtype": ceiling.dtype, "peak_shape": ceiling.shape,
                "mfu": img_per_s * flops / (ceiling.tflops * 1e12),
                **{key: entry[key] for key in _LABELS},
                "timed_steps": len(entry["times"]), "repeats": repeats,
                "timing": "interleaved" if interleaved else "isolated", "clock": clock_name(device),
                "threads": torch.get_num_threads(),
            })  # fmt: skip
        if interleaved:
            _add_paired_ratios(model_rows, collected)
        else:
            _add_ratios(model_rows)
        rows += model_rows
        del imgs
        _free(device)
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """fastmae's speed and memory relative to each reference provider, from medians (one model's rows)."""
    by_provider = {r["provider"]: r for r in rows}
    for row in rows:
        for ref in REFERENCE_PROVIDERS:
            other = by_provider.get(ref)
            if other is None:
                continue
            row[f"speedup_vs_{ref}"] = row["img_per_s"] / other["img_per_s"]
            if row["peak_mem_bytes"] and other["peak_mem_bytes"]:
                row[f"mem_ratio_vs_{ref}"] = row["peak_mem_bytes"] / other["peak_mem_bytes"]


def _add_paired_ratios(rows: list[dict[str, Any]], collected: dict[str, dict[str, Any]]) -> None:
    """Speedup over each reference provider round by round (its step time over this one's): median, quartiles."""
    times = {p: entry["times"] for p, entry in collected.items()}
    for row in rows:
        speedups = paired_ratios(times, row["provider"])
        for ref in REFERENCE_PROVIDERS:
            if ref in speedups:
                spread = speedups[ref]
                row.update({f"speedup_vs_{ref}": spread.median, f"speedup_vs_{ref}_q1": spread.q1,
                            f"speedup_vs_{ref}_q3": spread.q3})


def largest_batch(
    provider: str, model_name: str, device: torch.device, *, probe_batches: tuple[int, int] = (8, 16),
    compile_model: bool = True, headroom: float = 0.97,
) -> dict[str, Any]:
    """The largest batch ``provider`` fits: peaks at two batches, a linear fit, then one verifying step."""
    if device.type != "cuda":
        raise ValueError("largest_batch measures GPU memory: device must be a CUDA device")
    peaks = []
    for batch in probe_batches:
        imgs = _fixed_batch(model_name, batch, device, seed=0)
        result = measure_provider(provider, model_name, imgs, warmup=1, iters=2, compile_model=compile_model)
        peaks.append(result["peak_mem_bytes"])
        del imgs
        _free(device)
    (b1, b2), (m1, m2) = probe_batches, peaks
    per_image = (m2 - m1) / (b2 - b1)
    fixed = m1 - per_image * b1
    capacity = torch.cuda.get_device_properties(device).total_memory * headroom
    predicted = int((capacity - fixed) // per_image)
    verified = None
    try:
        imgs = _fixed_batch(model_name, predicted, device, seed=0)
        verified = measure_provider(provider, model_name, imgs, warmup=1, iters=3, compile_model=compile_model)
    except torch.OutOfMemoryError:
        pass
    finally:
        _free(device)
    return {
        "bench": "max_batch", "model": model_name, "provider": provider, "batch": predicted,
        "probe_batches": list(probe_batches), "probe_peaks": peaks, "bytes_per_image": per_image,
        "fits": verified is not None,
        "img_per_s": predicted / median(verified["times"]) if verified else None,
        "peak_mem_bytes": verified["peak_mem_bytes"] if verified else None,
    }
