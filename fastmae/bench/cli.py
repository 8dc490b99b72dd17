"""``fastmae bench``: the standard train-step comparison for one model, printed as a table."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fastmae.bench.providers import PROVIDERS
from fastmae.bench.record import append_jsonl, environment, markdown_table
from fastmae.bench.report import COLUMNS
from fastmae.bench.timing import pick_device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmae bench", description=__doc__)
    parser.add_argument("--model", default=None,
                        help="model name (default: mae_vit_base_patch16 on CUDA, mae_vit_tiny on CPU)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 64 on CUDA, 8 on CPU")
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per provider (default 5 CUDA, 1 CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per provider (default 20 CUDA, 3 CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="repetitions, provider order alternating")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the compiled providers (default: on CUDA only)")
    parser.add_argument("--out", default=None, help="append the rows as JSON lines to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    model = args.model or ("mae_vit_base_patch16" if on_gpu else "mae_vit_tiny")

    from fastmae.bench.train_step import run

    rows = run(
        [model], args.batch_size or (64 if on_gpu else 8), device, providers=args.providers,
        warmup=args.warmup if args.warmup is not None else (5 if on_gpu else 1),
        iters=args.iters if args.iters is not None else (20 if on_gpu else 3),
        repeats=args.repeats, compile_model=args.compile,
    )
    env = environment(device, argv)
    rows = [{**env, **row} for row in rows]
    print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']}")
    print(markdown_table(rows, COLUMNS["train_step"]))
    if args.out:
        print(f"rows appended to {append_jsonl(rows, args.out)}")
    return 0
