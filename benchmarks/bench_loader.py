"""Loader throughput: images/s per backend and thread count (and DALI GPU decode when a GPU is present).

    python benchmarks/bench_loader.py --num-images 512 --threads 1 2

Appends JSON lines (one row per backend x device x threads, ``bench`` = "loader") to
benchmarks/results/loader.jsonl (or --out) and prints a markdown table. Without --data it first
writes the embedded synthetic dataset (ImageNet-like 350-500 px JPEGs by default) to a temp folder.
The first epoch of each configuration is a warm-up (worker start, pipeline build, page cache);
the timed epochs follow it and include moving the batches to the device.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make ``fastmae`` importable from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastmae.bench.loader import measure
from fastmae.bench.record import add_out_argument, append_jsonl, environment, markdown_table
from fastmae.bench.report import COLUMNS
from fastmae.data import make_dataset
from fastmae.data.epoch import LOADER_BACKENDS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset root (default: a fresh synthetic dataset)")
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--image-size", type=int, nargs=2, default=(350, 500), metavar=("MIN", "MAX"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up one")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--backends", nargs="+", default=list(LOADER_BACKENDS), choices=LOADER_BACKENDS)
    parser.add_argument("--bf16", action="store_true")
    add_out_argument(parser, "loader")
    args = parser.parse_args(argv)

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    backends = list(args.backends)
    if "dali" in backends and importlib.util.find_spec("nvidia.dali") is None:
        print("DALI not installed: skipping the dali backend", file=sys.stderr)
        backends.remove("dali")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if data is None:
            make_dataset(scratch, args.num_images, seed=0, image_size=tuple(args.image_size),
                         workers=os.cpu_count() or 1)
            data = scratch
        for device in devices:
            env = environment(device, argv)
            for backend in backends:
                for threads in args.threads:
                    row = measure(data, backend, device, threads, batch_size=args.batch_size,
                                  input_size=args.input_size, epochs=args.epochs, dtype=dtype)
                    rows.append({**env, **row, "num_images": args.num_images})
                    print(f"{backend} {device.type} threads={threads}: {row['images_per_s']:.1f} images/s", flush=True)
    path = append_jsonl(rows, args.out)
    print(markdown_table(rows, COLUMNS["loader"]))
    print(f"{len(rows)} rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
