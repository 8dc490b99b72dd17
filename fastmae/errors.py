"""Errors a user causes and can fix; the CLI prints them as one line (no traceback) and exits 2.

Anything else that escapes a command is a bug and keeps its traceback. ``OSError`` and
``ValueError`` (bad paths, permissions, flag values) count as the user's too; see
:func:`fastmae.cli.main`.
"""

from __future__ import annotations


class FastmaeUserError(Exception):
    """A failure caused by the user's input or environment; the message says what to do."""


class CheckpointError(FastmaeUserError):
    """A checkpoint file that cannot be read, is not the expected kind, or does not fit the model."""


class OutputDirBusyError(FastmaeUserError):
    """Another live run holds the lock of the ``--output_dir``."""


class ScheduleError(FastmaeUserError):
    """The flags describe a run that would train no step."""


class ImageDecodeError(FastmaeUserError, OSError):
    """An image file that cannot be decoded (an OSError too, as the loaders always raised)."""


USER_ERRORS = (FastmaeUserError, OSError, ValueError)  # printed as one line by the CLI
MAX_LINE = 600


def one_line(error: BaseException) -> str:
    """The error's message on one line; for one re-raised by a DataLoader worker, the original's own line."""
    text = str(error).strip() or type(error).__name__
    if "Original Traceback" in text:  # DataLoader's ExceptionWrapper: the original message is the last line
        text = text.splitlines()[-1].split(": ", 1)[-1]
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= MAX_LINE else text[:MAX_LINE] + " ..."
