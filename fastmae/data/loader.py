"""``build_loader``: the one entry point of the data layer, and what both backends share."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from fastmae._validation import pair
from fastmae.data import IMAGENET_MEAN, IMAGENET_STD
from fastmae.data.files import FileSet, epoch_order, resolve_files, steps_per_epoch

log = logging.getLogger("fastmae.data")

MAE_CROP_SCALE = (0.2, 1.0)
MAE_CROP_RATIO = (3 / 4, 4 / 3)
BACKENDS = ("torch", "dali")
MAX_REPLACEMENTS = 16  # --skip_bad: files tried in place of an undecodable one before giving up
SKIP_HINT = "pass --skip_bad (skip_bad=True) to replace undecodable images, or leave files out with --skip_list"


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
        self.bad_files: dict[str, str] = {}
        self.replaced = 0
        shape = (1, 3, 1, 1)
        self._mean255 = torch.tensor(config.mean, device=config.device).mul(255).view(shape)
        self._std255 = torch.tensor(config.std, device=config.device).mul(255).view(shape)

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

    def record_bad(self, path: str, reason: str, replacement: str) -> None:
        """Count one replaced file; log each bad file once, by name."""
        self.replaced += 1
        if path not in self.bad_files:
            self.bad_files[path] = reason
            log.warning("skipped undecodable image %s (%s); replaced by %s [%d bad file(s) so far]",
                        path, reason, replacement, len(self.bad_files))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.batch_indices()
        self.start_step = 0
        return self._iterate(batches)

    def _iterate(self, batches: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _range(value: Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
    if not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"{name} must be a (min, max) pair, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return lo, hi


def _triple(value: Sequence[float], name: str) -> tuple[float, float, float]:
    if not isinstance(value, Sequence) or len(value) != 3:
        raise TypeError(f"{name} must be 3 floats (R, G, B), got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def build_loader(
    data_path: str | os.PathLike | None,
    batch_size: int,
    input_size: int | tuple[int, int] = 224,
    *,
    backend: str = "torch",
    device: str | torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_threads: int | None = None,
    num_workers: int | None = None,
    prefetch: int = 2,
    dtype: torch.dtype = torch.float32,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    file_list: str | os.PathLike | None = None,
    skip_list: str | os.PathLike | None = None,
    skip_bad: bool = False,
    pin_memory: bool | None = None,
    scale: Sequence[float] = MAE_CROP_SCALE,
    ratio: Sequence[float] = MAE_CROP_RATIO,
    flip_prob: float = 0.5,
    hw_decoder_load: float = 0.65,
    drop_last: bool = True,
) -> EpochLoader:
    """A training loader of MAE-augmented, normalised images.

    Iterating yields ``(images, labels)``: images (B, 3, H, W) ``dtype`` on ``device``, normalised
    with ``mean``/``std`` (given on the [0, 1] scale); labels (B,) int64 on ``device`` (class index;
    unused by pretraining). ``len(loader)`` is the number of steps per epoch; the last incomplete
    batch is always dropped (a smaller batch would make torch.compile recompile).

    data_path: dataset root; reads ``data_path/train`` in ImageFolder layout if it exists, else
        ``data_path`` itself. Ignored when ``file_list`` (as written by ``fastmae scan-dataset``) is given.
    skip_list: a file naming paths to leave out (one per line, or file-list lines).
    skip_bad: replace an image that fails to decode by the next one that decodes, log it by name and
        count it (``loader.bad_files``, ``loader.replaced``), instead of raising.
    pin_memory: torch backend: pin host batches (default: when ``device`` is CUDA); DALI ignores it.
    backend: "torch" (PIL + DataLoader workers) or "dali" (NVIDIA DALI; decodes on the GPU when
        ``device`` is CUDA, on DALI's CPU backend otherwise).
    device: training device (default: "cuda" if available, else "cpu").
    rank, world_size: this process's shard; every rank must use the same seed.
    seed: with the epoch, fixes the file order and (torch backend) every crop and flip.
    num_threads / num_workers (aliases): DALI CPU threads, or DataLoader worker processes
        (0 = decode in the main process); default min(8, cpu count).
    prefetch: batches decoded ahead (DALI queue depth; DataLoader prefetch_factor per worker).
    scale, ratio, flip_prob: the crop area fraction range, aspect range and flip probability
        (MAE: (0.2, 1.0), (3/4, 4/3), 0.5).
    hw_decoder_load: DALI on GPU only: share of JPEGs sent to the hardware decoder (A100/H100).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if drop_last is not True:
        raise ValueError("drop_last must be True: training batches all have the same size")
    if num_threads is not None and num_workers is not None and num_threads != num_workers:
        raise ValueError(f"num_threads ({num_threads}) and num_workers ({num_workers}) are aliases; give one")
    threads = num_threads if num_threads is not None else num_workers
    if threads is None:
        threads = min(8, os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"num_threads must be a non-negative int, got {threads!r}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world_size = _positive_int(world_size, "world_size")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not 0.0 <= float(flip_prob) <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob!r}")
    if not 0.0 <= float(hw_decoder_load) <= 1.0:
        raise ValueError(f"hw_decoder_load must be in [0, 1], got {hw_decoder_load!r}")
    config = LoaderConfig(
        batch_size=_positive_int(batch_size, "batch_size"),
        input_size=pair(input_size, "input_size"),
        device=torch.device(device),
        rank=rank,
        world_size=world_size,
        seed=seed,
        dtype=dtype,
        mean=_triple(mean, "mean"),
        std=_triple(std, "std"),
        scale=_range(scale, "scale", 1e-6, 1.0),
        ratio=_range(ratio, "ratio", 1e-6, float("inf")),
        flip_prob=float(flip_prob),
        num_threads=threads,
        prefetch=_positive_int(prefetch, "prefetch"),
        skip_bad=bool(skip_bad),
        pin_memory=None if pin_memory is None else bool(pin_memory),
    )
    if min(config.std) <= 0:
        raise ValueError(f"std must be positive, got {std!r}")
    files = resolve_files(data_path, file_list, skip_list)
    if backend == "dali":
        from fastmae.data.dali import DaliLoader

        return DaliLoader(files, config, hw_decoder_load=float(hw_decoder_load))
    from fastmae.data.torch_loader import TorchLoader

    return TorchLoader(files, config)
