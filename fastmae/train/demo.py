"""README command 1: make the embedded dataset, pretrain a small MAE, show that it learned.

    python -m fastmae.train.demo --out demo_out

On a CPU (the default target: about 5 minutes on 2 cores) it trains ``mae_vit_tiny`` (64 px, patch 8,
4 blocks of width 96, decoder 2 x 64) with the torch loader; with a GPU it trains a ViT-Base-width
model at 112 px on more data and steps, in bf16 with torch.compile, through DALI when installed.
It prints the mean loss of the first and of the last 20 steps and fails unless the last is at most
``--max_ratio`` (0.8) times the first; it writes loss_curve.png and reconstruction.png. Then it
linear-probes the pretrained encoder and the same encoder at its random init on held-out images
labelled by the kind of shape drawn, prints both top-1 accuracies and fails unless pretraining wins.
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
PROBE_EPOCHS = 2000  # full-batch LARS steps of the demo's linear probe (features are cached: seconds)


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
    num_val: int  # held-out images the linear probe is scored on


CPU_PRESET = Preset("mae_vit_tiny", 64, 3000, (72, 112), 64, 600, 1.5e-3, 1, 600)
GPU_PRESET = Preset("mae_vit_base_patch16", 112, 20000, (128, 192), 256, 3000, 1.5e-3, 2, 2000)


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
    p.add_argument("--seed", type=int, default=0, help="pretraining seed (the dataset is fixed)")
    p.add_argument("--max_ratio", type=float, default=0.8, help="fail unless last loss <= this x first loss")
    p.add_argument("--no_probe", action="store_true", help="skip the linear probe of the pretrained encoder")
    return p


def probe_encoders(model_name: str, encoder_path: Path, data_root: Path, input_size: int, seed: int,
                   device: torch.device, workers: int) -> tuple[float, float]:
    """Linear-probe top-1 (%) on the held-out images: (pretrained encoder, the same encoder at its random init).

    Both encoders see the same centre crops; each gets the linear-probe head (BatchNorm without affine,
    linear layer, LARS) trained on its frozen cls-token features of the train split.
    """
    from fastmae.data.synthetic import SHAPE_KINDS
    from fastmae.eval.data import EvalLoader, extract_features, split_folder
    from fastmae.eval.probe import linear_probe_accuracy
    from fastmae.eval.vit import build_classifier
    from fastmae.eval.weights import load_pretrained

    loaders = [EvalLoader(split_folder(data_root, split), 250, input_size, device=device, num_workers=workers)
               for split in ("train", "val")]
    accuracy = []
    for pretrained in (True, False):
        torch.manual_seed(seed)  # the pretraining seed: the random-init encoder is the one pretraining started from
        encoder = build_classifier(model_name.replace("mae_", "", 1), len(SHAPE_KINDS), img_size=input_size,
                                   global_pool=False, linear_probe=True).to(device).eval()
        if pretrained:
            load_pretrained(encoder, encoder_path)
        (train_x, train_y), (val_x, val_y) = (extract_features(encoder.forward_features, loader)
                                              for loader in loaders)
        accuracy.append(linear_probe_accuracy(train_x, train_y, val_x, val_y, len(SHAPE_KINDS), epochs=PROBE_EPOCHS,
                                              warmup_epochs=PROBE_EPOCHS // 10, batch_size=train_x.shape[0]))
    return accuracy[0], accuracy[1]


def main(argv: Sequence[str] | None = None) -> int:
    from fastmae.data.synthetic import SHAPE_KINDS, make_labelled_dataset
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

    data_root = out / f"dataset-{num_images}-val{preset.num_val}"
    if not (data_root / "val").is_dir():
        print(f"writing the embedded dataset: {num_images} + {preset.num_val} held-out synthetic photo-like JPEGs, "
              f"labelled by the kind of shape drawn ({', '.join(SHAPE_KINDS)}) -> {data_root}", flush=True)
        make_labelled_dataset(data_root, num_images, preset.num_val, seed=0, image_size=preset.image_size,
                              workers=os.cpu_count() or 1)
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
             "--num_workers", str(workers), "--seed", str(opts.seed)]
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
    if opts.no_probe:
        return 0
    probed = time.perf_counter()
    pretrained, random_init = probe_encoders(preset.model, run_dir / "encoder.pth", data_root, preset.input_size,
                                             seed=opts.seed, device=torch.device(device), workers=workers)
    chance = 100.0 / len(SHAPE_KINDS)
    print(f"\nlinear probe, top-1 on {preset.num_val} held-out images ({', '.join(SHAPE_KINDS)}; chance "
          f"{chance:.1f}%): pretrained encoder {pretrained:.1f}%, same encoder at its random init {random_init:.1f}% "
          f"({time.perf_counter() - probed:.0f} s)")
    if not pretrained > random_init:
        print("demo FAILED: the pretrained encoder does not beat its random init under a linear probe",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
