"""The native CPU kernels on one thread at ViT-B/16 shapes: the loss against torch.compile of the reference,
the copy-style ops against a plain ``Tensor.copy_`` of the same bytes.

    python benchmarks/bench_native_cpu.py [--batch 64] [--rounds 15] [--dtypes float32 bfloat16]
                                          [--cold-mib 256] [--label portable]
                                          [--out benchmarks/results/native_cpu.jsonl]
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
with ``--dtype`` tensors, against three copies of the same number of bytes (a tensor holding half the bytes the
op reads plus writes: a copy reads and writes each byte once), "of copy" = copy time / op time:

- ``copy_ (same bytes)``: ``dst.copy_(src)`` into a preallocated ``dst``, the same two tensors every call. For
  the smaller ops both fit the last-level cache, so this is a cache-to-cache copy.
- ``copy_ (same bytes, DRAM)``: the same copy, each call on the next window of two ``--cold-mib`` buffers,
  so source and destination come from DRAM as the ops' 38.5 MB ViT-B image does. The ops' target
  (at least half the copy bandwidth) is judged against this one: the ops' own working sets are DRAM-sized.
- ``clone (same bytes)``: ``src.clone()`` of a DRAM window, an allocating copy as the ops allocate their
  outputs; what the allocation costs (page faults of fresh memory) depends on the C library's heap state.

Every row also records the system part of the CPU time and the minor page faults per call (``sys_ms``,
``faults``): fresh output pages are faulted in and zeroed by the OS, which counts against the op.

Results go as JSON lines to --out (one line per variant, with versions, CPU model, threads and --label, e.g.
the FASTMAE_NATIVE_MARCH the library was built with) and as a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
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


Samples = dict[str, dict[str, list[float]]]  # variant -> {"cpu", "sys", "faults"} -> one value per round


def time_rounds(variants: dict[str, Callable[[], object]], rounds: int, inner: int) -> Samples:
    """Per call of each variant, one sample per round (mean of ``inner`` calls): seconds of process CPU time,
    seconds of it spent in the kernel (system time), minor page faults."""
    for fn in variants.values():  # warm-up (and the compile of compiled variants)
        fn()
        fn()
    samples: Samples = {name: {"cpu": [], "sys": [], "faults": []} for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            usage = resource.getrusage(resource.RUSAGE_SELF)
            start = time.process_time()
            for _ in range(inner):
                fn()
            elapsed = time.process_time() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            samples[name]["cpu"].append(elapsed / inner)
            samples[name]["sys"].append((after.ru_stime - usage.ru_stime) / inner)
            samples[name]["faults"].append((after.ru_minflt - usage.ru_minflt) / inner)
    return samples


def summarise(group: str, dtype: torch.dtype, samples: Samples, bases: list[str],
              bytes_moved: dict[str, int]) -> list[dict[str, object]]:  # fmt: skip
    """One row per variant: median/min/max ms, median system ms and faults, speed-up over each of ``bases``
    (ratio of medians; the first is the table's "ratio"), GB/s when known."""
    rows = []
    base_medians = {base: statistics.median(samples[base]["cpu"]) for base in bases}
    for name, sample in samples.items():
        times = sample["cpu"]
        median = statistics.median(times)
        row: dict[str, object] = {
            "group": group, "dtype": str(dtype).replace("torch.", ""), "variant": name,
            "median_ms": median * 1e3, "min_ms": min(times) * 1e3, "max_ms": max(times) * 1e3,
            "sys_ms": statistics.median(sample["sys"]) * 1e3, "faults": statistics.median(sample["faults"]),
            "rounds": len(times),
        }  # fmt: skip
        row.update({"vs_" + base: base_median / median for base, base_median in base_medians.items()})
        if name in bytes_moved:
            row["gb_per_s"] = bytes_moved[name] / median / 1e9
        rows.append(row)
    return rows


HOT_COPY, DRAM_COPY, CLONE = "copy_ (same bytes)", "copy_ (same bytes, DRAM)", "clone (same bytes)"


def copy_variants(total_bytes: int, dtype: torch.dtype, cold_bytes: int) -> tuple[dict[str, Callable[[], object]], int]:
    """The three copies of the module docstring, each moving ``total_bytes`` (read + write) of ``dtype``, and
    the bytes one of them moves."""
    es = torch.finfo(dtype).bits // 8
    numel = max(1, total_bytes // 2 // es)
    src, dst = torch.randn(numel).to(dtype), torch.empty(numel, dtype=dtype)
    windows = max(2, cold_bytes // (numel * es))  # at least two, so no call finds its data where it left it
    cold_src = torch.randn(windows * numel).to(dtype).view(windows, numel)
    cold_dst = torch.zeros(windows, numel, dtype=dtype)  # touched now, not in the timed calls
    turn = [0]

    def next_window() -> int:
        turn[0] = (turn[0] + 1) % windows
        return turn[0]

    def dram_copy() -> None:
        w = next_window()
        cold_dst[w].copy_(cold_src[w])

    variants = {HOT_COPY: lambda: dst.copy_(src), DRAM_COPY: dram_copy, CLONE: lambda: cold_src[next_window()].clone()}
    return variants, 2 * numel * es


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
    return summarise("masked_mse_loss fwd+bwd", dtype, samples, ["compiled reference"], {})


def bench_copy_ops(batch: int, dtype: torch.dtype, rounds: int, cold_bytes: int) -> list[dict[str, object]]:
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
        copies, copy_bytes = copy_variants(total_bytes, dtype, cold_bytes)
        moved = {name: total_bytes for name in variants} | {name: copy_bytes for name in copies}
        samples = time_rounds({**copies, **variants}, rounds, inner=3)
        rows += summarise(group, dtype, samples, [HOT_COPY, DRAM_COPY], moved)
        del copies  # free the DRAM buffers before the next group
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| op | dtype | variant | median ms | min..max ms | sys ms | faults | ratio | of DRAM copy | GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ratio = next(v for k, v in r.items() if k.startswith("vs_"))
        dram = f"{r['vs_' + DRAM_COPY]:.2f}" if "vs_" + DRAM_COPY in r else ""
        gbs = f"{r['gb_per_s']:.1f}" if "gb_per_s" in r else ""
        lines.append(f"| {r['group']} | {r['dtype']} | {r['variant']} | {r['median_ms']:.2f} | "
                     f"{r['min_ms']:.2f}..{r['max_ms']:.2f} | {r['sys_ms']:.2f} | {r['faults']:.0f} | {ratio:.2f} | "
                     f"{dram} | {gbs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--parts", nargs="+", default=["loss", "copy"], choices=["loss", "copy"])
    parser.add_argument("--cold-mib", type=int, default=256,
                        help="size of each of the two buffers the DRAM copy cycles through (>> the last-level cache)")
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
            rows += bench_copy_ops(args.batch, dtype, args.rounds, args.cold_mib << 20)
    print(f"batch {args.batch}, {json.dumps(env)}")
    print(markdown(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            for row in rows:
                f.write(json.dumps({"bench": "native_cpu", "batch": args.batch, **env, **row}) + "\n")


if __name__ == "__main__":
    main()
