"""``fastmae pretrain`` end to end on CPU: exact resume, each loader, checkpoints, non-finite stop, import/export."""

import argparse
import importlib.util
import json

import pytest
import torch

from fastmae.train import checkpoint as ckpt
from fastmae.train.pretrain import main

TINY = ["--model", "mae_vit_test", "--batch_size", "4", "--accum_iter", "2", "--epochs", "3", "--warmup_epochs", "1",
        "--blr", "1e-2", "--log_every", "3", "--no_progress", "--device", "cpu", "--num_workers", "0"]


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def data_flags(loader: str, tmp_path_factory) -> list[str]:
    if loader == "synthetic":
        return ["--loader", "synthetic", "--synthetic_size", "32"]
    if not has_module("fastmae.data.loader"):
        pytest.skip("fastmae.data (the loaders) is not in this checkout yet")
    from fastmae.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("images")
    make_dataset(root, 32, seed=1, image_size=(20, 28))
    return ["--loader", loader, "--data_path", str(root)]


def final_state(output_dir) -> dict:
    return torch.load(ckpt.list_checkpoints(output_dir)[-1], weights_only=True)


def assert_identical(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), f"{where}: {key} differs"
        elif isinstance(value, dict):
            assert_identical(value, b[key], f"{where}.{key}")
        elif isinstance(value, list):
            assert len(value) == len(b[key])
            for i, (x, y) in enumerate(zip(value, b[key])):
                assert_identical({i: x}, {i: y}, where)
        else:
            assert value == b[key], f"{where}: {key} differs"


@pytest.mark.parametrize("loader", ["synthetic", "torch"])
def test_resume_mid_epoch_is_bit_exact(loader, tmp_path, tmp_path_factory):
    data = data_flags(loader, tmp_path_factory)  # 4 optimizer steps per epoch; 10 steps cross 2 epoch ends
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main([*TINY, *data, "--max_steps", "10", "--output_dir", str(whole)]) == 0
    assert main([*TINY, *data, "--max_steps", "5", "--output_dir", str(split)]) == 0
    halfway = final_state(split)
    assert (halfway["epoch"], halfway["step_in_epoch"], halfway["global_step"]) == (1, 1, 5)
    assert halfway["data_position"] == {"seed": 0, "epoch": 1, "micro_step": 2}
    assert main([*TINY, *data, "--max_steps", "10", "--output_dir", str(split), "--resume", "auto"]) == 0
    a, b = final_state(whole), final_state(split)
    assert a["global_step"] == b["global_step"] == 10
    assert_identical(a["model"], b["model"], "model")
    assert_identical(a["optimizer"], b["optimizer"], "optimizer")
    assert not torch.equal(a["model"]["blocks.0.attn.qkv.weight"], halfway["model"]["blocks.0.attn.qkv.weight"])


def test_checkpoints_logs_and_exports(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "--loader", "synthetic", "--synthetic_size", "32", "--save_every", "2", "--keep_last", "2",
            "--output_dir", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "effective batch    : 8 = 4 x accum 2 x 1" in printed and "precision          : fp32" in printed
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-00000010.pth", "checkpoint-00000012.pth"]
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries
    state = torch.load(out / "checkpoint-00000012.pth", weights_only=True)
    assert {"model", "optimizer", "train_step", "epoch", "args", "rng", "data_position"} <= state.keys()
    assert state["args"]["model"] == "mae_vit_test" and state["epoch"] == 3
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    assert all({"train_lr", "train_loss"} <= line.keys() and line["steps"] == 4 for line in lines)
    encoder = torch.load(out / "encoder.pth", weights_only=True)["model"]
    assert "blocks.0.attn.qkv.weight" in encoder and not any(k.startswith(("decoder", "mask_token")) for k in encoder)
    assert torch.equal(encoder["cls_token"], state["model"]["cls_token"])

    # an official-style file (pickled Namespace args, 'model' key, encoder only) initialises a new run
    official = tmp_path / "mae_pretrain_vit_test.pth"
    torch.save({"model": encoder, "args": argparse.Namespace(model="mae_vit_test")}, official)
    started = tmp_path / "from_official"
    assert main([*TINY, "--loader", "synthetic", "--synthetic_size", "32", "--max_steps", "1", "--lr", "0",
                 "--init_from", str(official), "--output_dir", str(started)]) == 0
    after = final_state(started)["model"]
    assert torch.equal(after["blocks.1.mlp.fc2.weight"], encoder["blocks.1.mlp.fc2.weight"])  # lr 0 keeps it


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path, capsys):
    # an absurd lr blows the weights up after the first update; every later loss is non-finite and skipped
    code = main([*TINY, "--loader", "synthetic", "--synthetic_size", "32", "--lr", "1e30", "--warmup_epochs", "0",
                 "--log_every", "1", "--max_skipped", "3", "--output_dir", str(tmp_path)])
    assert code == 1
    error = capsys.readouterr().err
    assert "3 optimizer steps in a row had a non-finite loss" in error and "--max_skipped 3" in error


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_cli_smoke_through_each_loader(loader, tmp_path, tmp_path_factory):
    if loader == "dali" and not has_module("nvidia.dali"):
        pytest.skip("nvidia.dali is not installed")
    data = data_flags(loader, tmp_path_factory)
    # the torch run also goes through torch.compile (aot_eager: no inductor in CI) under bf16 autocast
    extra = ["--compile", "--compile_backend", "aot_eager", "--precision", "bf16"] if loader == "torch" else []
    assert main([*TINY, *data, *extra, "--max_steps", "3", "--output_dir", str(tmp_path)]) == 0
    state = final_state(tmp_path)
    assert state["global_step"] == 3 and state["args"]["loader"] == loader
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_bad_arguments_exit_with_a_message(tmp_path, capsys):
    assert main(["--model", "mae_vit_test", "--output_dir", str(tmp_path), "--device", "cpu"]) == 2
    assert "--data_path is required" in capsys.readouterr().err
    assert main([*TINY, "--loader", "synthetic", "--resume", str(tmp_path / "missing.pth"),
                 "--output_dir", str(tmp_path)]) == 2
