"""The train step: one compilation while the lr changes, device-side skipping of non-finite steps, noise slicing."""

import pytest
import torch

from fastmae.models import create_model
from fastmae.train.optim import build_optimizer, set_lr
from fastmae.train.step import TrainStep, build_train_step


def make_step(model, **overrides):
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    kwargs = dict(num_patches=model.num_patches, mask_ratio=0.75, accum_iter=1, device=torch.device("cpu"),
                  autocast_dtype=None, compile=False, seed=3, log_every=8)
    kwargs.update(overrides)
    return TrainStep(model, optimizer, **kwargs), optimizer


def snapshot(model, optimizer):
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    return params, state


def test_one_compilation_while_the_lr_changes():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    model = create_model("mae_vit_test")
    step, optimizer = make_step(model, compile=True, compile_backend=counting_backend, accum_iter=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for i in range(5):
        set_lr(optimizer, 1e-3 * (i + 1) / 5)
        step(i, [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
    assert len(graphs) == 1, f"compiled {len(graphs)} graphs over 5 steps with a changing lr"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    metrics = step.read_metrics()
    assert len(metrics.losses) == 5 and all(torch.isfinite(torch.tensor(metrics.losses)))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_non_finite_loss_skips_the_update_on_the_device():
    model = create_model("mae_vit_test")
    step, optimizer = make_step(model)
    good = torch.randn(2, 3, 16, 16)
    step(0, [good])
    params, state = snapshot(model, optimizer)
    poisoned = good.clone()
    poisoned[0, 0, 0, 0] = float("nan")
    step(1, [poisoned])
    step(2, [poisoned])
    for name, param in model.named_parameters():
        assert torch.equal(param, params[name]), f"{name} changed on a skipped step"
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            assert torch.equal(value, state[id(param)][key]), f"optimizer {key} changed on a skipped step"
    assert all(p.grad is None for p in model.parameters())  # gradients of a skipped step are dropped
    metrics = step.read_metrics()
    assert metrics.skipped_total == 2 and metrics.longest_skip_run == 2
    assert metrics.losses[0] == metrics.losses[0] and all(v != v for v in metrics.losses[1:])
    step(3, [good])  # a finite step updates again and ends the run of skips
    assert any(not torch.equal(p, params[n]) for n, p in model.named_parameters())
    step(4, [poisoned])
    metrics = step.read_metrics()
    assert (metrics.skipped_total, metrics.longest_skip_run) == (3, 2)
    assert int(step.state_dict()["skip_run"]) == 1


def test_noise_is_the_global_draw_sliced_per_rank():
    model = create_model("mae_vit_test")
    whole, _ = make_step(model)
    full = whole.noise(7, 1, 6)
    assert full.shape == (6, model.num_patches)
    parts = [make_step(model, rank=r, world_size=3)[0].noise(7, 1, 2) for r in range(3)]
    assert torch.equal(torch.cat(parts), full)
    assert not torch.equal(whole.noise(7, 0, 6), full) and not torch.equal(whole.noise(8, 1, 6), full)
    with pytest.raises(ValueError, match="micro-batches"):
        whole(0, [torch.randn(2, 3, 16, 16)] * 2)


def test_bf16_autocast_step_updates_fp32_weights():
    model = create_model("mae_vit_test")
    step, _ = make_step(model, autocast_dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(0, [torch.randn(2, 3, 16, 16)])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert step.read_metrics().skipped_total == 0


def test_build_train_step_for_benchmarks():
    step = build_train_step("mae_vit_test", device="cpu", precision="bf16", compile_model=False)
    model = step.train_step.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        step(torch.randn(4, 3, 16, 16))
    metrics = step.train_step.read_metrics()
    assert len(metrics.losses) == 3 and metrics.skipped_total == 0
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="precision"):
        build_train_step("mae_vit_test", device="cpu", precision="fp8", compile_model=False)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_non_finite_gradient_with_a_finite_loss_skips_the_update(poison, autocast_dtype):
    model = create_model("mae_vit_test")
    step, optimizer = make_step(model, autocast_dtype=autocast_dtype)
    good = torch.randn(2, 3, 16, 16)
    step(0, [good])
    params, state = snapshot(model, optimizer)
    target = model.blocks[0].mlp.fc1.weight  # one element of one gradient goes bad; the loss stays finite
    hook = target.register_hook(lambda grad: grad.index_put((torch.tensor([1]), torch.tensor([2])),
                                                            torch.tensor(poison, dtype=grad.dtype)))
    step(1, [good])
    hook.remove()
    metrics = step.read_metrics()
    assert all(torch.isfinite(torch.tensor(metrics.losses)))
    assert metrics.skipped_total == 1
    for name, param in model.named_parameters():
        assert torch.equal(param, params[name]), f"{name} changed on a step with a non-finite gradient"
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            assert torch.equal(value, state[id(param)][key]), f"optimizer {key} changed"
    step(2, [good])  # the next clean step updates again
    assert step.read_metrics().skipped_total == 1
    assert not torch.equal(target, params["blocks.0.mlp.fc1.weight"])
