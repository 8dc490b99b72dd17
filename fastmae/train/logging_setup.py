"""Where the trainer's messages go: the terminal and ``OUTPUT_DIR/train.log``, through ``logging``.

Everything fastmae logs under the ``fastmae`` logger (``fastmae.train``, ``fastmae.data``) is shown
on stdout (warnings prefixed) and appended to ``train.log`` with a timestamp. On a terminal the
progress line redraws in place (records logged with ``extra={"progress": True}``); other messages
start a new line. While a run's handlers are attached the ``fastmae`` logger does not propagate to
the root logger, so nothing is printed twice.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOGGER = "fastmae"
LOG_FILE = "train.log"


class ConsoleHandler(logging.Handler):
    """Writes to the current ``sys.stdout``; progress records overwrite each other when ``redraw``."""

    def __init__(self, redraw: bool) -> None:
        super().__init__()
        self.redraw = redraw
        self._line_open = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname.lower()}: {text}"
            stream = sys.stdout
            if self.redraw and getattr(record, "progress", False):
                stream.write("\r" + text + "\x1b[K")
                self._line_open = True
            else:
                stream.write(("\n" if self._line_open else "") + text + "\n")
                self._line_open = False
            stream.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self._line_open:
            sys.stdout.write("\n")
            self._line_open = False
        super().close()


class RunLogging:
    """Attach the console and file handlers for one run; ``close()`` takes them off again."""

    def __init__(self, output_dir: str, *, redraw: bool) -> None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(output_dir) / LOG_FILE
        self.logger = logging.getLogger(LOGGER)
        self._saved = (self.logger.level, self.logger.propagate)
        console = ConsoleHandler(redraw)
        console.setFormatter(logging.Formatter("%(message)s"))
        to_file = logging.FileHandler(self.path, encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handlers: list[logging.Handler] = [console, to_file]
        # one run logs at a time in a process: drop handlers a run that ended without close() left behind
        for stale in [h for h in self.logger.handlers if getattr(h, "fastmae_run", False)]:
            self.logger.removeHandler(stale)
            stale.close()
        for handler in self.handlers:
            handler.fastmae_run = True  # type: ignore[attr-defined]
            self.logger.addHandler(handler)
        if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.propagate = False

    def close(self) -> None:
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self.handlers = []
        self.logger.setLevel(self._saved[0])
        self.logger.propagate = self._saved[1]
