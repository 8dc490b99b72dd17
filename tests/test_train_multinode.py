"""Two torchrun "nodes" on 127.0.0.1 (2 CPU processes each, gloo) through the real CLI.

* Resume: a run continued from its own mid-run checkpoint ends bit-identical to the uninterrupted run
  (weights, AdamW moments, losses) with 4 ranks, where gloo's all-reduce order depends on DDP's
  bucket layout unless fastmae's rank-order comm hook is used.
* Failure: when one rank is killed mid-run, or a whole node stops answering, the other ranks stop
  with a one-line error and a non-zero exit within a bounded time (``--dist_timeout``).
"""

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastmae.train import checkpoint as ckpt
from fastmae.train.args import parse_args
from fastmae.train.distributed import ProcessGroupError, World, collective_failures

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--model", "mae_vit_test", "--loader", "synthetic", "--synthetic_size", "64", "--batch_size", "2",
         "--warmup_epochs", "1", "--no_progress", "--device", "cpu"]  # 64 / (2 x 4 ranks): 8 steps an epoch
DIST_TIMEOUT = 20  # s: above the start-up skew of 4 ranks on a loaded 2-core machine


class Node:
    """One torchrun agent (``--node_rank``) of 2 workers; its output goes to a file (no pipe to fill)."""

    def __init__(self, node_rank: int, port: int, flags: list[str], log: Path) -> None:
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        with open(log, "w") as out:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "2",
                 "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                 "-m", "fastmae", "pretrain", *FLAGS, *flags], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.workers: list[int] = []

    def find_workers(self) -> list[int]:
        """The worker pids (torchrun starts each in its own session: they are not in the agent's group)."""
        self.workers = [int(pid) for task in glob.glob(f"/proc/{self.agent.pid}/task/*/children")
                        for pid in Path(task).read_text().split()]
        return self.workers

    def signal(self, signum: int) -> None:
        for pid in [self.agent.pid, *self.workers]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def output(self) -> str:
        return self.log.read_text()


def launch(tmp_path: Path, name: str, *flags: str) -> list[Node]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [Node(rank, port, list(flags), tmp_path / f"{name}-node{rank}.log") for rank in (0, 1)]


def wait(nodes: list[Node], timeout: float) -> None:
    """Wait for the agents; kill everything (workers too) that is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        for node in nodes:
            node.agent.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for node in nodes:
            node.find_workers() if node.agent.poll() is None else None
            node.signal(signal.SIGKILL)
            node.agent.wait()


def train(tmp_path: Path, name: str, *flags: str) -> Path:
    output_dir = tmp_path / name
    nodes = launch(tmp_path, name, "--output_dir", str(output_dir), *flags)
    wait(nodes, timeout=150)
    for node in nodes:
        assert node.agent.returncode == 0, node.output()[-4000:]
    return output_dir


@pytest.mark.slow
def test_two_nodes_resume_is_bit_exact(tmp_path):
    straight = train(tmp_path, "straight", "--epochs", "2", "--max_steps", "4", "--save_every", "2",
                     "--log_every", "1")
    halfway, end = ckpt.list_checkpoints(straight)
    resumed = train(tmp_path, "resumed", "--epochs", "2", "--max_steps", "4", "--log_every", "1",
                    "--resume", str(halfway))
    one, two = torch.load(end, weights_only=True), torch.load(ckpt.list_checkpoints(resumed)[-1], weights_only=True)
    assert one["global_step"] == two["global_step"] == 4
    assert one["epoch_losses"] == two["epoch_losses"] and len(one["epoch_losses"]) == 4
    for name, tensor in one["model"].items():
        assert torch.equal(tensor, two["model"][name]), f"{name} differs after the resume"
    for index, moments in one["optimizer"]["state"].items():
        for key, tensor in moments.items():
            assert torch.equal(tensor, two["optimizer"]["state"][index][key]), f"AdamW {index}.{key} differs"


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["rank_killed", "node_hangs"])
def test_a_lost_rank_stops_the_others_with_one_line(fault, tmp_path):
    output_dir = tmp_path / "run"
    nodes = launch(tmp_path, "run", "--output_dir", str(output_dir), "--epochs", "100", "--log_every", "1",
                   "--dist_timeout", str(DIST_TIMEOUT))
    try:
        log = output_dir / "train.log"
        started = time.monotonic()
        while not (log.exists() and " step 3/" in log.read_text()):  # training is under way
            assert nodes[0].agent.poll() is None and time.monotonic() - started < 120, nodes[0].output()[-4000:]
            time.sleep(0.1)
        victims = nodes[1].find_workers()
        fault_at = time.monotonic()
        if fault == "rank_killed":  # a crash: its sockets close
            os.kill(victims[1], signal.SIGKILL)
        else:  # a node cut off or frozen: nothing closes, only the timeout can tell
            nodes[1].signal(signal.SIGSTOP)
        try:
            code = nodes[0].agent.wait(timeout=DIST_TIMEOUT + 60)
        except subprocess.TimeoutExpired:
            code = None  # still waiting: the failure this test is about
        took = time.monotonic() - fault_at
    finally:
        wait(nodes, timeout=0)
    printed = nodes[0].output()
    assert code not in (0, None) and took < DIST_TIMEOUT + 15, f"exit {code} after {took:.0f} s\n{printed[-4000:]}"
    for rank in (0, 1):  # node 0's ranks: one line each, no traceback of their own
        assert re.search(rf"^fastmae pretrain: stopped: rank {rank} of 4: a collective failed \(.+\): another rank "
                         rf"died, .*--dist_timeout {DIST_TIMEOUT} s\..*--resume auto$", printed, re.M), printed[-4000:]
    assert not re.search(r"^\[rank\d\]: Traceback", printed, re.M), printed[-4000:]


def test_dist_timeout_flag_is_checked():
    assert parse_args(["--dist_timeout", "30"]).dist_timeout == 30
    assert parse_args([]).dist_timeout == 600
    with pytest.raises(ValueError, match="--dist_timeout must be > 0"):
        parse_args(["--dist_timeout", "0"])


def test_only_failed_collectives_become_the_one_line_error():
    four = World(rank=2, local_rank=0, size=4)
    gloo = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[127.0.0.1]:3493. This is typically caused by a remote worker crashing.\nGLHF!")
    with pytest.raises(ProcessGroupError) as caught, collective_failures(four, 20):
        raise gloo
    message = str(caught.value)
    assert message.startswith("rank 2 of 4: a collective failed (Connection closed by peer [127.0.0.1]:3493): ")
    assert "\n" not in message and "--dist_timeout 20 s" in message and message.endswith("--resume auto")
    with pytest.raises(RuntimeError, match="a bug") as caught, collective_failures(four, 20):
        raise RuntimeError("a bug: shapes (2, 3) and (4, 5)")  # not from a collective: keeps its traceback
    assert type(caught.value) is RuntimeError
    with pytest.raises(RuntimeError) as caught, collective_failures(World(), 20):
        raise gloo  # one process has no other rank to blame
    assert type(caught.value) is RuntimeError
