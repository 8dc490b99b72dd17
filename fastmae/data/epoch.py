"""What both loader backends share: the loader configuration, epoch bookkeeping and normalisation.

Its own module so that :mod:`fastmae.data.loader` (which picks a backend) and the backends
(:mod:`fastmae.data.torch_loader`, :mod:`fastmae.data.dali`) import it without importing each other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fastmae.data.files import FileSet, epoch_order, steps_per_epoch

LOADER_BACKENDS = ("torch", "dali")  # build_loader(backend=...); the trainer adds "synthetic"
MAX_REPLACEMENTS = 16  # --skip_bad: files tried in place of an undecodable one before giving up
SKIP_HINT = "pass --skip_bad (skip_bad=True) to replace undecodable images, or leave files out with --skip_list"

log = logging.getLogger("fastmae.data")


def replacement_indices(file_index: int, num_files: int) -> list[int]:
    """The files tried, in order, in place of undecodable file ``file_index``: the next ones (cyclically)."""
    return [(file_index + k) % num_files for k in range(1, min(num_files, MAX_REPLACEMENTS + 1))]


@dataclass(frozen=True)
class LoaderConfig:
    """Everything that fixes which pixels a loader produces (validated by :func:`build_loader`)."""

    batch_size: int
    input_size: tuple[int, int]
    device: torch.device
    rank: int
    world_size: int
    seed: int
    dtype: torch.dtype
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_prob: float
    num_threads: int
    prefetch: int
    skip_bad: bool = False
    pin_memory: bool | None = None  # None: pin when the device is CUDA (torch backend)
    rand_augment: tuple[int, float, float] | None = None  # (ops, magnitude, magnitude std)


class EpochLoader:
    """Common part of both backends: epoch bookkeeping, the file order and normalisation.

    ``set_epoch(epoch, start_step=0)`` picks the epoch; the next iteration yields batches
    ``start_step .. len(self)-1`` of it (so ``len(self) - start_step`` batches), then start_step
    resets to 0. Like ``DistributedSampler``, iterating again without ``set_epoch`` repeats the epoch.

    With ``config.skip_bad`` an undecodable file is replaced by the next file that decodes (see
    :func:`replacement_indices`); ``bad_files`` maps each such path to why it failed and
    ``replaced`` counts the replacements (a file read twice counts twice).
    """

    backend = ""

    def __init__(self, files: FileSet, config: LoaderConfig):
        self.files = files
        self.config = config
        self.steps = steps_per_epoch(len(files), config.batch_size, config.world_size)
        self.epoch = 0
        self.start_step = 0
        shape = (1, 3, 1, 1)
        self._mean255 = torch.tensor(config.mean, device=config.device).mul(255).view(shape)
        self._std255 = torch.tensor(config.std, device=config.device).mul(255).view(shape)
        self.bad_files: dict[str, str] = {}
        self.replaced = 0

    def record_bad(self, path: str, reason: str, replacement: str) -> None:
        """Count one replaced file; log each bad file once, by name."""
        self.replaced += 1
        if path not in self.bad_files:
            self.bad_files[path] = reason
            log.warning("skipped undecodable image %s (%s); replaced by %s [%d bad file(s) so far]",
                        path, reason, replacement, len(self.bad_files))

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        if (
            isinstance(start_step, bool)
            or not isinstance(start_step, int)
            or not 0 <= start_step <= self.steps
        ):
            raise ValueError(f"start_step must be an int in [0, {self.steps}], got {start_step!r}")
        self.epoch = epoch
        self.start_step = start_step

    def batch_indices(self) -> list[list[int]]:
        """File indices of the batches the next iteration reads (current epoch, from start_step)."""
        cfg = self.config
        order = epoch_order(
            len(self.files),
            cfg.batch_size,
            seed=cfg.seed,
            epoch=self.epoch,
            rank=cfg.rank,
            world_size=cfg.world_size,
        )
        return order[self.start_step :].tolist()

    def normalize(self, images_nhwc_uint8: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 (any device) -> (B, 3, H, W) normalised ``dtype`` on the training device."""
        images = images_nhwc_uint8.to(self.config.device, non_blocking=True).permute(0, 3, 1, 2)
        # the same arithmetic as DALI's crop_mirror_normalize: (x - 255 mean) / (255 std) in fp32
        images = (images.float() - self._mean255) / self._std255
        return images.to(self.config.dtype).contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.batch_indices()
        self.start_step = 0
        return self._iterate(batches)

    def _iterate(self, batches: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError
