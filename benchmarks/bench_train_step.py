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

from fastmae.bench.record import add_out_argument
from fastmae.bench.report import publish_rows
from fastmae.bench.timing import pick_device
from fastmae.bench.train_step import (
    STEP_BENCH_DEFAULTS,
    add_step_bench_arguments,
    largest_batch,
    run_with_defaults,
    step_bench_defaults,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu, cpu = STEP_BENCH_DEFAULTS["cuda"], STEP_BENCH_DEFAULTS["cpu"]
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"default: {' '.join(gpu.models)} on CUDA, {' '.join(cpu.models)} on CPU")
    parser.add_argument("--batch", type=int, default=None, help=f"default: {gpu.batch} on CUDA, {cpu.batch} on CPU")
    add_step_bench_arguments(parser)
    parser.add_argument("--max-batch", action="store_true", help="also find each provider's largest batch (CUDA)")
    add_out_argument(parser, "train_step")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    models = args.models or step_bench_defaults(device).models
    rows = run_with_defaults(args, models, args.batch, device)
    if args.max_batch and on_gpu:
        rows += [largest_batch(p, m, device, compile_model=args.compile is not False)
                 for m in models for p in args.providers]
    publish_rows(rows, device, argv, args.out, ("train_step", "max_batch"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
