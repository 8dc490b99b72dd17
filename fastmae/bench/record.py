"""Where a measurement came from, and how results are written (JSON lines + markdown).

Every benchmark row is ``{**environment(device), "bench": <kind>, ...}``; the benchmarks/ scripts
append rows to ``default_results_path(<kind>)`` (benchmarks/results/<kind>.jsonl) and
``fastmae.bench.report`` renders every kind from there.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD's full hash, with ``-dirty`` when tracked files have changes; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd or Path(__file__).parent, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The fields every result row carries: device, versions, commit, UTC date and the command line.

    argv: the arguments the benchmark parsed (default ``sys.argv[1:]``), so a ``main(argv)`` called
    from Python records what it ran rather than the caller's command line.
    """
    from fastmae import __version__

    command = [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "fastmae": __version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(command),
    }


def default_results_dir() -> Path:
    """benchmarks/results of the source checkout this package runs from, else ./benchmarks/results."""
    root = _SOURCE_ROOT if (_SOURCE_ROOT / "benchmarks").is_dir() else Path.cwd()
    return root / "benchmarks" / "results"


def default_results_path(bench: str) -> Path:
    """Where a benchmark kind's rows are appended by default: benchmarks/results/<bench>.jsonl."""
    return default_results_dir() / f"{bench}.jsonl"


def add_out_argument(parser: argparse.ArgumentParser, bench: str) -> None:
    """``--out``: the JSON-lines file a benchmark script appends its rows to (default: its kind's results file)."""
    parser.add_argument("--out", type=Path, default=default_results_path(bench),
                        help=f"JSON-lines file to append the rows to (default benchmarks/results/{bench}.jsonl)")


def append_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Append one JSON object per row to ``path`` (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` with the row keys ``columns`` as headers; missing values show '-'."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
