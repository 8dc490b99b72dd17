"""The device check's result file: ``python -m fastmae.bench.gpu_check_summary OUT_DIR STAGES_TSV``.

Reads what ``benchmarks/gpu_check.sh`` left in OUT_DIR (the stage table, the pytest JUnit files, the benchmark
JSON lines) and writes OUT_DIR/gpu_check.json: device, versions, date and commit, then per stage its exit
status, seconds, limit and results (test counts and failures, benchmark rows). Prints a short table last and
exits 1 if any stage failed or ran out of time.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import torch

from fastmae.bench.record import environment, markdown_table, read_jsonl

_TIMED_OUT = {124, 137}  # timeout's own exit status, and SIGKILL after --kill-after


def junit_summary(path: Path) -> dict[str, Any]:
    """Counts, failed test ids (with the first line of each message) and compile count of one JUnit file."""
    if not path.exists():
        return {"missing": True}
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    failed = []
    for case in suite.iter("testcase"):
        problem = case.find("failure")
        problem = problem if problem is not None else case.find("error")
        if problem is not None:
            message = (problem.get("message") or "").splitlines()
            failed.append(f"{case.get('classname')}::{case.get('name')}: {message[0] if message else ''}"[:400])
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return {**counts, "test_seconds": float(suite.get("time", 0.0)), "failed": failed}


def _rows(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.exists() else []


def summarise(out_dir: Path, stages_tsv: Path) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    summary: dict[str, Any] = {**environment(device, []), "bench": "gpu_check", "stages": []}
    results = {
        "nan": lambda: junit_summary(out_dir / "nan.xml"),
        "ops": lambda: junit_summary(out_dir / "ops.xml"),
        "timings": lambda: {"rows": _rows(out_dir / "ops.jsonl")},
        "step": lambda: {"rows": _rows(out_dir / "train_step.jsonl")},
        "memory": lambda: {"rows": _rows(out_dir / "memory.jsonl")},  # opt-in: GPU_CHECK_MEMORY=1
    }
    for line in stages_tsv.read_text().splitlines():
        name, status, seconds, limit = line.split("\t")
        stage = {"stage": name, "exit": int(status), "seconds": int(seconds), "limit_s": int(limit),
                 "timed_out": int(status) in _TIMED_OUT}
        stage.update(results.get(name, dict)())
        summary["stages"].append(stage)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.split("\n")[0], file=sys.stderr)
        return 2
    out_dir, stages_tsv = Path(args[0]), Path(args[1])
    summary = summarise(out_dir, stages_tsv)
    (out_dir / "gpu_check.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    table = [{"stage": s["stage"], "exit": s["exit"], "seconds": s["seconds"], "limit_s": s["limit_s"],
              "tests": s.get("tests"), "failed": len(s.get("failed", [])) or None,
              "rows": len(s.get("rows", [])) or None} for s in summary["stages"]]
    print(f"{summary['device']} | torch {summary['torch']} | triton {summary['triton']} | {summary['git_commit']}")
    print(markdown_table(table, ["stage", "exit", "seconds", "limit_s", "tests", "failed", "rows"]))
    print(f"wrote {out_dir / 'gpu_check.json'}")
    return 1 if any(s["exit"] != 0 for s in summary["stages"]) else 0


if __name__ == "__main__":
    sys.exit(main())
