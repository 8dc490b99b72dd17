"""The native CPU kernels on one thread at ViT-B/16 shapes: the loss against torch.compile of the reference,
the copy-style ops against a plain ``Tensor.copy_`` of the same bytes.

    python benchmarks/bench_native_cpu.py [--batch 64] [--rounds 15] [--dtypes float32 bfloat16]
                                          [--label portable] [--out benchmarks/results/native_cpu.jsonl]
                                          [--library path/to/_fastmae_native.so]

Timing: ``torch.set_num_threads(1)`` and process CPU time (``time.process_time``, user + system: the page
faults of fresh outputs count), so other jobs on a shared machine disturb it little. Every variant of one
comparison runs once per round, in the same order each round (paired, interleaved rounds); the table gives
the median per call, the spread (min and max of the rounds) and the ratio of medians.

Shapes: 224 px images, patch 16 (L = 196, D = 768), mask ratio 0.75 (K = 49), decoder width 512, norm_pix.
The loss takes ``--dtype`` pred with float32 images (the trainer's autocast case) and is timed forward +
backward (pred requires grad; the image does not): fastmae with a full pred and mask (what the reference
computes), fastmae with a removed-only pred, the eager reference and ``torch.compile`` (inductor) of the
reference ``mae_loss``. The copy-style ops run their native kernels directly (``torch.ops.fastmae_kernels``),
with ``--dtype`` tensors. Copy bandwidth: ``dst.copy_(src)`` of a tensor holding half the bytes the op reads
plus writes (a copy reads and writes each byte once), so "of copy" = copy time / op time.

Results go as JSON lines to --out (one line per variant, with versions, CPU model, threads and --label, e.g.
the FASTMAE_NATIVE_MARCH the library was built with) and as a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make ``fastmae`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fastmae
from fastmae import _native, reference
from fastmae.ops import gather, loss, masked_mse_loss, random_masking, unshuffle

KERNEL_MODULES = (gather, loss, unshuffle)  # importing them declares the fastmae_kernels ops timed here

IMG, PATCH, CHANS, DEC_DIM, MASK_RATIO = 224, 16, 3, 512, 0.75


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(label: str) -> dict[str, object]:
    lib = _native.library_path()
    return {
        "torch": torch.__version__, "fastmae": fastmae.__version__, "python": platform.python_version(),
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "label": label,
        "library_sha256": hashlib.sha256(lib.read_bytes()).hexdigest()[:16] if lib else None,
    }  # fmt: skip


def time_rounds(variants: dict[str, Callable[[], object]], rounds: int, inner: int) -> dict[str, list[float]]:
    """Seconds of process CPU time per call of each variant, one sample per round (mean of ``inner`` calls)."""
    for fn in variants.values():  # warm-up (and the compile of compiled variants)
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.process_time()
            for _ in range(inner):
                fn()
            samples[name].append((time.process_time() - start) / inner)
    return samples


def summarise(group: str, dtype: torch.dtype, samples: dict[str, list[float]], base: str,
              bytes_moved: dict[str, int]) -> list[dict[str, object]]:  # fmt: skip
    """One row per variant: median/min/max ms, speed-up over ``base`` (ratio of medians), GB/s when known."""
    rows = []
    base_median = statistics.median(samples[base])
    for name, times in samples.items():
        median = statistics.median(times)
        row: dict[str, object] = {
            "group": group, "dtype": str(dtype).replace("torch.", ""), "variant": name,
            "median_ms": median * 1e3, "min_ms": min(times) * 1e3, "max_ms": max(times) * 1e3,
            "rounds": len(times), "vs_" + base: base_median / median,
        }  # fmt: skip
        if name in bytes_moved:
            row["gb_per_s"] = bytes_moved[name] / median / 1e9
        rows.append(row)
    return rows


def copy_variant(total_bytes: int, dtype: torch.dtype) -> tuple[Callable[[], object], int]:
    """dst.copy_(src) moving ``total_bytes`` (read + write) of ``dtype``."""
    numel = total_bytes // 2 // torch.finfo(dtype).bits * 8
    src, dst = torch.randn(numel).to(dtype), torch.empty(numel, dtype=dtype)
    return (lambda: dst.copy_(src)), 2 * numel * src.element_size()


def bench_loss(batch: int, dtype: torch.dtype, rounds: int) -> list[dict[str, object]]:
    length = (IMG // PATCH) ** 2
    dim = PATCH * PATCH * CHANS
    masking = random_masking(batch, length, MASK_RATIO)
    keep = masking.num_keep
    imgs = torch.randn(batch, CHANS, IMG, IMG)
    pred_full = torch.randn(batch, length, dim).to(dtype).requires_grad_()
    ids_removed = masking.ids_shuffle[:, keep:].contiguous()
    pred_removed = pred_full.detach()[:, keep:].clone().requires_grad_()
    mask = masking.mask
    compiled = torch.compile(reference.mae_loss)

    def step(pred: torch.Tensor, fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            pred.grad = None
            fn().backward()
        return run

    def fastmae_full() -> torch.Tensor:
        return masked_mse_loss(pred_full, imgs, None, PATCH, norm_pix=True, mask=mask)

    def fastmae_removed() -> torch.Tensor:
        return masked_mse_loss(pred_removed, imgs, None, PATCH, norm_pix=True, ids_removed=ids_removed)

    def torch_fallback_full() -> torch.Tensor:
        os.environ["FASTMAE_BACKEND"] = "torch"
        try:
            return masked_mse_loss(pred_full, imgs, None, PATCH, norm_pix=True, mask=mask)
        finally:
            os.environ["FASTMAE_BACKEND"] = "native"

    variants = {
        "compiled reference": step(pred_full, lambda: compiled(imgs, pred_full, mask, PATCH, True)),
        "native full+mask": step(pred_full, fastmae_full),
        "native removed-only": step(pred_removed, fastmae_removed),
        "eager reference": step(pred_full, lambda: reference.mae_loss(imgs, pred_full, mask, PATCH, True)),
        "torch fallback full+mask": step(pred_full, torch_fallback_full),
    }
    samples = time_rounds(variants, rounds, inner=1)
    return summarise("masked_mse_loss fwd+bwd", dtype, samples, "compiled reference", {})


def bench_copy_ops(batch: int, dtype: torch.dtype, rounds: int) -> list[dict[str, object]]:
    ops = torch.ops.fastmae_kernels
    length = (IMG // PATCH) ** 2
    dim = PATCH * PATCH * CHANS
    masking = random_masking(batch, length, MASK_RATIO)
    keep = masking.num_keep
    es = torch.finfo(dtype).bits // 8
    imgs = torch.randn(batch, CHANS, IMG, IMG).to(dtype)
    ids_keep = masking.ids_keep.contiguous()
    grad_patches = torch.randn(batch, keep, dim).to(dtype)
    x_vis = torch.randn(batch, 1 + keep, DEC_DIM).to(dtype)
    token = torch.randn(1, 1, DEC_DIM).to(dtype)
    pos = torch.randn(1, 1 + length, DEC_DIM).to(dtype)
    ids_restore = masking.ids_restore.contiguous()
    grad_out = torch.randn(batch, 1 + length, DEC_DIM).to(dtype)
    patches_bytes = batch * keep * dim * es
    out_bytes = batch * (1 + length) * DEC_DIM * es
    x_bytes = batch * (1 + keep) * DEC_DIM * es
    rows = []
    cases: dict[str, tuple[int, dict[str, Callable[[], object]]]] = {
        # reads the kept patches, writes them
        "patchify_gather fwd": (2 * patches_bytes, {
            "native": lambda: ops.patchify_gather(imgs, ids_keep, [PATCH, PATCH]),
            "eager reference": lambda: reference.patchify(imgs, PATCH).gather(
                1, ids_keep[:, :, None].expand(-1, -1, dim)),
        }),
        # reads the kept rows' gradient, writes the whole image (zeros elsewhere)
        "patchify_gather bwd": (patches_bytes + imgs.numel() * es, {
            "native": lambda: ops.patchify_gather_backward(grad_patches, ids_keep, [PATCH, PATCH], list(imgs.shape)),
        }),
        # reads x_vis and pos_embed, writes the decoder input
        "unshuffle fwd": (x_bytes + pos.numel() * es + out_bytes, {
            "native": lambda: ops.unshuffle_with_mask_token(x_vis, token, ids_restore, pos),
            "eager reference": lambda: reference.decoder_input(x_vis, token, ids_restore, pos),
        }),
        # reads grad_out, writes grad_x (plus the small mask-token and pos_embed sums)
        "unshuffle bwd": (out_bytes + x_bytes + pos.numel() * 4, {
            "native": lambda: ops.unshuffle_with_mask_token_backward(
                grad_out, ids_restore, keep, dtype, dtype, dtype, [True, True, True]),
        }),
    }  # fmt: skip
    for group, (total_bytes, variants) in cases.items():
        copy_fn, copy_bytes = copy_variant(total_bytes, dtype)
        variants = {"copy_ (same bytes)": copy_fn, **variants}
        moved = {name: total_bytes for name in variants}
        moved["copy_ (same bytes)"] = copy_bytes
        samples = time_rounds(variants, rounds, inner=3)
        rows += summarise(group, dtype, samples, "copy_ (same bytes)", moved)
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| op | dtype | variant | median ms | min..max ms | ratio | GB/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = next(v for k, v in r.items() if k.startswith("vs_"))
        gbs = f"{r['gb_per_s']:.1f}" if "gb_per_s" in r else ""
        lines.append(f"| {r['group']} | {r['dtype']} | {r['variant']} | {r['median_ms']:.2f} | "
                     f"{r['min_ms']:.2f}..{r['max_ms']:.2f} | {ratio:.2f} | {gbs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--parts", nargs="+", default=["loss", "copy"], choices=["loss", "copy"])
    parser.add_argument("--label", default="", help="recorded with the results, e.g. the build's ISA option")
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    parser.add_argument("--library", type=Path, default=None,
                        help="time this build of the native library instead of fastmae/'s (to compare builds)")
    args = parser.parse_args(argv)
    if args.library is not None:
        library = args.library.resolve()
        _native.library_path = lambda: library  # read by the lazy loader on first use
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.environ["FASTMAE_BACKEND"] = "native"
    _native.require()
    env = environment(args.label)
    rows: list[dict[str, object]] = []
    for name in args.dtypes:
        dtype = getattr(torch, name)
        if "loss" in args.parts:
            rows += bench_loss(args.batch, dtype, args.rounds)
        if "copy" in args.parts:
            rows += bench_copy_ops(args.batch, dtype, args.rounds)
    print(f"batch {args.batch}, {json.dumps(env)}")
    print(markdown(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            for row in rows:
                f.write(json.dumps({"bench": "native_cpu", "batch": args.batch, **env, **row}) + "\n")


if __name__ == "__main__":
    main()
