"""Memory benchmark: activations kept for backward and predicted peak, fastmae against both references.

    python benchmarks/bench_memory.py                    # ViT-B/L/H at batch 256, ViT-H at 128, largest ViT-H on 80 GB
    python benchmarks/bench_memory.py --measure cuda --models mae_vit_base_patch16 --extra --fit   # on a GPU

Traced on the CPU under FakeTensorMode (``fastmae.bench.memory``; compiled: the min-cut partition's saved
tensors, ``fastmae.bench.memory_compiled``): predictions, not GPU measurements. ``--measure DEVICE`` instead
runs each case's real (eager) training step and compares the predicted peak with the measured one
(``fastmae.bench.memory_measure``: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU fastmae only).
Writes JSON lines to benchmarks/results/memory.jsonl and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys

import torch

from fastmae.bench.memory import GPU_MEMORY_BYTES, StepTracer, largest_batch
from fastmae.bench.memory_compiled import compiled_saved_bytes
from fastmae.bench.providers import PROVIDERS
from fastmae.bench.record import add_out_argument
from fastmae.bench.report import publish_rows
from fastmae.models.recompute import RECOMPUTE_MODES
from fastmae.train.precision import WEIGHTS

MODELS = ("mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14")
# (provider, recompute, weights): the references, and fastmae without and with selective recomputation, with
# fp32 weights (autocast copies) and with bf16 weights + fp32 masters
VARIANTS = (*((p, "none", "fp32") for p in PROVIDERS if p != "fastmae"),
            *(("fastmae", r, w) for w in WEIGHTS for r in ("none", "selective")))


def _add_ratios(rows: list[dict]) -> None:
    base = {(r["model"], r["batch"]): r for r in rows if r["provider"] == "reference-published"}
    for row in rows:
        ref = base.get((row["model"], row["batch"]))
        if ref is not None:
            row["act_ratio_vs_reference-published"] = row["activation_bytes"] / ref["activation_bytes"]
            row["act_ratio_excl_copies_vs_reference-published"] = (
                (row["activation_bytes"] - row["act[autocast weight copies]"])
                / (ref["activation_bytes"] - ref["act[autocast weight copies]"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[256])
    parser.add_argument("--extra", nargs="*", default=["mae_vit_huge_patch14:128"], help="MODEL:BATCH rows to add")
    parser.add_argument("--fit", nargs="*", default=["mae_vit_huge_patch14:h100"], help="MODEL:GPU largest batches")
    parser.add_argument("--compiled", nargs="*", default=["reference-modern", "fastmae"], choices=PROVIDERS,
                        help="providers whose compiled (min-cut partition) saved bytes are added")
    parser.add_argument("--recompute", nargs="+", default=["none", "selective"], choices=RECOMPUTE_MODES)
    parser.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=WEIGHTS,
                        help="fastmae's weight dtypes (bf16: fp32 master in the optimizer); compiled rows: fp32 only")
    parser.add_argument("--measure", choices=("cuda", "cpu"), default=None,
                        help="run each case's real eager step on this device and compare its peak with the "
                             "prediction (cpu: fastmae only) instead of the trace rows")
    add_out_argument(parser, "memory")
    args = parser.parse_args(argv)

    cases = [(m, b) for m in args.models for b in args.batches]
    cases += [(spec.split(":")[0], int(spec.split(":")[1])) for spec in args.extra]
    variants = [(p, r, w) for p, r, w in VARIANTS
                if p != "fastmae" or (r in args.recompute and w in args.weights)]
    if args.measure:
        return _measure(cases, variants, args.measure, argv, args.out)
    rows = []
    for model in dict.fromkeys(m for m, _ in cases):
        for provider, recompute, weights in variants:
            tracer = StepTracer(provider, model, recompute=recompute, weights=weights)
            for batch in [b for m, b in cases if m == model]:
                row = tracer.trace(batch).row()
                if provider in args.compiled and weights == "fp32":
                    row["compiled_saved_bytes"] = compiled_saved_bytes(provider, model, batch, recompute=recompute)
                rows.append(row)
            for spec in args.fit:
                fit_model, gpu = spec.split(":")
                if fit_model == model:
                    _, memory = largest_batch(tracer, GPU_MEMORY_BYTES[gpu])
                    if memory is not None:
                        rows.append({**memory.row(), "bench": "memory_max_batch", "gpu": gpu})
            print(f"traced {model} {provider} recompute={recompute} weights={weights}", file=sys.stderr, flush=True)
    _add_ratios(rows)
    publish_rows(rows, torch.device("cpu"), argv, args.out, ("memory", "memory_max_batch"))
    return 0


def _measure(cases: list[tuple[str, int]], variants: list[tuple[str, str, str]], device: str,
             argv: list[str] | None, out: str) -> int:
    """``memory_measured`` rows: predicted against measured peak of each case's real step on ``device``."""
    from fastmae.bench.memory_measure import measure_peak

    rows = []
    for model, batch in cases:
        for provider, recompute, weights in variants:
            if device == "cpu" and provider != "fastmae":
                continue
            rows.append(measure_peak(provider, model, batch, device, recompute=recompute, weights=weights))
            print(f"measured {model} {provider} recompute={recompute} weights={weights}", file=sys.stderr, flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
    publish_rows(rows, torch.device(device), argv, out, ("memory_measured",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
