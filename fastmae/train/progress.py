"""What the user sees: progress lines and a summary (terminal + train.log), tracker scalars and a
JSON-lines log.txt (rank 0 only)."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from fastmae.train.logging_setup import RunLogging
from fastmae.train.trackers import Tracker, build_trackers

log = logging.getLogger("fastmae.train")


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
        self.total_images = 0  # over the whole run, for the summary
        self.total_data_time = 0.0

    def wait_data(self, seconds: float) -> None:
        self.data_time += seconds

    def interval(self) -> tuple[float, float]:
        """-> (images per second, data-wait share) since the last call; restarts the interval."""
        now = time.perf_counter()
        elapsed = max(now - self.start, 1e-9)
        rates = (self.images / elapsed, self.data_time / elapsed)
        self.total_images += self.images
        self.total_data_time += self.data_time
        self.start, self.data_time, self.images = now, 0.0, 0
        return rates


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS (days as ``Nd H:MM:SS``)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


@dataclass
class RunTotals:
    """What the end-of-run summary reports besides the meter's totals (updated at log steps only)."""

    first_step: int = 0
    last_loss: float = float("nan")
    peak_mem_gb: float = 0.0


class Reporter:
    """Progress lines, the end-of-run summary, trackers and log.txt. Every method is a no-op off rank 0.

    Text goes through ``logging`` (terminal + ``OUTPUT_DIR/train.log``, see :mod:`logging_setup`);
    scalars go to TensorBoard / W&B (:mod:`trackers`); ``log.txt`` gets one JSON line per epoch.
    """

    def __init__(self, *, enabled: bool, output_dir: str, log_dir: str | None, total_steps: int,
                 steps_per_epoch: int, epochs: int, bar: bool | None = None, wandb_project: str | None = None,
                 config: Mapping[str, object] | None = None) -> None:
        self.enabled, self.total_steps = enabled, total_steps
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.log_path = Path(output_dir) / "log.txt"
        self.totals = RunTotals()
        self._start = self._last_time = time.perf_counter()
        self._last_step = 0
        self._logging: RunLogging | None = None
        self._trackers: list[Tracker] = []
        if enabled:
            self._logging = RunLogging(output_dir, redraw=sys.stdout.isatty() if bar is None else bar)
            self._trackers = build_trackers(log_dir=log_dir or output_dir, wandb_project=wandb_project,
                                            config=config or {})

    def start(self, global_step: int) -> None:
        """Start the clocks at ``global_step`` (after a resume: where it resumed)."""
        self._start = self._last_time = time.perf_counter()
        self._last_step = self.totals.first_step = global_step

    def print(self, text: str) -> None:
        if self.enabled:
            log.info(text)

    def warn(self, text: str) -> None:
        if self.enabled:
            log.warning(text)

    def step(self, step: int, values: dict[str, float]) -> None:
        """Show the progress line and write tracker scalars for optimizer step ``step`` (1-based count done).

        ``values``: loss, lr, img_per_s, data_share, peak_mem_gb, skipped, replaced.
        """
        if not self.enabled:
            return
        now = time.perf_counter()
        per_step = (now - self._last_time) / max(step - self._last_step, 1)
        self._last_time, self._last_step = now, step
        totals = self.totals
        totals.last_loss, totals.peak_mem_gb = values["loss"], max(totals.peak_mem_gb, values["peak_mem_gb"])
        epoch = (step - 1) // max(self.steps_per_epoch, 1)
        done = step / max(self.total_steps, 1)
        filled = int(20 * min(done, 1.0))
        text = (f"epoch {epoch + 1}/{self.epochs} [{'#' * filled}{'.' * (20 - filled)}] step {step}/{self.total_steps} "
                f"loss {values['loss']:.4f} lr {values['lr']:.3e} {values['img_per_s']:.0f} img/s "
                f"data {100 * values['data_share']:.0f}% mem {values['peak_mem_gb']:.2f} GB "
                f"elapsed {clock(now - self._start)} ETA {clock((self.total_steps - step) * per_step)}")
        if values.get("skipped"):
            text += f" skipped {int(values['skipped'])}"
        if values.get("replaced"):
            text += f" replaced {int(values['replaced'])}"
        log.info(text, extra={"progress": True})
        for tracker in self._trackers:
            tracker.scalars(step, values)

    def summary(self, global_step: int, meter: Meter, *, skipped: int, replaced: int, bad_files: int,
                stopped_by: str | None) -> None:
        """The end-of-run lines: steps, time, mean speed, data wait, last loss, memory, skips, replacements."""
        if not self.enabled:
            return
        totals = self.totals
        elapsed = time.perf_counter() - self._start
        steps = global_step - totals.first_step
        how = f"stopped by {stopped_by}" if stopped_by else "finished"
        log.info(f"summary ({how}): {steps} optimizer steps this run (global step {global_step} of "
                 f"{self.total_steps}) in {clock(elapsed)}; {meter.total_images} images, "
                 f"{meter.total_images / max(elapsed, 1e-9):.1f} img/s overall; data wait "
                 f"{100 * meter.total_data_time / max(elapsed, 1e-9):.0f}%; last loss {totals.last_loss:.4f}; "
                 f"peak memory {totals.peak_mem_gb:.2f} GB; non-finite steps skipped {skipped}; "
                 f"undecodable images replaced {replaced} ({bad_files} files)")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Tracker scalars under their full names (e.g. ``test/acc1``, ``knn/top1``) at ``step``."""
        for tracker in self._trackers:
            tracker.scalars(step, values, prefix="")

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
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []
        if self._logging is not None:
            self._logging.close()
            self._logging = None


def _logged_epoch(line: str) -> int | None:
    """The epoch of one log.txt line (None for a line that is not one of ours)."""
    try:
        epoch = json.loads(line).get("epoch")
    except (ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None
