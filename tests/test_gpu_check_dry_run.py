"""``GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh``: the device check's stages on CPU with tiny shapes.

The same script the GPU machine runs, so a broken stage shows here before it costs device time: every stage
must finish in its limit and leave its results in gpu_check.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "GPU_CHECK_DRY_RUN": "1", "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    summary_path = tmp_path / "gpu_check.json"
    assert summary_path.exists(), f"no summary (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}"
    summary = json.loads(summary_path.read_text())
    for field in ("device", "torch", "triton", "git_commit", "date"):
        assert summary[field], f"summary lacks {field}"
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["install", "nan", "ops", "timings", "step"]
    failed = {name: s["exit"] for name, s in stages.items() if s["exit"] != 0}
    assert not failed, f"stages failed: {failed}\n{run.stdout[-4000:]}"
    assert stages["nan"]["tests"] > 0 and stages["ops"]["tests"] > 0
    timed = {row["provider"] for row in stages["timings"]["rows"] if row["status"] == "ok"}
    assert timed >= {"reference", "torch", "copy_"}
    assert {row["provider"] for row in stages["step"]["rows"]} == {"reference-published", "reference-modern",
                                                                   "fastmae"}
    assert run.returncode == 0
