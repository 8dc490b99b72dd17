"""``--weights bf16``: bf16 Linear/conv weights with fp32 masters in the optimizer.

Against bf16 autocast on fp32 weights: bitwise the same training with one micro-step per optimizer step,
within the bf16 rule (2x autocast's own error against a high-precision run) when micro-steps accumulate in
bf16; the non-finite skip, checkpoints (fp32, exact resume) and the flag's checks.
"""

import pytest
import torch

from fastmae.models import create_model
from fastmae.train import checkpoint as ckpt
from fastmae.train.master_weights import MasterWeights, matmul_parameters
from fastmae.train.optim import build_optimizer, set_lr
from fastmae.train.precision import resolve_weights
from fastmae.train.step import TrainStep

MODEL = "mae_vit_test"


def images(step: int, micro_step: int) -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(100 * step + micro_step))


def train(weights: str, *, accum: int = 1, steps: int = 4, exact: bool = False, poison_step: int | None = None,
          compile: bool = False):
    """(metrics, fp32 state dict, model, master) after ``steps`` optimizer steps from the seed-0 weights.

    ``exact``: the oracle, fp32 without autocast (the fused ops take no float64; fp32's own error is about
    four orders of magnitude below bf16's).
    """
    torch.manual_seed(0)
    model = create_model(MODEL)
    master = MasterWeights(model) if weights == "bf16" else None
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, master=master)
    step = TrainStep(model, optimizer, num_patches=model.num_patches, mask_ratio=0.75, accum_iter=accum,
                     device=torch.device("cpu"), autocast_dtype=None if exact else torch.bfloat16, compile=compile,
                     compile_backend="aot_eager", seed=3, log_every=steps, master=master)
    target = model.blocks[0].mlp.fc1.weight
    for s in range(steps):
        set_lr(optimizer, 2.5e-4 * (s + 1))  # a warmup, the same whatever ``steps``
        hook = None
        if s == poison_step:  # one gradient element goes inf; the loss stays finite
            hook = target.register_hook(lambda g: g.index_put((torch.tensor([0]),), torch.tensor(float("inf"),
                                                                                            dtype=g.dtype)))
        step(s, [images(s, m) for m in range(accum)])
        if hook is not None:
            hook.remove()
    state = master.full_precision(model.state_dict()) if master is not None else model.state_dict()
    return step.read_metrics(), state, model, master


def test_weights_are_bf16_and_the_masters_fp32():
    model = create_model(MODEL)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    master = MasterWeights(model)
    held = matmul_parameters(model)
    assert "blocks.0.attn.qkv.weight" in held and "patch_embed.proj.weight" in held and "decoder_pred.bias" in held
    for name, param in model.named_parameters():
        assert param.dtype == (torch.bfloat16 if name in held else torch.float32), name
    full = master.full_precision(model.state_dict())
    assert all(full[name].dtype == torch.float32 for name in full)
    assert all(torch.equal(full[name], before[name]) for name in before)  # the masters are the fp32 values


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_one_micro_step_trains_bitwise_as_autocast(compile):
    """The forward reads the bf16 rounding autocast would make of the same master, and gets back the same
    gradient: losses and fp32 weights are bitwise those of bf16 autocast on fp32 weights (compiled: aot_eager)."""
    steps = 2 if compile else 4
    torch._dynamo.reset()
    base_metrics, base_state, _, _ = train("fp32", steps=steps, compile=compile)
    torch._dynamo.reset()
    metrics, state, _, _ = train("bf16", steps=steps, compile=compile)
    assert metrics.losses == base_metrics.losses
    for name, value in base_state.items():
        assert torch.equal(state[name], value), name


def test_accumulating_in_bf16_keeps_the_loss_within_the_bf16_rule():
    """Two micro-steps: gradients accumulate in bf16 (not bitwise); each step's loss against the fp32 run is
    within 2x the error of bf16 autocast on fp32 weights."""
    exact = torch.tensor(train("fp32", accum=2, steps=3, exact=True)[0].losses, dtype=torch.float64)
    autocast = torch.tensor(train("fp32", accum=2, steps=3)[0].losses, dtype=torch.float64)
    ours = torch.tensor(train("bf16", accum=2, steps=3)[0].losses, dtype=torch.float64)
    assert not torch.equal(ours, autocast)  # bf16 accumulation is really exercised
    autocast_error = (autocast - exact).abs().max().item()
    our_error = (ours - exact).abs().max().item()
    assert our_error <= 2 * autocast_error + 1e-6, f"error {our_error:.3e} > 2 x autocast's {autocast_error:.3e}"


def test_a_non_finite_gradient_skips_the_update_of_masters_and_weights():
    good, two_steps, _, _ = train("bf16", steps=2)
    metrics, state, model, master = train("bf16", steps=3, poison_step=2)
    assert metrics.skipped_total == 1 and metrics.losses[:2] == good.losses
    for name, value in two_steps.items():
        assert torch.equal(state[name], value), f"{name} changed on a skipped step"
    assert all(p.grad is None for p in model.parameters()) and all(m.grad is None for m in master.masters)
    master.release()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.blocks[0].attn.qkv.weight, two_steps["blocks.0.attn.qkv.weight"])


def test_resolution_of_the_flag():
    assert resolve_weights(None, "bf16") == "fp32" and resolve_weights(None, "fp32") == "fp32"
    assert resolve_weights("bf16", "bf16") == "bf16"
    assert resolve_weights(None, "bf16", fsdp=True) == "bf16"  # FSDP2 gathers in the autocast dtype, as before
    assert resolve_weights(None, "fp16", fsdp=True) == "fp16"
    assert resolve_weights("fp32", "bf16", fsdp=True) == "fp32"
    with pytest.raises(ValueError, match="--weights bf16 needs --precision bf16"):
        resolve_weights("bf16", "fp32")
    with pytest.raises(ValueError, match="--weights must be one of"):
        resolve_weights("fp8", "bf16")


CLI = ["--model", MODEL, "--batch_size", "4", "--epochs", "2", "--warmup_epochs", "1", "--blr", "1e-2",
       "--log_every", "2", "--no_progress", "--device", "cpu", "--num_workers", "0", "--loader", "synthetic",
       "--synthetic_size", "16", "--precision", "bf16", "--weights", "bf16"]


def test_cli_checkpoints_hold_fp32_masters_and_resume_exactly(tmp_path, capsys):
    from fastmae.train.pretrain import main

    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main([*CLI, "--max_steps", "6", "--output_dir", str(whole)]) == 0
    assert "weights            : bf16, fp32 master in the optimizer" in capsys.readouterr().out
    assert main([*CLI, "--max_steps", "3", "--output_dir", str(split)]) == 0
    assert main([*CLI, "--max_steps", "6", "--output_dir", str(split), "--resume", "auto"]) == 0
    a, b = (torch.load(ckpt.list_checkpoints(d)[-1], weights_only=True) for d in (whole, split))
    assert a["global_step"] == b["global_step"] == 6
    for name, value in a["model"].items():
        assert value.dtype == torch.float32 and torch.equal(value, b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), f"optimizer {index} {key}"
    encoder = torch.load(whole / "encoder.pth", weights_only=True)["model"]
    assert torch.equal(encoder["blocks.0.attn.qkv.weight"], a["model"]["blocks.0.attn.qkv.weight"])
    assert main([*CLI[:-4], "--weights", "bf16", "--max_steps", "1", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--weights bf16 needs --precision bf16" in capsys.readouterr().err
