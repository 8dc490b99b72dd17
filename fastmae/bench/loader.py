"""Loader throughput: images/s of one loader configuration (backend, device, threads) over whole epochs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from fastmae.bench.timing import synchronize
from fastmae.data import build_loader


def measure(
    data_path: str | Path, backend: str, device: torch.device, threads: int, *, batch_size: int, input_size: int,
    epochs: int, dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """One ``bench`` = "loader" row: images/s over ``epochs`` timed epochs after one warm-up epoch.

    The warm-up epoch absorbs worker start, pipeline build and the page cache; the timed epochs
    include moving the batches to ``device`` (synchronised at the end of each epoch).
    """
    loader = build_loader(data_path, batch_size, input_size, backend=backend, device=device, num_threads=threads,
                          dtype=dtype)
    for _ in loader:  # warm-up epoch
        pass
    images = 0
    start = time.perf_counter()
    for epoch in range(1, 1 + epochs):
        loader.set_epoch(epoch)
        for batch, _ in loader:
            images += batch.shape[0]
        synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "bench": "loader", "backend": backend,
        "decode": "gpu (mixed)" if backend == "dali" and device.type == "cuda" else "cpu",
        "threads": threads, "batch_size": batch_size, "input_size": input_size,
        "dtype": str(dtype).replace("torch.", ""), "epochs": epochs, "images": images, "seconds": seconds,
        "images_per_s": images / seconds,
    }
