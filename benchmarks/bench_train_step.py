"""Train-step benchmark: fastmae against reference-published and reference-modern.

    python benchmarks/bench_train_step.py                      # ViT-B/L/H on CUDA, tiny models on CPU
    python benchmarks/bench_train_step.py --models mae_vit_large_patch16 --batch 256 --max-batch

Writes JSON lines to benchmarks/results/train_step.jsonl (one row per model x provider, with the
device, versions, commit, date and command) and prints a markdown table. Regenerate RESULTS.md
and the plots with ``python benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import sys

from fastmae.bench.providers import PROVIDERS
from fastmae.bench.record import add_out_argument
from fastmae.bench.report import publish_rows
from fastmae.bench.timing import pick_device
from fastmae.bench.train_step import largest_batch, run

GPU_MODELS = ("mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14")
CPU_MODELS = ("mae_vit_test", "mae_vit_tiny")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 4 on CPU")
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--max-batch", action="store_true", help="also find each provider's largest batch (CUDA)")
    parser.add_argument("--device", default=None)
    add_out_argument(parser, "train_step")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    models = args.models or (GPU_MODELS if on_gpu else CPU_MODELS)
    rows = run(
        models, args.batch or (128 if on_gpu else 4), device, providers=args.providers,
        warmup=args.warmup if args.warmup is not None else (5 if on_gpu else 1),
        iters=args.iters if args.iters is not None else (20 if on_gpu else 2),
        repeats=args.repeats, compile_model=args.compile,
    )
    if args.max_batch and on_gpu:
        rows += [largest_batch(p, m, device, compile_model=args.compile is not False)
                 for m in models for p in args.providers]
    publish_rows(rows, device, argv, args.out, ("train_step", "max_batch"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
