"""The optimizer-step loop ``fastmae pretrain``, ``fastmae linprobe`` and ``fastmae finetune`` share.

:class:`StepLoop` runs epochs of ``accum_iter`` micro-batches per optimizer step: it positions the
loader (also mid-epoch after a resume), sets the lr of the schedule every step, calls the train
step, logs every ``--log_every`` steps (the only host read of the step's metrics), closes epochs,
saves checkpoints (``--save_every`` steps, else per epoch) and stops on an agreed signal. What
differs between the commands comes in through the hooks: :meth:`StepLoop.save`,
:meth:`StepLoop._end_epoch`, :meth:`StepLoop._micro_batch`, :meth:`StepLoop._after_step` and
:meth:`StepLoop._log_extras`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fastmae.train.args import Settings
from fastmae.train.optim import set_lr
from fastmae.train.progress import Meter, Reporter, peak_memory_gb
from fastmae.train.schedule import lr_for_step
from fastmae.train.signals import StopRequest, agreed_stop
from fastmae.train.step import NonFiniteLossError, TrainStep


@dataclass
class Position:
    """Where training stands: the epoch in progress and the optimizer steps done (in it and in total)."""

    epoch: int
    step_in_epoch: int
    global_step: int


def schedule_length(num_batches: int, args: argparse.Namespace) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for ``num_batches`` per process, ``--accum_iter``,
    ``--epochs`` and ``--max_steps``; ValueError when an epoch holds no step."""
    steps_per_epoch = num_batches // args.accum_iter
    if steps_per_epoch < 1:
        raise ValueError(f"an epoch has {num_batches} batches per process, fewer than --accum_iter "
                         f"{args.accum_iter}: give a smaller --batch_size or --accum_iter, or more data")
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    return steps_per_epoch, total_steps


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (0.0 when there are none): skipped steps do not count."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / max(len(finite), 1)


class StepLoop:
    """The loop of a trainer. A subclass sets, before :meth:`_init_loop`: ``args``, ``world``, ``settings``,
    ``device``, ``optimizer``, ``batches``, ``train_step``, ``steps_per_epoch``, ``total_steps``, ``reporter``."""

    args: argparse.Namespace
    settings: Settings
    device: torch.device
    optimizer: torch.optim.Optimizer
    train_step: TrainStep
    reporter: Reporter
    steps_per_epoch: int
    total_steps: int
    # the end of the message when too many steps in a row were non-finite
    nonfinite_advice = "Try a lower --blr or --precision bf16."

    def _init_loop(self) -> None:
        self.position = Position(self.args.start_epoch, 0, self.args.start_epoch * self.steps_per_epoch)
        self.losses: list[float] = []  # mean loss of every optimizer step of this run
        self.epoch_losses: list[float] = []  # losses of the epoch in progress (for log.txt)
        self.display_losses: list[float] = []  # losses not yet shown on the console
        self.skipped_total = 0
        self.last_lr = 0.0

    # ---------------------------------------------------------------- hooks
    def save(self) -> Path:
        raise NotImplementedError

    def _end_epoch(self) -> None:
        """Report the epoch in progress (its steps are done); the loop then moves to the next epoch."""
        raise NotImplementedError

    def _micro_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> object:
        """What the train step takes from a loader's ``(images, labels)`` batch: both by default."""
        return batch

    def _after_step(self) -> None:
        """Between optimizer steps, after the log line of the step (if any)."""

    def _log_extras(self) -> dict[str, float]:
        """More values for the progress line and TensorBoard."""
        return {}

    # ---------------------------------------------------------------- metrics
    def _read_metrics(self) -> None:
        """Fetch the step's device-side losses and skip counters (one host sync)."""
        metrics = self.train_step.read_metrics()
        for losses in (self.losses, self.epoch_losses, self.display_losses):
            losses.extend(metrics.losses)
        self.skipped_total = metrics.skipped_total
        if metrics.longest_skip_run >= self.args.max_skipped:
            raise NonFiniteLossError(
                f"{metrics.longest_skip_run} optimizer steps in a row had a non-finite loss (limit --max_skipped "
                f"{self.args.max_skipped}); stopped at step {self.position.global_step}. {self.nonfinite_advice}")

    def _log(self, meter: Meter) -> None:
        """Show the mean loss of the steps since the last log line (non-finite ones left out)."""
        self._read_metrics()
        img_per_s, data_share = meter.interval()
        finite = [v for v in self.display_losses if math.isfinite(v)]
        self.display_losses = []
        self.reporter.step(self.position.global_step, {
            "loss": sum(finite) / len(finite) if finite else float("nan"),
            "lr": self.last_lr,
            "img_per_s": img_per_s,
            "data_share": data_share,
            "peak_mem_gb": peak_memory_gb(self.device),
            **self._log_extras(),
        })

    # ---------------------------------------------------------------- the loop
    def _train(self, meter: Meter, stop: StopRequest | None = None) -> bool:
        """Train from :attr:`position` to the end of the schedule; True when ``stop`` ended it early.

        The losses not yet shown are logged on the way out; the caller saves the last checkpoint.
        """
        args, pos = self.args, self.position
        self.reporter.start(pos.global_step)
        stopping = False
        while pos.epoch < args.epochs and pos.global_step < self.total_steps and not stopping:
            self.batches.set_epoch(pos.epoch, start_step=pos.step_in_epoch * args.accum_iter)
            batches = iter(self.batches)
            while pos.step_in_epoch < self.steps_per_epoch and pos.global_step < self.total_steps:
                micro_batches = []
                for _ in range(args.accum_iter):
                    waited = time.perf_counter()
                    batch = next(batches)
                    meter.wait_data(time.perf_counter() - waited)
                    micro_batches.append(self._micro_batch(batch))
                self.last_lr = lr_for_step(pos.global_step, self.steps_per_epoch, self.settings.lr, args.min_lr,
                                           args.warmup_epochs, args.epochs)
                set_lr(self.optimizer, self.last_lr)
                self.train_step(pos.global_step, micro_batches)
                pos.global_step += 1
                pos.step_in_epoch += 1
                meter.images += self.settings.effective_batch
                if pos.global_step % args.log_every == 0:
                    self._log(meter)
                self._after_step()
                epoch_done = pos.step_in_epoch == self.steps_per_epoch
                if epoch_done:  # a checkpoint at an epoch end then points at the next epoch's start
                    self._end_epoch()
                    pos.epoch += 1
                    pos.step_in_epoch = 0
                if (args.save_every and pos.global_step % args.save_every == 0) or (not args.save_every and epoch_done):
                    self.save()
                if stop is not None:
                    stopping = agreed_stop(stop, pos.global_step, args.log_every, self.world.size, self.device)
                if epoch_done or stopping:
                    break
        self._read_metrics()
        if self.display_losses:
            self._log(meter)
        return stopping
