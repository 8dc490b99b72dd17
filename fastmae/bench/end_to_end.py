"""End-to-end benchmark: JPEG files -> loader -> train step, with the time split into data wait
and compute, so a row says whether the run is data-bound.

Each configuration pairs a train-step provider with a loader backend (fastmae with DALI when it
is installed and with the torch loader; reference-modern with the torch (PIL) loader, as its users
run it). The device is synchronised after every step: this is a measurement, not the trainer.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fastmae.bench.providers import build_step
from fastmae.bench.timing import synchronize
from fastmae.data import build_loader, make_dataset
from fastmae.models.configs import full_model_config

DATA_BOUND_SHARE = 0.10  # more than 10% of the wall time waiting for data: the loader is the bottleneck


def default_configs() -> list[tuple[str, str]]:
    configs = [("fastmae", "torch"), ("reference-modern", "torch")]
    if importlib.util.find_spec("nvidia.dali") is not None:
        configs.insert(0, ("fastmae", "dali"))
    return configs


def ensure_dataset(root: Path, num_images: int, image_size: tuple[int, int], workers: int) -> Path:
    """The embedded dataset under ``root`` (made once, reused while the image count matches)."""
    train = root / "train"
    if not train.is_dir() or sum(1 for _ in train.rglob("*.JPEG")) != num_images:
        make_dataset(root, num_images, seed=0, image_size=image_size, workers=workers)
    return root


def measure(
    provider: str, loader_backend: str, model_name: str, data_path: Path, batch: int, device: torch.device, *,
    steps: int, warmup: int, num_workers: int, compile_model: bool,
) -> dict[str, Any]:
    cfg = full_model_config(model_name)
    loader = build_loader(data_path, batch, input_size=cfg["img_size"], backend=loader_backend, device=device,
                          num_workers=num_workers, seed=0)
    step = build_step(provider, model_name, device, compile_model=compile_model).step
    if len(loader) < warmup + steps:
        raise ValueError(f"the dataset gives {len(loader)} batches of {batch}; need warmup + steps = "
                         f"{warmup + steps}: make more images or a smaller batch")
    wait = compute = 0.0
    done = 0
    iterator = iter(loader)
    begin = time.perf_counter()
    for index in range(warmup + steps):
        if index == warmup:
            wait = compute = 0.0
            begin = time.perf_counter()
        t0 = time.perf_counter()
        imgs, _ = next(iterator)
        synchronize(device)
        t1 = time.perf_counter()
        step(imgs)
        synchronize(device)
        t2 = time.perf_counter()
        wait += t1 - t0
        compute += t2 - t1
        done = index + 1 - warmup
    total = time.perf_counter() - begin
    share = wait / total
    return {
        "bench": "end_to_end", "model": model_name, "provider": provider, "loader": loader_backend,
        "batch": batch, "steps": done, "num_workers": num_workers, "img_per_s": done * batch / total,
        "data_wait_share": share, "compute_img_per_s": done * batch / compute, "data_bound": share > DATA_BOUND_SHARE,
    }


def run(
    model_name: str, data_path: Path, batch: int, device: torch.device, *, configs: Sequence[tuple[str, str]],
    steps: int, warmup: int, num_workers: int, compile_model: bool,
) -> list[dict[str, Any]]:
    rows = [measure(p, b, model_name, data_path, batch, device, steps=steps, warmup=warmup,
                    num_workers=num_workers, compile_model=compile_model) for p, b in configs]
    reference = next((r for r in rows if r["provider"] == "reference-modern"), None)
    if reference is not None:
        for row in rows:
            row["speedup_vs_reference-modern"] = row["img_per_s"] / reference["img_per_s"]
    return rows
