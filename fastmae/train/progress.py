"""What the user sees: a progress line, TensorBoard scalars and a JSON-lines log.txt (rank 0 only)."""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated GPU memory on CUDA, else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Meter:
    """Wall time of a logging interval and how much of it was spent waiting for data."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.data_time = 0.0
        self.images = 0

    def wait_data(self, seconds: float) -> None:
        self.data_time += seconds

    def interval(self) -> tuple[float, float]:
        """-> (images per second, data-wait share) since the last call; restarts the interval."""
        now = time.perf_counter()
        elapsed = max(now - self.start, 1e-9)
        rates = (self.images / elapsed, self.data_time / elapsed)
        self.start, self.data_time, self.images = now, 0.0, 0
        return rates


class Reporter:
    """Console progress, TensorBoard and log.txt. Every method is a no-op off rank 0."""

    def __init__(self, *, enabled: bool, output_dir: str, log_dir: str | None, total_steps: int,
                 bar: bool | None = None) -> None:
        self.enabled, self.total_steps = enabled, total_steps
        self.bar = (sys.stdout.isatty() if bar is None else bar) and enabled
        self.log_path = Path(output_dir) / "log.txt"
        self._tensorboard = None
        if enabled:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            self._tensorboard = _summary_writer(log_dir or output_dir)

    def print(self, text: str) -> None:
        if self.enabled:
            if self.bar:
                sys.stdout.write("\n")
            print(text, flush=True)

    def step(self, step: int, values: dict[str, float]) -> None:
        """Show the progress line (or a log line) and write TensorBoard scalars for optimizer step ``step``."""
        if not self.enabled:
            return
        done = step / max(self.total_steps, 1)
        width = 24
        filled = int(width * min(done, 1.0))
        text = (f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total_steps} "
                f"loss {values['loss']:.4f} lr {values['lr']:.3e} {values['img_per_s']:.0f} img/s "
                f"data {100 * values['data_share']:.0f}% mem {values['peak_mem_gb']:.2f} GB")
        if values.get("skipped"):
            text += f" skipped {int(values['skipped'])}"
        if self.bar:
            sys.stdout.write("\r" + text)
            sys.stdout.flush()
        else:
            print(text, flush=True)
        if self._tensorboard is not None:
            for name, value in values.items():
                if math.isfinite(value):
                    self._tensorboard.add_scalar(f"train/{name}", value, step)

    def epoch(self, stats: dict[str, object]) -> None:
        """Append one JSON line to log.txt, like the official ``{"train_lr":..., "train_loss":..., "epoch":...}``."""
        if not self.enabled:
            return
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(stats) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def forget_epochs_from(self, epoch: int) -> None:
        """Drop log.txt lines of epochs >= ``epoch``: a resume from an earlier checkpoint logs them again.

        (A kill between an epoch's log line and its checkpoint would otherwise leave that epoch twice.)
        """
        if not self.enabled or not self.log_path.is_file():
            return
        lines = self.log_path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _logged_epoch(line) is None or _logged_epoch(line) < epoch]
        if len(kept) == len(lines):
            return
        tmp = self.log_path.with_name(f".{self.log_path.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as handle:
            handle.writelines(kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.log_path)

    def close(self) -> None:
        if self.bar:
            sys.stdout.write("\n")
        if self._tensorboard is not None:
            self._tensorboard.close()


def _logged_epoch(line: str) -> int | None:
    """The epoch of one log.txt line (None for a line that is not one of ours)."""
    try:
        epoch = json.loads(line).get("epoch")
    except (ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None


def _summary_writer(log_dir: str):
    """A TensorBoard writer when tensorboard is installed, else None (scalars then go to log.txt only)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=log_dir)
