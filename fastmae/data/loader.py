"""``build_loader``: the one entry point of the data layer (what both backends share: :mod:`fastmae.data.epoch`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch

from fastmae._validation import pair
from fastmae.data import IMAGENET_MEAN, IMAGENET_STD
from fastmae.data.epoch import LOADER_BACKENDS, EpochLoader, LoaderConfig
from fastmae.data.files import resolve_files

MAE_CROP_SCALE = (0.2, 1.0)
MAE_CROP_RATIO = (3 / 4, 4 / 3)


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
    rand_augment: str | None = None,
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
    rand_augment: a RandAugment policy applied after the crop and flip (fine-tuning: "rand-m9-mstd0.5-inc1",
        see :mod:`fastmae.eval.randaugment`); with DALI through ``nvidia.dali.auto_aug`` (see
        :mod:`fastmae.eval.dali_randaugment` for how it differs).
    """
    if backend not in LOADER_BACKENDS:
        raise ValueError(f"backend must be one of {LOADER_BACKENDS}, got {backend!r}")
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
    if rand_augment is not None:
        from fastmae.eval.randaugment import parse_policy

        config = dataclasses.replace(config, rand_augment=parse_policy(rand_augment))
    if min(config.std) <= 0:
        raise ValueError(f"std must be positive, got {std!r}")
    files = resolve_files(data_path, file_list, skip_list)
    if backend == "dali":
        from fastmae.data.dali import DaliLoader

        return DaliLoader(files, config, hw_decoder_load=float(hw_decoder_load))
    from fastmae.data.torch_loader import TorchLoader

    return TorchLoader(files, config)
