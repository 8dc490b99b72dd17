"""Loader throughput: images/s per backend and thread count (and DALI GPU decode when a GPU is present).

    PYTHONPATH=. python benchmarks/bench_loader.py --num-images 512 --threads 1 2 --out bench_loader.json

Writes JSON (one record per configuration) and prints a markdown table. Without --data it first
writes the embedded synthetic dataset (ImageNet-like 350-500 px JPEGs by default) to a temp folder.
The first epoch of each configuration is a warm-up (worker start, pipeline build, page cache);
the timed epochs follow it and include moving the batches to the device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmae.data import build_loader, make_dataset


def measure(data: str, backend: str, device: str, threads: int, args: argparse.Namespace) -> dict:
    loader = build_loader(
        data,
        args.batch_size,
        args.input_size,
        backend=backend,
        device=device,
        num_threads=threads,
        dtype=torch.bfloat16 if args.bf16 else torch.float32,
    )
    for _ in loader:  # warm-up epoch
        pass
    images = 0
    start = time.perf_counter()
    for epoch in range(1, 1 + args.epochs):
        loader.set_epoch(epoch)
        for batch, _ in loader:
            images += batch.shape[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    decode = "gpu (mixed)" if backend == "dali" and device.startswith("cuda") else "cpu"
    return {
        "backend": backend,
        "decode": decode,
        "threads": threads,
        "device": device,
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1),
    }


def markdown(records: list[dict]) -> str:
    lines = ["| backend | decode | threads | images/s |", "|---|---|---|---|"]
    lines += [
        f"| {r['backend']} | {r['decode']} | {r['threads']} | {r['images_per_s']:.0f} |" for r in records
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset root (default: a fresh synthetic dataset)")
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--image-size", type=int, nargs=2, default=(350, 500), metavar=("MIN", "MAX"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up one")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--backends", nargs="+", default=["torch", "dali"], choices=["torch", "dali"])
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--out", default="bench_loader.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if data is None:
            make_dataset(
                scratch,
                args.num_images,
                seed=0,
                image_size=tuple(args.image_size),
                workers=os.cpu_count() or 1,
            )
            data = scratch
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        records = []
        for backend in args.backends:
            if backend == "dali":
                try:
                    import nvidia.dali  # noqa: F401
                except ImportError:
                    print("DALI not installed: skipping the dali backend", file=sys.stderr)
                    continue
            for device in devices:
                for threads in args.threads:
                    records.append(measure(data, backend, device, threads, args))
                    print(json.dumps(records[-1]), flush=True)
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "results": records,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
