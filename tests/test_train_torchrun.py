"""``torchrun`` on 2 CPU processes (gloo) through the real CLI: DDP, and FSDP2 with a resume."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastmae.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--model", "mae_vit_test", "--loader", "synthetic", "--synthetic_size", "64", "--batch_size", "4",
         "--epochs", "1", "--log_every", "2", "--no_progress", "--device", "cpu"]


def torchrun(*flags: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "fastmae", "pretrain", *FLAGS, *flags], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_torchrun_two_processes(sharding, tmp_path):
    extra = ["--fsdp", "--grad_checkpointing", "--accum_iter", "2"] if sharding == "fsdp" else []
    printed = torchrun(*extra, "--max_steps", "2", "--output_dir", str(tmp_path))
    assert printed.count("fastmae pretrain") == 1  # only rank 0 prints
    batch = "16 = 4 x accum 2 x 2" if sharding == "fsdp" else "8 = 4 x accum 1 x 2"
    assert ("FSDP2" if sharding == "fsdp" else "DDP") in printed and f"effective batch    : {batch}" in printed
    if sharding == "fsdp":
        printed = torchrun(*extra, "--max_steps", "4", "--resume", "auto", "--output_dir", str(tmp_path))
        assert "resumed from" in printed
    state = torch.load(ckpt.list_checkpoints(tmp_path)[-1], weights_only=True)
    assert state["global_step"] == (4 if sharding == "fsdp" else 2)
    assert all(type(v) is torch.Tensor and torch.isfinite(v).all() for v in state["model"].values())  # full tensors
    encoder = torch.load(tmp_path / "encoder.pth", weights_only=True)["model"]
    assert torch.equal(encoder["cls_token"], state["model"]["cls_token"])
