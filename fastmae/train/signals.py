"""Clean interrupts: SIGINT (Ctrl-C) and SIGTERM (what schedulers send) become a request to stop.

The trainer checks the request at step boundaries (one process: after every step; several: at the
next ``--log_every`` step, where all ranks agree on it), saves a checkpoint, prints the command that
resumes it and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell does.
A second Ctrl-C stops at once (KeyboardInterrupt). Handlers are installed only in the main thread.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from types import FrameType

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while active, SIGINT/SIGTERM set ``signum`` instead of ending the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the save
        self.signum = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this "
                         "step, then stopping (Ctrl-C again to stop at once, without saving)\n")
        sys.stderr.flush()

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name


def agreed_stop(stop: StopRequest, global_step: int, log_every: int, world_size: int, device: torch.device) -> bool:
    """Whether to stop after ``global_step``: at once in one process; with several, only at log steps,
    where one all-reduce makes every rank agree (and adopt the signal), so no per-step sync is added."""
    if world_size == 1 or not dist.is_initialized():
        return stop.signum is not None
    if global_step % log_every:
        return False
    flag = torch.tensor(stop.signum or 0, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if int(flag) and stop.signum is None:
        stop.signum = int(flag)
    return bool(int(flag))


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal."""
    return 128 + signum


def resume_command(config_path: str, checkpoint: str, world_size: int = 1, nproc_per_node: int = 1) -> str:
    """The command that continues a run from ``checkpoint`` with the settings saved in ``config_path``
    (under torchrun: the same process layout; several nodes also need the first launch's rendezvous flags)."""
    if world_size == 1:
        launcher = "fastmae pretrain"
    else:
        nodes = f"--nnodes {world_size // nproc_per_node} " if world_size > nproc_per_node else ""
        launcher = f"torchrun {nodes}--nproc_per_node {nproc_per_node} -m fastmae pretrain"
    return f"{launcher} --config {shlex.quote(config_path)} --resume {shlex.quote(checkpoint)}"
