"""``fastmae memory``: bytes a training step keeps for backward, by category, and what fits on a GPU.

Traces one step of each provider under FakeTensorMode on the CPU (seconds, nothing allocated) and
prints the activations kept for backward by category, parameters, gradients, AdamW state and the
predicted peak; ``--fit`` finds the largest batch whose peak fits the GPU. These are predictions from
a CPU trace (see fastmae.bench.memory for what they include), not GPU measurements.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fastmae.bench.providers import PROVIDERS

_MB = 1e6


def build_parser() -> argparse.ArgumentParser:
    from fastmae.bench.memory import DEFAULT_HEADROOM, GPU_MEMORY_BYTES
    from fastmae.models.recompute import DEFAULT_RECOMPUTE, RECOMPUTE_MODES
    from fastmae.train.precision import DEFAULT_WEIGHTS, WEIGHTS

    parser = argparse.ArgumentParser(prog="fastmae memory", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="mae_vit_huge_patch14", help="model name (official or short alias)")
    parser.add_argument("--batch_size", type=int, default=128, help="images per step")
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    parser.add_argument("--recompute", choices=RECOMPUTE_MODES, default=DEFAULT_RECOMPUTE,
                        help="fastmae's activation recomputation (the trainer's --recompute)")
    parser.add_argument("--weights", choices=WEIGHTS, default=DEFAULT_WEIGHTS,
                        help="dtype of fastmae's Linear/conv weights (the trainer's --weights; bf16: fp32 master "
                             "in the optimizer, no autocast weight copies)")
    parser.add_argument("--gpu", choices=sorted(GPU_MEMORY_BYTES), default="h100", help="GPU to plan for")
    parser.add_argument("--gpu_memory_gb", type=float, default=None, help="GPU memory in GB (overrides --gpu)")
    parser.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                        help="fraction of the GPU memory a step may use (CUDA context, workspaces, fragmentation)")
    parser.add_argument("--fit", action="store_true", help="also find each provider's largest batch that fits")
    parser.add_argument("--compiled", action="store_true",
                        help="also report what torch.compile's min-cut partition saves (real parameters in CPU memory)")
    parser.add_argument("--real", action="store_true",
                        help="run on real CPU tensors instead of fake ones (a measurement; small sizes only)")
    parser.add_argument("--out", default=None, help="append the rows as JSON lines to this file")
    return parser


def _check(args: argparse.Namespace) -> None:
    from fastmae.models.configs import resolve_model_name

    if args.batch_size < 1:
        raise SystemExit(f"fastmae memory: --batch_size must be >= 1, got {args.batch_size}")
    if not 0 < args.headroom <= 1:
        raise SystemExit(f"fastmae memory: --headroom must be in (0, 1], got {args.headroom}")
    if args.gpu_memory_gb is not None and args.gpu_memory_gb <= 0:
        raise SystemExit(f"fastmae memory: --gpu_memory_gb must be > 0, got {args.gpu_memory_gb}")
    try:
        resolve_model_name(args.model)
    except ValueError as error:
        raise SystemExit(f"fastmae memory: --model: {error}") from None


def format_table(memories: Sequence[object], capacity: int, headroom: float) -> str:
    """Markdown table: one column per traced step, rows = categories, totals, peak and fit (MB)."""
    from fastmae.bench.memory import CATEGORIES, WEIGHT_COPIES, fits

    header = ["MB"] + [f"{m.provider} ({m.precision}, recompute {m.recompute}"
                       + (f", {m.weights} weights)" if m.weights != "fp32" else ")") for m in memories]
    rows = [[c] + [f"{m.activations.get(c, 0) / _MB:,.1f}" for m in memories] for c in CATEGORIES]
    rows += [
        ["**activations kept for backward**"] + [f"**{m.activation_bytes / _MB:,.1f}**" for m in memories],
        ["  without autocast weight copies"]
        + [f"{(m.activation_bytes - m.activations.get(WEIGHT_COPIES, 0)) / _MB:,.1f}" for m in memories],
        ["parameters (+ buffers)"] + [f"{m.parameter_bytes / _MB:,.1f}" for m in memories],
        ["gradients"] + [f"{m.gradient_bytes / _MB:,.1f}" for m in memories],
        ["AdamW state"] + [f"{m.optimizer_bytes / _MB:,.1f}" for m in memories],
        ["fp32 master weights (optimizer)"] + [f"{m.master_bytes / _MB:,.1f}" for m in memories],
        ["**predicted peak**"] + [f"**{m.peak_bytes / _MB:,.1f}**" for m in memories],
        [f"fits {headroom:.0%} of {capacity / 1e9:g} GB"] + [str(fits(m, capacity, headroom)) for m in memories],
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check(args)
    from fastmae.bench.memory import StepTracer, gpu_capacity, largest_batch

    capacity = int(args.gpu_memory_gb * 1e9) if args.gpu_memory_gb is not None else gpu_capacity(args.gpu)
    tracers = [StepTracer(p, args.model, recompute=args.recompute if p == "fastmae" else "none",
                          weights=args.weights if p == "fastmae" else "fp32", fake=not args.real)
               for p in args.providers]
    memories = [tracer.trace(args.batch_size) for tracer in tracers]
    print(f"{args.model}, batch {args.batch_size}: one training step traced on the CPU "
          f"({'real CPU tensors' if args.real else 'FakeTensorMode, nothing allocated'}); predictions, "
          "not GPU measurements")
    print(format_table(memories, capacity, args.headroom))
    rows = [m.row() for m in memories]
    if args.compiled:
        from fastmae.bench.memory_compiled import compiled_saved_bytes

        for memory, row in zip(memories, rows):
            row["compiled_saved_bytes"] = compiled_saved_bytes(memory.provider, args.model, args.batch_size,
                                                               recompute=memory.recompute, weights=memory.weights)
            print(f"compiled (min-cut partition) {memory.provider}: {row['compiled_saved_bytes'] / _MB:,.1f} MB "
                  f"saved for backward (eager: {memory.activation_bytes / _MB:,.1f} MB)")
    if args.fit:
        for tracer in tracers:
            batch, memory = largest_batch(tracer, capacity, headroom=args.headroom)
            peak = f"{memory.peak_bytes / 1e9:.2f} GB" if memory else "-"
            print(f"largest batch for {tracer.provider}: {batch} (predicted peak {peak} of "
                  f"{args.headroom:.0%} x {capacity / 1e9:g} GB)")
            if memory is not None:
                rows.append({**memory.row(), "bench": "memory_max_batch", "capacity_bytes": capacity,
                             "headroom": args.headroom})
    if args.out:
        from fastmae.bench.record import append_jsonl

        print(f"rows appended to {append_jsonl(rows, args.out)}")
    return 0
