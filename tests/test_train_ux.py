"""``fastmae pretrain`` as users of the official scripts expect it: official flags and checkpoints,
file and skip lists, progress and summary, clean interrupts, config files, trackers, the Python API."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import types

import pytest
import torch

from fastmae.train import checkpoint as ckpt
from fastmae.train.api import default_config, pretrain, resolve_config
from fastmae.train.args import parse_args
from fastmae.train.official import apply_launcher_flags
from fastmae.train.pretrain import main
from fastmae.train.step import TrainStep

TINY = ["--model", "mae_vit_test", "--batch_size", "4", "--accum_iter", "2", "--epochs", "3", "--warmup_epochs", "1",
        "--blr", "1e-2", "--log_every", "2", "--no_progress", "--device", "cpu", "--num_workers", "0"]
SYNTHETIC = ["--loader", "synthetic", "--synthetic_size", "32"]  # 4 optimizer steps per epoch


def last_state(output_dir) -> dict:
    return torch.load(ckpt.list_checkpoints(output_dir)[-1], weights_only=True)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- official flags
def test_official_flags_and_defaults():
    args = parse_args([])
    assert (args.blr, args.pin_mem, args.world_size, args.local_rank, args.dist_url) == (1e-3, True, 1, -1, "env://")
    official_line = ["--pin_mem", "--no_pin_mem", "--world_size", "1", "--local-rank=0", "--dist_on_itp",
                     "--dist_url", "tcp://10.0.0.1:1234", "--blr", "1.5e-4", "--norm_pix_loss"]
    args = parse_args(official_line)
    assert args.pin_mem is False and args.local_rank == 0 and args.dist_on_itp
    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    args.world_size = 4
    apply_launcher_flags(args, env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("3", "4", "1")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.1", "1234")
    env = {}
    apply_launcher_flags(parse_args(["--local_rank", "2"]), env)
    assert env == {"LOCAL_RANK": "2"}
    with pytest.raises(ValueError, match="OMPI_COMM_WORLD_RANK"):
        apply_launcher_flags(parse_args(["--dist_on_itp"]), {})
    with pytest.raises(ValueError, match="--world_size 2: no launcher"):
        apply_launcher_flags(parse_args(["--world_size", "2"]), {})
    with pytest.raises(ValueError, match="--dist_url file:///x"):
        apply_launcher_flags(parse_args(["--dist_url", "file:///x"]), {})


def _official_optimizer(fastmae_state: dict, model: torch.nn.Module) -> dict:
    """Re-index fastmae's AdamW state the way the official script lays it out: [undecayed, decayed]."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(name)
    ours = fastmae_state["param_groups"]
    by_name = dict(zip(decay, ours[0]["params"])) | dict(zip(no_decay, ours[1]["params"]))
    official_order = no_decay + decay
    state = {i: {"step": int(fastmae_state["state"][by_name[n]]["step"]),  # an int, as older torch wrote it
                 "exp_avg": fastmae_state["state"][by_name[n]]["exp_avg"],
                 "exp_avg_sq": fastmae_state["state"][by_name[n]]["exp_avg_sq"]}
             for i, n in enumerate(official_order)}
    groups = [{"params": list(range(len(no_decay))), "weight_decay": 0.0, "lr": 0.1},
              {"params": list(range(len(no_decay), len(official_order))), "weight_decay": 0.05, "lr": 0.1}]
    return {"state": state, "param_groups": groups}


@pytest.mark.parametrize("weights", [[], ["--precision", "bf16", "--weights", "bf16"]], ids=["fp32", "bf16-weights"])
def test_resume_of_an_official_checkpoint_matches_fastmae_resume(weights, tmp_path, capsys):
    from fastmae.train.modeling import build_model

    first = tmp_path / "first"
    assert main([*TINY, *SYNTHETIC, *weights, "--max_steps", "4", "--output_dir", str(first)]) == 0  # one epoch
    saved = last_state(first)
    official = {"model": saved["model"], "epoch": 0, "scaler": {"scale": 65536.0},
                "optimizer": _official_optimizer(saved["optimizer"], build_model("mae_vit_test")),
                "args": argparse.Namespace(model="mae_vit_test")}
    official_path = tmp_path / "checkpoint-0.pth"
    torch.save(official, official_path)
    capsys.readouterr()
    assert main([*TINY, *SYNTHETIC, *weights, "--max_steps", "8", "--resume", str(official_path),
                 "--output_dir", str(tmp_path / "from_official")]) == 0
    printed = capsys.readouterr().out
    assert "official checkpoint: epoch 0 done, continuing at epoch 1, global step 4" in printed
    assert main([*TINY, *SYNTHETIC, *weights, "--max_steps", "8", "--resume", str(ckpt.list_checkpoints(first)[-1]),
                 "--output_dir", str(tmp_path / "from_fastmae")]) == 0
    a, b = last_state(tmp_path / "from_official"), last_state(tmp_path / "from_fastmae")
    assert a["global_step"] == b["global_step"] == 8
    assert_same_tensors(a["model"], b["model"])
    for i, state in b["optimizer"]["state"].items():
        assert_same_tensors(a["optimizer"]["state"][i], state)


def test_resume_refuses_weights_only_files(tmp_path, capsys):
    path = tmp_path / "weights.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 32)}}, path)
    assert main([*TINY, *SYNTHETIC, "--resume", str(path), "--output_dir", str(tmp_path / "run")]) == 2
    assert "use --init_from" in capsys.readouterr().err


# ---------------------------------------------------------------- file lists, skip lists, bad files
@pytest.fixture(scope="module")
def dirty_dataset(tmp_path_factory):
    from fastmae.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("dirty")
    make_dataset(root, 32, seed=1, image_size=(20, 28))
    bad = next((root / "train").iterdir()) / "zz_corrupt.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)
    return root, bad


@pytest.mark.timeout(120)
def test_skip_bad_file_list_and_skip_list_through_pretrain(dirty_dataset, tmp_path, capsys):
    from fastmae.data.scan import main as scan

    root, bad = dirty_dataset
    data = ["--loader", "torch", "--data_path", str(root), "--max_steps", "4"]
    run = tmp_path / "skip_bad"
    assert main([*TINY, *data, "--skip_bad", "--output_dir", str(run)]) == 0
    log_text = (run / "train.log").read_text()
    assert f"skipped undecodable image {bad}" in log_text
    assert "undecodable images replaced 1 (1 files)" in log_text
    # scan-dataset's clean list is what --file_list takes; a skip list leaves the bad file out too
    clean = tmp_path / "clean.txt"
    assert scan([str(root), "--output", str(clean), "--workers", "1"]) == 1
    capsys.readouterr()
    assert main([*TINY, "--loader", "torch", "--file_list", str(clean), "--max_steps", "4",
                 "--output_dir", str(tmp_path / "listed")]) == 0
    skip = tmp_path / "skip.txt"
    skip.write_text(f"{bad}\n")
    assert main([*TINY, *data, "--skip_list", str(skip), "--output_dir", str(tmp_path / "skipped")]) == 0
    assert "skipped undecodable" not in (tmp_path / "skipped" / "train.log").read_text()


# ---------------------------------------------------------------- progress, log file, summary
def test_progress_lines_summary_and_log_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, *SYNTHETIC, "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 6  # every 2 of 12 steps
    assert lines[0].startswith("epoch 1/3 [") and "step 2/12" in lines[0]
    assert lines[-1].startswith("epoch 3/3 [") and "step 12/12" in lines[-1]
    for part in ("loss ", "lr ", " img/s", "data ", "mem ", "elapsed 0:00:", "ETA 0:00:"):
        assert part in lines[0], part
    summary = next(line for line in printed.splitlines() if line.startswith("summary (finished)"))
    assert "12 optimizer steps this run" in summary and "96 images" in summary and "last loss" in summary
    logged = (out / "train.log").read_text()
    assert lines[0] in logged and summary in logged and "effective batch" in logged


# ---------------------------------------------------------------- SIGINT / SIGTERM
def _signal_at_step(monkeypatch, signum: int, at_step: int) -> None:
    original = TrainStep.__call__

    def step_then_signal(self, step, micro_batches):
        original(self, step, micro_batches)
        if step == at_step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(TrainStep, "__call__", step_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_prints_the_resume_command_and_exits_non_zero(signum, tmp_path, capsys, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*TINY, *SYNTHETIC, "--output_dir", str(whole)]) == 0
    capsys.readouterr()
    with monkeypatch.context() as patch:
        _signal_at_step(patch, signum, at_step=4)  # during the 5th step of 12, mid-epoch 1
        assert main([*TINY, *SYNTHETIC, "--output_dir", str(cut)]) == 128 + signum
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    captured = capsys.readouterr()
    name = signal.Signals(signum).name
    assert f"{name} received" in captured.err
    assert f"stopped by {name} at step 5" in captured.out and "summary (stopped by" in captured.out
    halfway = last_state(cut)
    assert (halfway["global_step"], halfway["epoch"], halfway["step_in_epoch"]) == (5, 1, 1)
    assert not (cut / "encoder.pth").exists()
    command = captured.out.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    words = shlex.split(command)
    assert words[:2] == ["fastmae", "pretrain"]
    assert main(words[2:]) == 0
    printed = capsys.readouterr().out
    assert f"resumed from {cut / 'checkpoint-00000005.pth'} (fastmae checkpoint: epoch 1, step 1 of 4" in printed
    assert_same_tensors(last_state(whole)["model"], last_state(cut)["model"])


# ---------------------------------------------------------------- config files
def test_config_file_in_cli_flags_override_and_saved_config_round_trips(tmp_path, capsys):
    config = tmp_path / "my.yaml"
    config.write_text("model: mae_vit_test\nbatch_size: 4\naccum_iter: 2\nepochs: 2\nwarmup_epochs: 0\n"
                      "loader: synthetic\nsynthetic_size: 32\nlog_every: 100\ndevice: cpu\nno_progress: true\n"
                      "blr: 0.02\n")
    out = tmp_path / "run"
    assert main(["--config", str(config), "--epochs", "1", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lr                 : 0.000625 = blr 0.02 x 8 / 256" in printed and "4 optimizer steps" in printed
    saved = out / "config.yaml"
    assert saved.is_file()
    again = resolve_config(saved)
    assert again.epochs == 1 and again.blr == 0.02 and again.model == "mae_vit_test"
    from fastmae.train.config import saved_flags

    assert saved_flags(again) == saved_flags(parse_args(["--config", str(saved)]))
    as_json = tmp_path / "my.json"
    as_json.write_text(json.dumps({"model": "mae_vit_test", "epochs": "5", "mask_ratio": 0.5}))
    assert parse_args(["--config", str(as_json)]).epochs == 5


@pytest.mark.parametrize(("content", "match"), [
    ("batchsize: 4\n", "unknown key 'batchsize'.*did you mean 'batch_size'"),
    ("epochs: many\n", "epochs: expected int"),
    ("norm_pix_loss: 1\n", "norm_pix_loss: expected true or false"),
    ("loader: pil\n", "loader: expected one of"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_config_files_are_named(content, match, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    assert main(["--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert str(config) in error
    import re

    assert re.search(match, error), error


def test_config_is_json_without_pyyaml(tmp_path, monkeypatch):
    from fastmae.train import config as config_module

    monkeypatch.setattr(config_module, "yaml_available", lambda: False)
    result = pretrain({"model": "mae_vit_test", "loader": "synthetic", "synthetic_size": 32, "epochs": 1,
                       "batch_size": 8, "device": "cpu", "no_progress": True}, output_dir=str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["batch_size"] == 8 and saved["resolved"]["effective_batch"] == 8 and result.global_step == 4
    (tmp_path / "x.yaml").write_text("epochs: 1\n")
    with pytest.raises(ValueError, match="reading YAML needs PyYAML"):
        config_module.read_config_file(tmp_path / "x.yaml")


# ---------------------------------------------------------------- the Python API
def test_python_api_and_the_cli_calls_it(tmp_path, monkeypatch):
    defaults = default_config()
    assert defaults["blr"] == 1e-3 and defaults["model"] == "mae_vit_large_patch16" and "config" not in defaults
    result = pretrain({"model": "mae_vit_test", "loader": "synthetic"}, synthetic_size=32, batch_size=8,
                      epochs=2, max_steps=3, device="cpu", no_progress=True, output_dir=str(tmp_path / "api"))
    assert result.global_step == 3 and len(result.losses) == 3 and result.stopped_by is None
    assert result.checkpoint == ckpt.checkpoint_path(tmp_path / "api", 3)
    with pytest.raises(ValueError, match="unknown key 'epoch'"):
        resolve_config(epoch=3)
    with pytest.raises(ValueError, match="--mask_ratio must be in"):
        resolve_config(mask_ratio=1.5)
    seen = []
    import fastmae.train.api as api

    monkeypatch.setattr(api, "pretrain", lambda args: seen.append(args) or result)
    assert main(["--model", "mae_vit_test", "--epochs", "7"]) == 0
    assert isinstance(seen[0], argparse.Namespace) and seen[0].epochs == 7


# ---------------------------------------------------------------- trackers
def test_tensorboard_missing_is_a_warning(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main([*TINY, *SYNTHETIC, "--max_steps", "1", "--output_dir", str(tmp_path)]) == 0
    assert "warning: tensorboard is not installed" in capsys.readouterr().out
    assert not list(tmp_path.glob("events.out.tfevents*"))


def test_wandb_logger(tmp_path, capsys, monkeypatch):
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    assert main([*TINY, *SYNTHETIC, "--max_steps", "4", "--wandb_project", "mae", "--output_dir", str(tmp_path)]) == 0
    assert calls[0][0] == "init" and calls[0][1]["project"] == "mae" and calls[0][1]["config"]["blr"] == 1e-2
    logged = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logged] == [2, 4] and {"train/loss", "train/lr", "train/img_per_s"} <= logged[0][2].keys()
    assert calls[-1] == ("finish",)
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main([*TINY, *SYNTHETIC, "--wandb_project", "mae", "--output_dir", str(tmp_path / "b")]) == 2
    assert "wandb is not installed (pip install wandb)" in capsys.readouterr().err
