"""Evaluation images: resize + centre crop, every file once, sharded over processes in fixed-size batches.

The official evaluation transform: resize the shorter side to ``int(input_size / crop_pct)``
(bicubic; crop_pct 0.875, so 256 for 224) and take the centre ``input_size`` square. Every batch has
``batch_size`` rows: the last one of a process is padded and a ``valid`` mask says which rows count,
so a compiled model sees one shape and every image is counted exactly once over all processes
(the official ``--dist_eval`` sampler repeats a few images to even out the shards instead).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastmae.data import IMAGENET_MEAN, IMAGENET_STD
from fastmae.data.files import FileSet, image_folder
from fastmae.data.transforms import load_rgb

EVAL_CROP_PCT = 0.875


def resize_center_crop(path: str, size: int, crop_pct: float = EVAL_CROP_PCT) -> np.ndarray:
    """(size, size, 3) uint8: shorter side resized to int(size / crop_pct) (bicubic), then the centre square."""
    from PIL import Image

    image = load_rgb(path)
    short = int(size / crop_pct)
    scale = short / min(image.width, image.height)
    width, height = (short, int(image.height * scale)) if image.width <= image.height else \
        (int(image.width * scale), short)
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    top, left = round((height - size) / 2.0), round((width - size) / 2.0)
    return np.ascontiguousarray(np.asarray(resized.crop((left, top, left + size, top + size))))


def normalize_batch(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 on ``device``, ImageNet mean/std (the training arithmetic)."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).mul(255).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).mul(255).view(1, 3, 1, 1)
    return (images.to(device, non_blocking=True).permute(0, 3, 1, 2).float() - mean) / std


def split_folder(data_path: str | os.PathLike, split: str) -> FileSet:
    """The ImageFolder files of ``data_path/split``, with a message naming the flag when absent."""
    folder = Path(data_path) / split
    if not folder.is_dir():
        raise ValueError(f"--data_path {data_path}: no '{split}' folder (expected {folder}/<class>/<image>)")
    return image_folder(folder)


class _Crops(Dataset):
    def __init__(self, files: FileSet, size: int, crop_pct: float) -> None:
        self.files, self.size, self.crop_pct = files, size, crop_pct

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return resize_center_crop(self.files.paths[index], self.size, self.crop_pct), self.files.labels[index]


def _collate(samples: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.stack([s[0] for s in samples])), torch.tensor([s[1] for s in samples])


class EvalLoader:
    """Iterates ``(images (B, 3, S, S), labels (B,), valid (B,) bool)`` on ``device`` over this rank's shard.

    Rank r of w reads files r, r + w, r + 2w, ...; every rank yields the same number of batches, so
    the sums over a pass can be all-reduced (``world_size`` > 1 marks a shard). ``world_size`` 1 reads
    every file.
    """

    def __init__(self, files: FileSet, batch_size: int, input_size: int, *, device: torch.device, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, crop_pct: float = EVAL_CROP_PCT) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.files, self.device, self.world_size = files, device, world_size
        per_rank = math.ceil(len(files) / world_size)
        self.steps = math.ceil(per_rank / batch_size)
        indices = list(range(rank, len(files), world_size))
        padded = self.steps * batch_size
        self.valid = torch.zeros(padded, dtype=torch.bool)
        self.valid[: len(indices)] = True
        self.indices = indices + [indices[0] if indices else 0] * (padded - len(indices))
        self._loader = DataLoader(_Crops(files, input_size, crop_pct), batch_size=batch_size, num_workers=num_workers,
                                  sampler=self.indices, collate_fn=_collate, pin_memory=device.type == "cuda",
                                  generator=torch.Generator())  # leaves the global RNG alone
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for step, (images, labels) in enumerate(self._loader):
            valid = self.valid[step * self.batch_size:(step + 1) * self.batch_size]
            yield (normalize_batch(images, self.device), labels.to(self.device, non_blocking=True),
                   valid.to(self.device, non_blocking=True))


@torch.no_grad()
def extract_features(features: Callable[[torch.Tensor], torch.Tensor],
                     loader: EvalLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, D) float32, labels (n,)) of the valid rows of every batch of ``loader``, on its device."""
    feats, labels = [], []
    for images, target, valid in loader:
        feats.append(features(images).float()[valid])
        labels.append(target[valid])
    return torch.cat(feats), torch.cat(labels)
