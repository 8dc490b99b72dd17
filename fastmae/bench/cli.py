"""``fastmae bench``: the standard train-step comparison for one model, printed as a table."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fastmae.bench.record import append_jsonl, environment, markdown_table
from fastmae.bench.report import COLUMNS
from fastmae.bench.timing import pick_device
from fastmae.bench.train_step import (
    STEP_BENCH_DEFAULTS,
    add_step_bench_arguments,
    run_with_defaults,
    step_bench_defaults,
)


def build_parser() -> argparse.ArgumentParser:
    gpu, cpu = STEP_BENCH_DEFAULTS["cuda"], STEP_BENCH_DEFAULTS["cpu"]
    parser = argparse.ArgumentParser(prog="fastmae bench", description=__doc__)
    parser.add_argument("--model", default=None,
                        help=f"model name (default: {gpu.models[0]} on CUDA, {cpu.models[0]} on CPU)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help=f"default: {gpu.batch} on CUDA, {cpu.batch} on CPU")
    add_step_bench_arguments(parser)
    parser.add_argument("--out", default=None, help="append the rows as JSON lines to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    model = args.model or step_bench_defaults(device).models[0]
    rows = run_with_defaults(args, [model], args.batch_size, device)
    env = environment(device, argv)
    rows = [{**env, **row} for row in rows]
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']}")
    print(markdown_table(rows, COLUMNS["train_step"]))
    if args.out:
        print(f"rows appended to {append_jsonl(rows, args.out)}")
    return 0
