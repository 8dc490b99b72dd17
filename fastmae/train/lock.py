"""``OutputDirLock``: one run per ``--output_dir``.

The lock is an ``fcntl.flock`` on ``OUTPUT_DIR/.fastmae.lock``: the kernel drops it when the
holder exits in any way (kill -9 included), so a lock left by a dead run is simply taken over.
The file holds the holder's pid, host and start time, only to name it in the error of a second
run. flock also works across hosts on NFS (Linux emulates it with byte-range locks there).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from fastmae.errors import FastmaeUserError, OutputDirBusyError

LOCK_NAME = ".fastmae.lock"


class OutputDirLock:
    """Context manager holding ``output_dir``'s lock; ``stale_note`` says whose dead lock was taken over."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / LOCK_NAME
        self.stale_note: str | None = None
        self._fd: int | None = None

    def acquire(self) -> OutputDirLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise FastmaeUserError(f"--output_dir {self.path.parent}: cannot write there ({error.strerror}); "
                                   "give a writable --output_dir") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise OutputDirBusyError(
                f"--output_dir {self.path.parent} is in use by another fastmae run ({holder}); "
                "wait for it, stop it, or pick another --output_dir") from None
        previous = _read_holder(fd)
        if previous:
            self.stale_note = f"took over the stale lock of a run that ended without releasing it " \
                              f"({_describe(previous)})"
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the record and drop the lock (the file stays: unlinking it would race a new run)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, object]:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "holder unknown"
    started = holder.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, float) else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}{since}"


@contextlib.contextmanager
def own_output_dir(output_dir: str | os.PathLike, world) -> Iterator[None]:
    """A training run's hold on ``output_dir``: rank 0 takes the lock and removes the temporaries of a
    killed save; every rank fails together when it cannot (so none waits for a collective)."""
    from fastmae.train import checkpoint as ckpt
    from fastmae.train.distributed import all_agree

    lock, failure = OutputDirLock(output_dir), None
    if world.is_main:
        try:
            lock.acquire()
        except FastmaeUserError as error:
            failure = error
    if not all_agree(world, failure is None):
        raise failure or OutputDirBusyError(f"rank 0 could not take --output_dir {output_dir}; see its error")
    try:
        if world.is_main:
            if lock.stale_note:
                print(f"{output_dir}: {lock.stale_note}", flush=True)
            for path in ckpt.remove_temporaries(output_dir):
                print(f"removed {path}, left by a save that was killed", flush=True)
        yield
    finally:
        lock.release()
