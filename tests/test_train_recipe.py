"""The MAE recipe: lr scaling, the per-iteration warmup + cosine schedule, weight-decay groups, AdamW."""

import math

import pytest
import torch

from fastmae.models import create_model
from fastmae.train.args import parse_args, resolve
from fastmae.train.optim import build_optimizer, param_groups, set_lr
from fastmae.train.schedule import lr_at, lr_for_step


def test_schedule_hand_values():
    # base 1e-3, min 1e-5, warmup 2 epochs, 10 epochs
    kw = dict(base_lr=1e-3, min_lr=1e-5, warmup_epochs=2, epochs=10)
    assert lr_at(0.0, **kw) == 0.0
    assert lr_at(0.5, **kw) == pytest.approx(2.5e-4, rel=1e-12)
    assert lr_at(1.0, **kw) == pytest.approx(5e-4, rel=1e-12)
    assert lr_at(2.0, **kw) == pytest.approx(1e-3, rel=1e-12)  # end of warmup: the peak
    assert lr_at(6.0, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5, rel=1e-12)  # half-way down the cosine
    assert lr_at(4.0, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert lr_at(10.0, **kw) == pytest.approx(1e-5, rel=1e-12)


def test_schedule_is_per_iteration():
    # 4 optimizer steps per epoch: step 5 is epoch 1.25
    kw = dict(base_lr=1e-3, min_lr=0.0, warmup_epochs=2, epochs=10)
    assert lr_for_step(5, 4, **kw) == pytest.approx(1e-3 * 1.25 / 2, rel=1e-12)
    values = [lr_for_step(s, 4, **kw) for s in range(40)]
    assert values[:8] == sorted(values[:8]) and len(set(values[:8])) == 8 and len(set(values[8:])) == 32
    assert values[8:] == sorted(values[8:], reverse=True)
    assert lr_for_step(0, 4, base_lr=1e-3, min_lr=0.0, warmup_epochs=0, epochs=10) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        lr_for_step(0, 0, **kw)


def test_lr_is_blr_times_effective_batch_over_256():
    args = parse_args(["--loader", "synthetic", "--batch_size", "64", "--accum_iter", "4", "--blr", "1.5e-4",
                       "--device", "cpu"])
    settings = resolve(args, world_size=8)
    assert settings.effective_batch == 64 * 4 * 8
    assert settings.lr == pytest.approx(1.5e-4 * 2048 / 256)
    assert settings.precision == "fp32" and settings.compile is False  # CPU defaults
    absolute = resolve(parse_args(["--loader", "synthetic", "--lr", "0.01", "--device", "cpu"]), world_size=2)
    assert absolute.lr == 0.01


@pytest.mark.parametrize("bad", [["--batch_size", "0"], ["--mask_ratio", "1.0"], ["--warmup_epochs", "-1"]])
def test_bad_flags_are_rejected(bad):
    with pytest.raises(ValueError, match=bad[0]):
        parse_args(bad)


def test_vit_base_weight_decay_groups_match_the_spec():
    with torch.device("meta"):
        model = create_model("mae_vit_base_patch16")
    decay, no_decay = param_groups(model, 0.05)
    assert (len(decay["params"]), len(no_decay["params"])) == (85, 167)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    chosen = {id(p) for p in decay["params"] + no_decay["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert id(model.pos_embed) not in chosen and id(model.decoder_pos_embed) not in chosen  # frozen: left out
    decayed_names = {names[id(p)] for p in decay["params"]}
    assert {"cls_token", "mask_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= decayed_names
    assert not any(n.endswith(".bias") or "norm" in n for n in decayed_names)
    trainable = sum(p.numel() for p in decay["params"] + no_decay["params"])
    assert trainable == 111_655_680


def test_adamw_settings_and_tensor_lr():
    model = create_model("mae_vit_test")
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["fused"] is True
    set_lr(optimizer, 2.5e-4)
    for group in optimizer.param_groups:
        assert isinstance(group["lr"], torch.Tensor) and group["lr"].item() == pytest.approx(2.5e-4)
