"""The kernel report (``python -m fastmae.bench.kernel_report``) passes with the installed triton and with 3.6.

Every Triton launch of the training steps compiles for sm_80 and sm_90, with no spill and at most the register
budget of docs/ops.md. Compiling needs the interpreter off, so the report runs in a subprocess. triton 3.6
(the GPU machine's) runs from a second environment: FASTMAE_TRITON36_PYTHON names its python
(scripts/test.sh makes it with scripts/triton36_venv.sh); without one that test is skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastmae.bench.kernel_report import ARCHS, REGISTER_BUDGET

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"_gather_kernel", "_unshuffle_fwd_kernel", "_unshuffle_bwd_kernel", "_loss_fwd_kernel", "_loss_bwd_kernel",
           "_blend_kernel", "_blend_backward_kernel", "_sum_partials_kernel"}


def run_report(python: str, out_dir: Path) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    env.pop("FASTMAE_BACKEND", None)
    run = subprocess.run([python, "-m", "fastmae.bench.kernel_report", "--out-dir", str(out_dir)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    reports = list(out_dir.glob("kernel_report-triton*.json"))
    assert len(reports) == 1, f"no report written (exit {run.returncode}):\n{run.stderr[-3000:]}"
    report = json.loads(reports[0].read_text())
    problems = [f"{k['kernel']} sm_{k['arch']}: {p}" for k in report["kernels"] for p in k["problems"]]
    assert not problems, "\n".join(problems)
    assert run.returncode == 0, run.stderr[-3000:]
    return report


def check_report(report: dict) -> None:
    compiled = {(k["kernel"], k["arch"]) for k in report["kernels"]}
    assert compiled >= {(name, arch) for name in KERNELS for arch in ARCHS}, "a kernel was not compiled"
    for kernel in report["kernels"]:
        assert 0 < kernel["registers"] <= REGISTER_BUDGET
        assert kernel["global_loads"] and kernel["global_stores"], f"{kernel['kernel']}: no global access read"
        assert all(use["bytes"] > 0 and use["programs"] > 0 for use in kernel["launches"])
        if kernel["kernel"] == "_gather_kernel":
            # the image side in the image's own order: vector loads (gather) and stores (scatter), no 32-bit ones
            image_side = kernel["global_stores" if kernel["constexprs"]["SCATTER"] else "global_loads"]
            assert all(int(width) >= 64 for width in image_side), f"scalar image access: {kernel}"


def test_kernel_report_installed_triton(tmp_path: Path) -> None:
    check_report(run_report(sys.executable, tmp_path))


def test_kernel_report_triton36(tmp_path: Path) -> None:
    python = os.environ.get("FASTMAE_TRITON36_PYTHON", "")
    if not python or not Path(python).exists():
        pytest.skip("no triton 3.6 environment: set FASTMAE_TRITON36_PYTHON (scripts/triton36_venv.sh makes one)")
    report = run_report(python, tmp_path)
    assert report["triton"].startswith("3.6."), report["triton"]
    check_report(report)


def test_budget_is_the_documented_one() -> None:
    ops_doc = (ROOT / "docs" / "ops.md").read_text()
    assert re.search(rf"at most {REGISTER_BUDGET} registers per thread", ops_doc), "docs/ops.md must state the budget"
