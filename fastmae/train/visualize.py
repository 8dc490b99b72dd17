"""``fastmae visualize``: masked | reconstruction | original, one row per image, columns labelled.

    fastmae visualize --checkpoint out/checkpoint-00001000.pth --images val/ --out recon.png

The reconstruction shows the model's prediction in the removed patches and the input in the kept
ones, as in the MAE paper's figures. Models trained with norm_pix_loss predict each patch's
*normalised* pixels, not its colours: to show them as a picture they are de-normalised with the
hidden patch's true mean and variance, taken from the original image. That view uses information
the model never had and looks better than the model is, so it is labelled as such, an extra
"prediction only" column shows what the model predicted (every patch normalised, no true
statistics), and the footer gives the MSE on the removed patches of the de-normalised view next to
that of the true per-patch mean colours alone (no model at all).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastmae.data import IMAGENET_MEAN, IMAGENET_STD
from fastmae.models import load_official_checkpoint
from fastmae.models.configs import NORM_PIX_EPS
from fastmae.ops import patchify, unpatchify
from fastmae.train import checkpoint as ckpt
from fastmae.train.modeling import build_model, default_img_size

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
MIN_TILE = 128  # small inputs are enlarged (nearest) to at least this many pixels per tile


def image_files(inputs: Sequence[str]) -> list[Path]:
    """Files given directly, plus the images found (recursively, sorted) under given folders."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"--images {item}: no such file or folder")
    if not files:
        raise ValueError(f"--images {list(inputs)}: no images found")
    return files


def load_images(files: Sequence[Path], size: int) -> torch.Tensor:
    """(N, 3, size, size) normalised: shorter side resized to ``size`` (bicubic), then a centre crop."""
    from PIL import Image

    batch = []
    for file in files:
        with Image.open(file) as image:
            image = image.convert("RGB")
            scale = size / min(image.size)
            width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((width, height), Image.BICUBIC)
            left, top = (width - size) // 2, (height - size) // 2
            pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        batch.append(torch.from_numpy(pixels).permute(2, 0, 1))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (torch.stack(batch) - mean) / std


NORMALISED_VIEW = (0.5, 0.2)  # prediction-only column: a normalised value v is shown as 0.5 + 0.2 v (+-2.5 std)
HEADER, LINE = 18, 14  # pixels of the column-label row and of each footer line


@dataclass
class Panels:
    """Columns of (N, 3, H, W) pictures in [0, 1], each with its label; ``notes`` go under the grid."""

    columns: list[tuple[str, torch.Tensor]]
    notes: list[str] = field(default_factory=list)


def _patch_stats(imgs: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (patches (N, L, p*p*3), mean (N, L, 1), std (N, L, 1)) as the norm_pix_loss target uses them."""
    target = patchify(imgs, p)
    mean = target.mean(dim=-1, keepdim=True)
    return target, mean, (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS) ** 0.5


@torch.no_grad()
def reconstruct(model: nn.Module, imgs: torch.Tensor, mask_ratio: float = 0.75, seed: int = 0) -> Panels:
    """imgs (N, 3, H, W) normalised -> labelled columns: masked, reconstruction, [prediction only], original."""
    model.eval()
    imgs = imgs.to(next(model.parameters()).device)
    p, grid = model.patch_size, model.grid_size
    noise = torch.rand(imgs.shape[0], model.num_patches, generator=torch.Generator().manual_seed(seed))
    _, pred, mask = model(imgs, mask_ratio, noise.to(imgs.device), return_pred=True)
    pred, mask = pred.float(), mask.float()
    removed = unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * 3), p, grid, 3)  # 1 = removed
    mean = torch.tensor(IMAGENET_MEAN, device=imgs.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=imgs.device).view(1, 3, 1, 1)

    def to_unit(x: torch.Tensor) -> torch.Tensor:
        return (x * std + mean).clamp(0, 1).cpu()

    def paste(prediction: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        return unpatchify(prediction, p, grid, 3) * removed + visible * (1 - removed)

    hidden = removed.cpu()
    masked = to_unit(imgs) * (1 - hidden) + 0.5 * hidden
    if not model.norm_pix_loss:
        return Panels([("masked input", masked), ("reconstruction", to_unit(paste(pred, imgs))),
                       ("original", to_unit(imgs))])
    target, patch_mean, patch_std = _patch_stats(imgs, p)
    denormalised = pred * patch_std + patch_mean
    recon = paste(denormalised, imgs)
    shift, scale = NORMALISED_VIEW
    normalised = paste(pred, unpatchify((target - patch_mean) / patch_std, p, grid, 3))
    on_removed = mask.bool()

    def removed_mse(values: torch.Tensor) -> float:
        return float(((values - target) ** 2).mean(dim=-1)[on_removed].mean())

    notes = [
        "* removed patches de-normalised with the hidden patches' TRUE mean and std, taken from the original: "
        "information the model does not have (norm_pix_loss models predict normalised patches only)",
        f"prediction only: every patch per-patch normalised, shown as {shift} + {scale} x value; kept patches "
        "from the input, removed ones as predicted",
        f"MSE on removed patches (normalised pixels): reconstruction* {removed_mse(denormalised):.4f}; "
        f"true per-patch mean colour alone, no model {removed_mse(patch_mean.expand_as(target)):.4f}",
    ]
    return Panels([("masked input", masked), ("reconstruction*", to_unit(recon)),
                   ("prediction only", (normalised * scale + shift).clamp(0, 1).cpu()), ("original", to_unit(imgs))],
                  notes)


def panel_grid(panels: Panels, gap: int = 4) -> np.ndarray:
    """-> (rows, cols, 3) uint8: a label row, one row of tiles per image, then the wrapped notes."""
    from PIL import Image, ImageDraw

    n, _, h, w = panels.columns[0][1].shape
    zoom = max(1, -(-MIN_TILE // min(h, w)))
    th, tw = h * zoom, w * zoom
    width = len(panels.columns) * (tw + gap) + gap
    chars = max(20, width // 6)  # the default bitmap font is about 6 px per character
    notes = [line for note in panels.notes for line in textwrap.wrap(note, chars)]
    height = HEADER + n * (th + gap) + gap + LINE * len(notes) + (gap if notes else 0)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for col, (label, tiles) in enumerate(panels.columns):
        left = gap + col * (tw + gap)
        draw.text((left, 3), label, fill="black")
        for row in range(n):
            tile = (tiles[row].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            tile = tile.repeat(zoom, axis=0).repeat(zoom, axis=1)
            canvas.paste(Image.fromarray(tile), (left, HEADER + row * (th + gap) + gap))
    top = HEADER + n * (th + gap) + gap
    for i, line in enumerate(notes):
        draw.text((gap, top + i * LINE), line, fill="black")
    return np.asarray(canvas)


def write_reconstructions(model: nn.Module, imgs: torch.Tensor, out: str | Path, mask_ratio: float = 0.75,
                          seed: int = 0) -> Path:
    from PIL import Image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel_grid(reconstruct(model, imgs, mask_ratio, seed))).save(out, format="PNG")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastmae visualize", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="fastmae checkpoint or official full checkpoint ('model' key)")
    p.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
    p.add_argument("--out", default="recon.png", help="PNG to write")
    p.add_argument("--model", default=None, help="model name (default: the one stored in the checkpoint)")
    p.add_argument("--input_size", type=int, default=None, help="default: the checkpoint's or the model's")
    p.add_argument("--norm_pix_loss", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the model predicts normalised patches (default: from the checkpoint)")
    p.add_argument("--mask_ratio", type=float, default=0.75)
    p.add_argument("--max_images", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the masking noise")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        checkpoint = ckpt.load_checkpoint(args.checkpoint)
        saved = checkpoint.get("args") or {}
        saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved  # official files: a Namespace
        name = args.model or saved.get("model")
        if not name:
            raise ValueError(f"{args.checkpoint} does not name its model: pass --model")
        norm_pix = args.norm_pix_loss if args.norm_pix_loss is not None else bool(saved.get("norm_pix_loss", False))
        size = args.input_size or saved.get("input_size") or default_img_size(name)
        model = build_model(name, norm_pix_loss=norm_pix, img_size=size)
        with ckpt.fitting(f"--checkpoint {args.checkpoint}"):
            encoder_only = load_official_checkpoint(model, ckpt.model_state(checkpoint)).encoder_only
        if encoder_only:
            raise ValueError(f"{args.checkpoint} has no decoder weights (encoder-only file?): a reconstruction "
                             "needs a full checkpoint")
        imgs = load_images(image_files(args.images)[: args.max_images], size)
        out = write_reconstructions(model, imgs, args.out, args.mask_ratio, args.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"fastmae visualize: error: {error}", file=sys.stderr)
        return 2
    columns = "masked | reconstruction* | prediction only | original" if norm_pix else \
        "masked | reconstruction | original"
    print(f"wrote {out} ({imgs.shape[0]} images: {columns})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
