"""``fastmae linprobe`` / ``fastmae finetune`` end to end on a tiny labelled dataset (CPU, eager), exact
resume, and pretrained weights in every layout (encoder-only, official full with its pickled args,
fastmae checkpoint)."""

import argparse
import json

import pytest
import torch

from fastmae.cli import main as cli_main
from fastmae.data.synthetic import make_labelled_dataset
from fastmae.eval.vit import build_classifier
from fastmae.eval.weights import load_pretrained, resize_pos_embed
from fastmae.models import create_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    return make_labelled_dataset(root, 48, 21, seed=0, image_size=(16, 24))


def _flags(recipe, data, out, *extra):
    return [recipe, "--model", "vit_test", "--data_path", str(data), "--nb_classes", "3", "--batch_size", "8",
            "--epochs", "2", "--warmup_epochs", "1", "--output_dir", str(out), "--num_workers", "0",
            "--log_every", "2", "--no_progress", *extra]


FINETUNE_EXTRA = ("--mixup", "0.8", "--cutmix", "1.0", "--reprob", "0.5", "--drop_path", "0.2")


def _final(out):
    state = torch.load(sorted(out.glob("checkpoint-*.pth"))[-1], weights_only=True)
    return state["model"], state["optimizer"]["state"]


@pytest.mark.parametrize("recipe, extra", [("linprobe", ("--accum_iter", "2")), ("finetune", FINETUNE_EXTRA)])
def test_runs_logs_official_keys_and_resumes_exactly(recipe, extra, data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli_main(_flags(recipe, data, full, *extra)) == 0
    lines = [json.loads(line) for line in (full / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    for line in lines:
        assert {"train_lr", "train_loss", "test_loss", "test_acc1", "test_acc5", "epoch"} <= set(line)
        assert 0 <= line["test_acc1"] <= line["test_acc5"] == 100.0  # 3 classes: top-5 holds them all
        assert line["test_acc1"] * 21 / 100 == pytest.approx(round(line["test_acc1"] * 21 / 100))  # all 21 counted
    # stop after 3 steps (inside epoch 0 for finetune, in epoch 1 for linprobe), then resume to the end
    steps = "3"
    assert cli_main(_flags(recipe, data, part, *extra, "--max_steps", steps, "--save_every", "1",
                           "--keep_last", "5")) == 0
    resume_from = part / f"checkpoint-{int(steps):08d}.pth"
    assert cli_main(_flags(recipe, data, part, *extra, "--resume", str(resume_from))) == 0
    (model_a, optim_a), (model_b, optim_b) = _final(full), _final(part)
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    for index in optim_a:
        for name, value in optim_a[index].items():
            assert torch.equal(value, optim_b[index][name]), (index, name)
    if recipe == "linprobe":  # the frozen encoder did not move
        torch.manual_seed(0)  # the run's --seed
        fresh = build_classifier("vit_test", 3, global_pool=False, linear_probe=True).state_dict()
        assert torch.equal(model_a["blocks.0.attn.qkv.weight"], fresh["blocks.0.attn.qkv.weight"])


def test_eval_only_reads_the_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(_flags("linprobe", data, out, "--max_steps", "2", "--accum_iter", "1")) == 0
    capsys.readouterr()
    ckpt = sorted(out.glob("checkpoint-*.pth"))[-1]
    assert cli_main(_flags("linprobe", data, tmp_path / "eval", "--eval", "--resume", str(ckpt),
                           "--accum_iter", "1")) == 0
    assert "accuracy of the network on the 21 test images" in capsys.readouterr().out


def test_bad_flags_give_a_message(data, tmp_path, capsys):
    assert cli_main(_flags("finetune", data, tmp_path, "--model", "vit_gigantic")) == 2
    assert "unknown encoder" in capsys.readouterr().err
    assert cli_main(_flags("linprobe", data, tmp_path, "--finetune", str(tmp_path / "absent.pth"))) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert cli_main(_flags("linprobe", tmp_path, tmp_path)) == 2
    assert "class sub-folders" in capsys.readouterr().err
    assert cli_main(_flags("linprobe", data, tmp_path, "--loader", "synthetic")) == 2
    assert "no labels" in capsys.readouterr().err


def test_pretrained_weights_in_every_layout(tmp_path):
    torch.manual_seed(1)
    mae = create_model("mae_vit_test")
    encoder = mae.encoder_state_dict()
    files = {
        "encoder-only": {"model": encoder},  # encoder.pth and the official mae_pretrain_vit_*.pth
        "official-full": {"model": mae.state_dict(), "optimizer": {}, "epoch": 799, "scaler": {},
                          "args": argparse.Namespace(model="mae_vit_test")},  # pickled Namespace, as released
        "fastmae": {"format": "fastmae-checkpoint-1", "model": mae.state_dict(), "epoch": 1},
    }
    for kind, content in files.items():
        path = tmp_path / f"{kind}.pth"
        torch.save(content, path)
        for global_pool in (False, True):
            torch.manual_seed(2)
            model = build_classifier("vit_test", 3, global_pool=global_pool)
            loaded = load_pretrained(model, path)
            state = model.state_dict()
            for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.mlp.fc2.bias"):
                assert torch.equal(state[key], encoder[key]), (kind, key)
            assert global_pool or torch.equal(state["norm.weight"], encoder["norm.weight"])
            expected_missing = {"head.weight", "head.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if global_pool
                                                               else set())
            assert set(loaded.missing_keys) == expected_missing, kind
            assert loaded.source == ("encoder-only" if kind == "encoder-only" else "full (decoder dropped)")
    with pytest.raises(ValueError, match=r"lacks \d+ encoder tensors"):
        load_pretrained(build_classifier("vit_tiny", 3), tmp_path / "encoder-only.pth")


def test_pos_embed_resize_keeps_cls_and_identity():
    pos = torch.randn(1, 1 + 16, 8)
    assert resize_pos_embed(pos, (4, 4)) is pos
    bigger = resize_pos_embed(pos, (6, 6))
    assert bigger.shape == (1, 37, 8) and torch.equal(bigger[:, :1], pos[:, :1])


def test_pretrain_knn_monitor(data, tmp_path, capsys):
    flags = ["pretrain", "--model", "mae_vit_test", "--data_path", str(data), "--batch_size", "8", "--epochs", "1",
             "--warmup_epochs", "0", "--output_dir", str(tmp_path), "--num_workers", "0", "--no_progress",
             "--knn_every", "3", "--knn_images", "40", "--max_steps", "3"]
    assert cli_main(flags) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("k-NN")]
    assert len(lines) == 1 and "at step 3: top-1" in lines[0]
    top1 = float(lines[0].split("top-1 ")[1].split("%")[0])
    assert top1 * 10 / 100 == pytest.approx(round(top1 * 10 / 100))  # 40 // 4 = 10 val queries
    assert cli_main([*flags[:-4], "--knn_every", "1", "--knn_data", str(tmp_path / "nothing")]) == 2
    assert "no 'train' folder" in capsys.readouterr().err
