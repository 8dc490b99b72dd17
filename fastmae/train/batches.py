"""The trainer's data sources, behind one interface.

Every source is iterable over ``(images (B, 3, H, W) on the device, labels)``, has ``len()`` =
micro-steps per epoch and ``set_epoch(epoch, start_step)``; its order is a function of
(seed, epoch, rank), so a run resumed at (epoch, step) sees the same batches.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Protocol

import torch


class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, start_step: int = 0) -> None: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class SyntheticBatches:
    """Random normalised images made on the device: no decoding, for measuring the step alone.

    Batch ``step`` of ``epoch`` on ``rank`` is drawn from a generator seeded with
    (seed, epoch, rank, step), so any position can be replayed.
    """

    def __init__(self, num_images: int, batch_size: int, input_size: int, *, device: torch.device,
                 rank: int = 0, world_size: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        self.steps = num_images // (batch_size * world_size)
        if self.steps < 1:
            raise ValueError(f"{num_images} synthetic images make no full batch of {batch_size} x {world_size}")
        self.batch_size, self.input_size = batch_size, input_size
        self.device, self.rank, self.seed, self.dtype = device, rank, seed, dtype
        self.epoch, self.start_step = 0, 0
        self._generator = torch.Generator(device)

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step must be in [0, {self.steps}], got {start_step}")
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first, self.start_step = self.start_step, 0
        shape = (self.batch_size, 3, self.input_size, self.input_size)
        labels = torch.zeros(self.batch_size, dtype=torch.int64, device=self.device)
        for step in range(first, self.steps):
            self._generator.manual_seed(hash((self.seed, self.epoch, self.rank, step)) & (2**63 - 1))
            images = torch.randn(shape, generator=self._generator, device=self.device)
            yield images.to(self.dtype), labels


def build_batches(args: argparse.Namespace, loader: str, device: torch.device, rank: int, world_size: int,
                  input_size: int) -> BatchSource:
    """The data source chosen by ``--loader`` for this process's shard."""
    if loader == "synthetic":
        return SyntheticBatches(args.synthetic_size, args.batch_size, input_size, device=device, rank=rank,
                                world_size=world_size, seed=args.seed)
    from fastmae.data import build_loader

    return build_loader(args.data_path, args.batch_size, input_size, backend=loader, device=device, rank=rank,
                        world_size=world_size, seed=args.seed, num_workers=args.num_workers,
                        file_list=args.file_list, skip_list=args.skip_list, skip_bad=args.skip_bad,
                        pin_memory=args.pin_mem and device.type == "cuda")
