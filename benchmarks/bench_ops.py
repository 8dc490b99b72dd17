"""Benchmark fastmae's fused ops on every path of the device against the reference and a copy_ of their bytes.

    python benchmarks/bench_ops.py [--ops NAME ...] [--sizes vit_b16 vit_h14 ...] [--size NAME[:BATCH] ...]
                                   [--dtype bfloat16] [--no-compile] [--rounds N] [--out results.jsonl]

Paths (fastmae.bench.op_paths): fastmae's op on its Triton, native and plain-torch kernels (FASTMAE_BACKEND
forced per call; Triton is not timed on CPU, where it only runs in the interpreter), the eager and the
compiled reference, and copy_ of the same bytes (the GB/s ceiling). Shapes: ViT-B/16, ViT-L/16, ViT-H/14 (and
SimMIM's ViT-B/16 at 192 px for mask_token_blend) at a batch probed to fit the device's time and memory budget
(at most 256); ``--size NAME[:BATCH]`` forces a shape and batch instead (``--tiny`` = ``--size tiny``).
Activations use ``--dtype`` (bfloat16 on GPU, float32 on CPU by default).

CPU timing is process CPU time with one torch thread (run with OMP_NUM_THREADS=1 on a shared machine), paths
interleaved in rounds, ratios to the eager reference taken per round (median and quartiles). Appends JSON lines
(one row per op x size x path x pass, ``bench`` = "ops") to benchmarks/results/ops.jsonl (or --out) and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make ``fastmae`` importable from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastmae.bench.op_bench import DEFAULT_BUDGETS, Budget, Timing, probe_batch, run_case
from fastmae.bench.op_cases import OP_NAMES, PRESETS, Size, sizes_for
from fastmae.bench.record import add_out_argument, append_jsonl, environment, markdown_table
from fastmae.bench.report import COLUMNS
from fastmae.bench.timing import pick_device


def forced_size(text: str) -> Size:
    """``NAME`` (a preset at its own batch) or ``NAME:BATCH``."""
    name, _, batch = text.partition(":")
    if name not in PRESETS:
        raise argparse.ArgumentTypeError(f"--size: unknown size {name!r}; expected one of {', '.join(PRESETS)}")
    if not batch:
        return PRESETS[name]
    if not batch.isdigit() or int(batch) < 1:
        raise argparse.ArgumentTypeError(f"--size: the batch after ':' must be a positive integer, got {batch!r}")
    return PRESETS[name].with_batch(int(batch))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="+", choices=OP_NAMES, default=list(OP_NAMES))
    parser.add_argument("--sizes", nargs="+", choices=sorted(PRESETS), default=None,
                        help="shapes to run, batch probed (default: each op's model shapes)")
    parser.add_argument("--size", nargs="+", type=forced_size, default=None, metavar="NAME[:BATCH]",
                        help="force these shapes and batches (no probe)")
    parser.add_argument("--tiny", action="store_true", help="the same as --size tiny")
    add_out_argument(parser, "ops")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="time torch.compile(reference) too (default: on)")
    parser.add_argument("--rounds", type=int, default=Timing.rounds, help="CPU: interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=Timing.warmup, help="CPU: untimed calls per path")
    parser.add_argument("--call-budget-ms", type=float, default=None,
                        help="probe: most ms per call of the eager reference fwd+bwd (default 50 on CPU, none on GPU)")
    return parser.parse_args(argv)


def sizes_to_run(op: str, args: argparse.Namespace) -> list[tuple[Size, bool]]:
    """(size, probe it) pairs for ``op``: forced sizes as given, else the chosen or default shapes, probed."""
    forced = list(args.size or []) + ([PRESETS["tiny"]] if args.tiny else [])
    if forced:
        return [(size, False) for size in forced]
    shapes = [PRESETS[name] for name in args.sizes] if args.sizes else list(sizes_for(op))
    own = {s.name for s in sizes_for(op)}
    return [(size, True) for size in shapes if size.name in own or size.name == "tiny"]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmarks; return the rows written."""
    args = parse_args(argv)
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    budget = DEFAULT_BUDGETS["cuda" if device.type == "cuda" else "cpu"]
    if args.call_budget_ms is not None:
        budget = Budget(args.call_budget_ms / 1e3, budget.memory_share)
    timing = Timing(rounds=args.rounds, warmup=args.warmup)
    env = environment(device, argv)
    rows = []
    for op in args.ops:
        for size, probe in sizes_to_run(op, args):
            sizing = probe_batch(op, size, device, dtype, budget) if probe else {
                "batch": size.batch, "batch_source": "forced"}
            size = size.with_batch(sizing["batch"])
            print(f"{op} {size.name} batch {size.batch} ({sizing['batch_source']})", flush=True)
            case_rows = run_case(op, size, device, dtype, compile_reference=args.compile, timing=timing,
                                 sizing=sizing)
            rows += [{**env, **row} for row in case_rows]
    path = append_jsonl(rows, args.out)
    print(f"{env['device']} | torch {env['torch']} | triton {env['triton']} | commit {env['git_commit']}")
    print(markdown_table(rows, COLUMNS["ops"]))
    print(f"{len(rows)} rows appended to {path}")
    return rows


if __name__ == "__main__":
    main()
