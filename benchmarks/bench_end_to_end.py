"""End-to-end benchmark: JPEG files (the embedded dataset) -> loader -> train step.

    python benchmarks/bench_end_to_end.py                  # ViT-B/16 at 224 px on CUDA, tiny on CPU

Reports img/s, the share of wall time spent waiting for data, and whether the run is data-bound.
Appends JSON lines to benchmarks/results/end_to_end.jsonl and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from fastmae.bench.end_to_end import default_configs, ensure_dataset, run
from fastmae.bench.record import add_out_argument, append_jsonl, environment, markdown_table
from fastmae.bench.report import COLUMNS
from fastmae.bench.timing import pick_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--data_path", type=Path, default=None, help="an ImageFolder root (default: make one)")
    parser.add_argument("--num_images", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--configs", nargs="+", default=None, metavar="PROVIDER:LOADER",
                        help="e.g. fastmae:dali reference-modern:torch (default: all that can run here)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--device", default=None)
    add_out_argument(parser, "end_to_end")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    model = args.model or ("mae_vit_base_patch16" if on_gpu else "mae_vit_test")
    batch = args.batch or (256 if on_gpu else 4)
    steps = args.steps or (30 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 1)
    num_images = args.num_images or batch * (steps + warmup + 1)
    data_path = args.data_path or ensure_dataset(
        Path(tempfile.gettempdir()) / f"fastmae-e2e-{num_images}", num_images,
        (350, 500) if on_gpu else (24, 40), workers=args.num_workers)
    configs = [tuple(c.split(":", 1)) for c in args.configs] if args.configs else default_configs()
    rows = run(model, data_path, batch, device, configs=configs, steps=steps, warmup=warmup,
               num_workers=args.num_workers, compile_model=on_gpu if args.compile is None else args.compile)
    env = environment(device, argv)
    rows = [{**env, **row} for row in rows]
    append_jsonl(rows, args.out)
    print(markdown_table(rows, COLUMNS["end_to_end"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
