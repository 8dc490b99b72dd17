"""README command 1: make the embedded dataset, pretrain a small MAE, show that it learned.

    python -m fastmae.train.demo --out demo_out

On a CPU (the default target: about 5 minutes on 2 cores) it trains ``mae_vit_tiny`` (64 px, patch 8,
4 blocks of width 96, decoder 2 x 64) with the torch loader; with a GPU it trains a ViT-Base-width
model at 112 px on more data and steps, in bf16 with torch.compile, through DALI when installed.
It prints the mean loss of the first and of the last 20 steps and fails unless the last is at most
``--max_ratio`` (0.8) times the first; it writes loss_curve.png and reconstruction.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

WINDOW = 20  # steps averaged for the first and the last loss


@dataclass(frozen=True)
class Preset:
    model: str
    input_size: int
    num_images: int
    image_size: tuple[int, int]
    batch_size: int
    steps: int
    lr: float
    warmup_epochs: float


CPU_PRESET = Preset("mae_vit_tiny", 64, 3000, (72, 112), 64, 600, 1.5e-3, 1)
GPU_PRESET = Preset("mae_vit_base_patch16", 112, 20000, (128, 192), 256, 3000, 1.5e-3, 2)


def windowed_means(losses: Sequence[float], window: int = WINDOW) -> tuple[float, float]:
    """(mean of the first ``window`` losses, mean of the last ``window``)."""
    if len(losses) < 2 * window:
        raise ValueError(f"need at least {2 * window} step losses, got {len(losses)}")
    return float(np.mean(losses[:window])), float(np.mean(losses[-window:]))


MATPLOTLIB_MISSING = "matplotlib is not installed: {path} not written (pip install matplotlib)"


def plot_loss_curve(losses: Sequence[float], path: Path, window: int = WINDOW,
                    loss_name: str = "loss") -> Path | None:
    """A PNG of the per-step loss and its running mean (matplotlib, no pyplot state); None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print(MATPLOTLIB_MISSING.format(path=path), file=sys.stderr)
        return None
    values = np.asarray(losses, dtype=np.float64)
    steps = np.arange(1, len(values) + 1)
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    figure = Figure(figsize=(8, 4.2), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.plot(steps, values, color="#aabee6", linewidth=1, label="per optimizer step")
    axes.plot(steps[window - 1:], smooth, color="#143ca0", linewidth=2.5, label=f"mean of the last {window} steps")
    axes.set_title("MAE pretraining loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(loss_name)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, format="png")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmae.train.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (dataset, checkpoints, PNGs)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    p.add_argument("--num_images", type=int, default=None, help="dataset size (default: the preset's)")
    p.add_argument("--max_ratio", type=float, default=0.8, help="fail unless last loss <= this x first loss")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from fastmae.data import make_dataset
    from fastmae.train.args import parse_args
    from fastmae.train.pretrain import train
    from fastmae.train.visualize import image_files, load_images, write_reconstructions

    opts = build_parser().parse_args(argv)
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = GPU_PRESET if device.startswith("cuda") else CPU_PRESET
    steps = opts.steps or preset.steps
    num_images = opts.num_images or preset.num_images
    out = Path(opts.out)
    started = time.perf_counter()

    data_root = out / f"dataset-{num_images}"
    if not (data_root / "train").is_dir():
        print(f"writing the embedded dataset: {num_images} synthetic photo-like JPEGs -> {data_root}", flush=True)
        make_dataset(data_root, num_images, seed=0, image_size=preset.image_size, workers=os.cpu_count() or 1)
    made = time.perf_counter()

    dali = device.startswith("cuda") and importlib.util.find_spec("nvidia.dali") is not None
    cores = os.cpu_count() or 1
    workers = max(1, min(8, cores - 1))
    if not device.startswith("cuda"):
        # the loader workers have their own cores; more compute threads than the rest only spin against them
        torch.set_num_threads(max(1, cores - workers))
    epochs = math.ceil(steps / (num_images // preset.batch_size))  # the cosine ends with the run
    run_dir = out / "run"
    flags = ["--model", preset.model, "--input_size", str(preset.input_size), "--batch_size",
             str(preset.batch_size), "--lr", str(preset.lr), "--warmup_epochs", str(preset.warmup_epochs),
             "--epochs", str(epochs), "--max_steps", str(steps), "--norm_pix_loss", "--data_path", str(data_root),
             "--output_dir", str(run_dir), "--device", device, "--loader", "dali" if dali else "torch",
             "--log_every", "50", "--save_every", str(steps), "--keep_last", "1",
             "--num_workers", str(workers)]
    result = train(parse_args(flags))
    trained = time.perf_counter()

    first, last = windowed_means(result.losses)
    curve = plot_loss_curve(result.losses, out / "loss_curve.png",
                            loss_name="MSE on removed patches (per-patch normalised pixels)")
    model = result.model.float().cpu()
    recon = write_reconstructions(model, load_images(image_files([str(data_root / "train")])[:8],
                                                     preset.input_size), out / "reconstruction.png")
    ratio = last / first
    print(f"\nfirst loss (mean of steps 1-{WINDOW}): {first:.4f}")
    print(f"last loss (mean of the last {WINDOW} of {len(result.losses)} steps): {last:.4f}")
    print(f"last / first = {ratio:.3f} (required <= {opts.max_ratio})")
    print(f"time: dataset {made - started:.0f} s, training {trained - made:.0f} s, total "
          f"{time.perf_counter() - started:.0f} s")
    print(f"wrote {', '.join(str(p) for p in (curve, recon) if p is not None)}")
    if not ratio <= opts.max_ratio:
        print("demo FAILED: the loss did not fall enough", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
