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

from fastmae.data.epoch import SKIP_HINT, EpochLoader, LoaderConfig, replacement_indices
from fastmae.data.files import FileSet
from fastmae.data.transforms import crop_resize_flip

# a sample is addressed by (file index, epoch, position of the sample in this rank's epoch)
SampleKey = tuple[int, int, int]
# --skip_bad: (bad path, why, the path read instead) for each replacement a sample needed
Replacements = tuple[tuple[str, str, str], ...]


class _AugmentedImages(Dataset):
    def __init__(self, files: FileSet, config: LoaderConfig):
        self.files = files
        self.config = config

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, file_index: int, key: SampleKey) -> np.ndarray:
        _, epoch, position = key
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, epoch, cfg.rank, position])
        pixels = crop_resize_flip(
            self.files.paths[file_index], rng, cfg.input_size, cfg.scale, cfg.ratio, cfg.flip_prob
        )
        if cfg.rand_augment is not None:
            from fastmae.eval.randaugment import rand_augment

            pixels = rand_augment(pixels, rng, *cfg.rand_augment)
        return pixels

    def __getitem__(self, key: SampleKey) -> tuple[np.ndarray, int, Replacements]:
        file_index = key[0]
        try:
            return self._decode(file_index, key), self.files.labels[file_index], ()
        except OSError as error:
            if not self.config.skip_bad:
                raise OSError(f"{error}; {SKIP_HINT}") from error
            first_error = error
        failed = [(self.files.paths[file_index], str(first_error))]
        for candidate in replacement_indices(file_index, len(self.files)):
            try:
                pixels = self._decode(candidate, key)
            except OSError as error:
                failed.append((self.files.paths[candidate], str(error)))
                continue
            used = self.files.paths[candidate]
            return pixels, self.files.labels[candidate], tuple((bad, why, used) for bad, why in failed)
        raise OSError(f"--skip_bad: {failed[0][0]} and the {len(failed) - 1} files after it all fail to decode "
                      f"(last: {failed[-1][1]}); run 'fastmae scan-dataset' on this dataset")


def _collate(samples: list[tuple[np.ndarray, int, Replacements]]) -> tuple[torch.Tensor, torch.Tensor, Replacements]:
    images = torch.from_numpy(np.stack([pixels for pixels, _, _ in samples]))
    labels = torch.tensor([label for _, label, _ in samples], dtype=torch.int64)
    return images, labels, tuple(item for _, _, replaced in samples for item in replaced)


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
            pin_memory=config.device.type == "cuda" if config.pin_memory is None else config.pin_memory,
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
        for images, labels, replaced in self._dataloader:
            for bad, reason, replacement in replaced:
                self.record_bad(bad, reason, replacement)
            yield self.normalize(images), labels.to(self.config.device, non_blocking=True)
