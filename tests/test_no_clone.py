"""The compiled training step, and the op paths it does not take, copy none of their kernels' inputs (images,
pred, ids, mask, weights).

torch clones every tensor its Triton IR analysis says a kernel writes (``fastmae.bench.clone_audit``). The
audit runs in a subprocess: it needs the compiled kernels' IR, so the interpreter must be off there, while
this test session runs with TRITON_INTERPRET=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compiled_step_clones_no_kernel_input() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    env.pop("FASTMAE_BACKEND", None)
    run = subprocess.run([sys.executable, "-m", "fastmae.bench.clone_audit"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.stdout.strip(), f"the audit printed nothing:\n{run.stderr[-3000:]}"
    audit = json.loads(run.stdout)
    kernels = {graph: {launch["kernel"] for launch in launches} for graph, launches in audit.items()}
    # the audit saw the step's launches (it is not vacuous) ...
    assert {"_gather_kernel", "_unshuffle_fwd_kernel", "_loss_fwd_kernel"} <= kernels["forward"]
    assert {"_unshuffle_bwd_kernel", "_loss_bwd_kernel"} <= kernels["backward"]
    # the paths the step does not take: the image gradients (scatter, loss source gradient), an explicit target
    assert {"_gather_kernel", "_loss_bwd_kernel"} <= kernels["ops_backward"]
    # ... and none of them makes torch copy an input
    copies = {f"{graph}/{launch['kernel']}": launch["cloned_inputs"] for graph, launches in audit.items()
              for launch in launches if launch["cloned_inputs"]}
    assert not copies, f"kernels torch believes write their inputs (cloned every step): {copies}"
    assert run.returncode == 0, run.stderr[-3000:]
