"""The torch backend: PIL decoding in DataLoader workers, our own RandomResizedCrop, no torchvision.

Workers return uint8 (B, H, W, 3) batches (4x less to pin and copy than float); normalisation
runs on the training device. Each sample's crop and flip come from a generator seeded by
(seed, epoch, position in the epoch), not from worker state, so the batches are bit-identical
for any number of workers and after a resume at any step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastmae.data.epoch import EpochLoader, LoaderConfig
from fastmae.data.files import FileSet
from fastmae.data.transforms import crop_resize_flip

# a sample is addressed by (file index, epoch, position of the sample in this rank's epoch)
SampleKey = tuple[int, int, int]


class _AugmentedImages(Dataset):
    def __init__(self, files: FileSet, config: LoaderConfig):
        self.files = files
        self.config = config

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: SampleKey) -> tuple[np.ndarray, int]:
        file_index, epoch, position = key
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, epoch, cfg.rank, position])
        pixels = crop_resize_flip(
            self.files.paths[file_index], rng, cfg.input_size, cfg.scale, cfg.ratio, cfg.flip_prob
        )
        if cfg.rand_augment is not None:
            from fastmae.eval.randaugment import rand_augment

            pixels = rand_augment(pixels, rng, *cfg.rand_augment)
        return pixels, self.files.labels[file_index]


def _collate(samples: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([pixels for pixels, _ in samples]))
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return images, labels


class _EpochBatches:
    """The batch sampler: reads the batches its loader planned for the current iteration."""

    def __init__(self) -> None:
        self.batches: list[list[SampleKey]] = []

    def __iter__(self) -> Iterator[list[SampleKey]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class TorchLoader(EpochLoader):
    backend = "torch"

    def __init__(self, files: FileSet, config: LoaderConfig):
        super().__init__(files, config)
        self._sampler = _EpochBatches()
        workers = config.num_threads
        self._dataloader = DataLoader(
            _AugmentedImages(files, config),
            batch_sampler=self._sampler,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=config.device.type == "cuda",
            prefetch_factor=config.prefetch if workers > 0 else None,
            persistent_workers=workers > 0,
            # the DataLoader draws its worker base seed from this generator, not torch's global one, so
            # starting an epoch leaves the global RNG (drop path, the tests' draws) untouched
            generator=torch.Generator(),
        )

    def _iterate(self, batches: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batch_size = self.config.batch_size
        first = self.steps - len(batches)
        self._sampler.batches = [
            [
                (file_index, self.epoch, (first + step) * batch_size + slot)
                for slot, file_index in enumerate(batch)
            ]
            for step, batch in enumerate(batches)
        ]
        for images, labels in self._dataloader:
            yield self.normalize(images), labels.to(self.config.device, non_blocking=True)
