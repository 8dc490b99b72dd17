"""Experiment trackers the trainer writes scalars to: TensorBoard (when installed) and Weights & Biases
(when asked for with ``--wandb_project``). Each tracker has ``scalars(step, values)`` and ``close()``."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Protocol

log = logging.getLogger("fastmae.train")

TENSORBOARD_MISSING = ("tensorboard is not installed: TensorBoard scalars are off (pip install tensorboard); "
                       "the progress lines, train.log and log.txt are written as usual")


class Tracker(Protocol):
    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train/") -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    def __init__(self, writer) -> None:
        self._writer = writer

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train/") -> None:
        for name, value in values.items():
            if math.isfinite(value):
                self._writer.add_scalar(f"{prefix}{name}", value, step)

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    def __init__(self, run) -> None:
        self._run = run

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train/") -> None:
        self._run.log({f"{prefix}{name}": value for name, value in values.items() if math.isfinite(value)}, step=step)

    def close(self) -> None:
        self._run.finish()


def tensorboard(log_dir: str) -> TensorBoardTracker | None:
    """A TensorBoard tracker writing to ``log_dir``, or None (with a warning) when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning(TENSORBOARD_MISSING)
        return None
    return TensorBoardTracker(SummaryWriter(log_dir=log_dir))


def wandb(project: str, run_dir: str, config: Mapping[str, object]) -> WandbTracker:
    """A Weights & Biases run in ``project`` holding ``config``; ValueError when wandb is not installed."""
    try:
        import wandb as wandb_module
    except ImportError as error:
        raise ValueError(f"--wandb_project {project}: wandb is not installed (pip install wandb)") from error
    return WandbTracker(wandb_module.init(project=project, dir=run_dir, config=dict(config)))


def build_trackers(*, log_dir: str, wandb_project: str | None, config: Mapping[str, object]) -> list[Tracker]:
    trackers: list[Tracker] = []
    board = tensorboard(log_dir)
    if board is not None:
        trackers.append(board)
    if wandb_project:
        trackers.append(wandb(wandb_project, log_dir, config))
    return trackers
