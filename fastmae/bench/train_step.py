"""Train-step benchmark: img/s, peak memory and MFU per provider, measured in one run.

Providers are measured in turn with the others freed (so each peak memory is its own), and the
order alternates across repetitions. img/s is the batch over the median step time of all timed
steps; MFU uses one analytic FLOP count (fastmae.bench.flops) over a matrix-product peak measured
in the same run.
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
from fastmae.bench.providers import PROVIDERS, REFERENCE_PROVIDERS, build_step
from fastmae.bench.timing import matmul_peak_tflops, median, peak_memory_bytes, reset_peak_memory, time_calls
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


def measure_provider(
    provider: str, model_name: str, imgs: torch.Tensor, *, warmup: int, iters: int, compile_model: bool
) -> dict[str, Any]:
    device = imgs.device
    reset_peak_memory(device)
    built = build_step(provider, model_name, device, compile_model=compile_model)
    times = time_calls(partial(built.step, imgs), device, warmup=warmup, iters=iters)
    result = {"times": times, "peak_mem_bytes": peak_memory_bytes(device), "precision": built.precision,
              "compiled": built.compiled}
    del built
    _free(device)
    return result


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
    """One row per (model, provider) with img_per_s, peak_mem_bytes and mfu."""
    compile_model = device.type == "cuda" if compile_model is None else compile_model
    peak_tflops, peak_dtype = matmul_peak_tflops(device)
    rows = []
    for model_name in model_names:
        imgs = _fixed_batch(model_name, batch, device, seed)
        flops = mae_train_flops_per_image(model_name)
        collected: dict[str, dict[str, Any]] = {}
        for rep in range(repeats):
            order = list(providers) if rep % 2 == 0 else list(reversed(providers))
            for provider in order:
                result = measure_provider(provider, model_name, imgs, warmup=warmup, iters=iters,
                                          compile_model=compile_model)
                entry = collected.setdefault(provider, {
                    "times": [], "peaks": [], "precision": result["precision"], "compiled": result["compiled"]})
                entry["times"] += result["times"]
                entry["peaks"].append(result["peak_mem_bytes"])
        for provider in providers:
            entry = collected[provider]
            step_s = median(entry["times"])
            img_per_s = batch / step_s
            peaks = [p for p in entry["peaks"] if p is not None]
            rows.append({
                "bench": "train_step", "model": model_name, "provider": provider, "batch": batch,
                "step_ms": step_s * 1e3, "img_per_s": img_per_s,
                "peak_mem_bytes": max(peaks) if peaks else None,
                "flops_per_image": flops, "achieved_tflops": img_per_s * flops / 1e12,
                "peak_tflops": peak_tflops, "peak_dtype": peak_dtype,
                "mfu": img_per_s * flops / (peak_tflops * 1e12),
                "precision": entry["precision"], "compiled": entry["compiled"],
                "timed_steps": len(entry["times"]), "repeats": repeats,
            })
        del imgs
        _free(device)
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """fastmae's speed and memory relative to each reference provider, per model."""
    by_key = {(r["model"], r["provider"]): r for r in rows}
    for row in rows:
        for ref in REFERENCE_PROVIDERS:
            other = by_key.get((row["model"], ref))
            if other is None:
                continue
            row[f"speedup_vs_{ref}"] = row["img_per_s"] / other["img_per_s"]
            if row["peak_mem_bytes"] and other["peak_mem_bytes"]:
                row[f"mem_ratio_vs_{ref}"] = row["peak_mem_bytes"] / other["peak_mem_bytes"]


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
