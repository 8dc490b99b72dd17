"""The memory report: fake-traced predictions against real CPU measurements, recomputation, the planner, CLI."""

from __future__ import annotations

import pytest
import torch

from fastmae.bench import memory_cli
from fastmae.bench.memory import WEIGHT_COPIES, StepTracer, fits, gpu_capacity, largest_batch
from fastmae.bench.providers import PROVIDERS

MODEL = "mae_vit_tiny"  # 64 px, patch 8: L = 64, K = 16; encoder 96 wide x 4, decoder 64 wide x 2


def _close(predicted: int, measured: int, rel: float = 0.03) -> bool:
    return abs(predicted - measured) <= rel * measured


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_fake_prediction_matches_real_saved_tensors(provider, precision):
    """Predicted (FakeTensorMode) bytes kept for backward vs distinct storages saved on real CPU tensors."""
    predicted = StepTracer(provider, MODEL, precision=precision, fake=True).trace(3)
    measured = StepTracer(provider, MODEL, precision=precision, fake=False).trace(3)
    assert measured.saved_hook_bytes > 100_000
    assert _close(predicted.activation_bytes, measured.saved_hook_bytes)
    assert _close(predicted.traced_peak_bytes, measured.traced_peak_bytes)
    for category, nbytes in measured.activations.items():
        assert _close(predicted.activations.get(category, 0), nbytes), category
    assert predicted.gradient_bytes == measured.gradient_bytes == measured.parameter_bytes - _frozen_bytes()
    if precision == "bf16":
        assert measured.activations[WEIGHT_COPIES] > 0, "autocast keeps low-precision weight copies"
    else:
        assert WEIGHT_COPIES not in measured.activations


def _frozen_bytes() -> int:
    from fastmae.models import create_model

    model = create_model(MODEL)
    return sum(t.nbytes for t in [*model.buffers(), *(p for p in model.parameters() if not p.requires_grad)])


def test_selective_recompute_keeps_far_fewer_bytes():
    """Measured on real CPU tensors and predicted: selective keeps matmul/attention outputs only."""
    plain = StepTracer("fastmae", MODEL, fake=False).trace(4)
    selective = StepTracer("fastmae", MODEL, recompute="selective", fake=False).trace(4)
    predicted = StepTracer("fastmae", MODEL, recompute="selective", fake=True).trace(4)
    assert _close(predicted.activation_bytes, selective.activation_bytes)
    copies = WEIGHT_COPIES
    plain_act = plain.activation_bytes - plain.activations[copies]
    assert selective.activation_bytes - selective.activations.get(copies, 0) < 0.7 * plain_act
    # only the patch embedding's cast (outside the blocks) stays
    assert selective.activations.get(copies, 0) < 0.05 * plain.activations[copies]
    assert selective.saved_hook_bytes < selective.activation_bytes, "recomputed regions hide their saves"


@pytest.mark.parametrize("recompute", ["none", "selective"])
def test_bf16_weights_drop_the_weight_copies_and_add_an_fp32_master(recompute):
    """--weights bf16, measured on real CPU tensors and predicted: no autocast weight copies; the bf16 weights and
    gradients take half the bytes of fp32 ones, the fp32 master the full bytes."""
    plain = StepTracer("fastmae", MODEL, recompute=recompute, fake=False).trace(4)
    measured = StepTracer("fastmae", MODEL, recompute=recompute, weights="bf16", fake=False).trace(4)
    predicted = StepTracer("fastmae", MODEL, recompute=recompute, weights="bf16", fake=True).trace(4)
    assert _close(predicted.activation_bytes, measured.activation_bytes)
    assert _close(predicted.traced_peak_bytes, measured.traced_peak_bytes)
    assert WEIGHT_COPIES not in measured.activations and plain.activations[WEIGHT_COPIES] > 0
    assert measured.activation_bytes == plain.activation_bytes - plain.activations[WEIGHT_COPIES]
    master = measured.master_bytes
    assert master > 0.9 * (plain.parameter_bytes - _frozen_bytes())  # nearly every trainable weight
    assert measured.parameter_bytes == plain.parameter_bytes - master // 2
    assert measured.gradient_bytes == plain.gradient_bytes - master // 2
    assert measured.peak_bytes >= measured.traced_peak_bytes + measured.optimizer_bytes + master
    with pytest.raises(ValueError, match="applies to the fastmae provider in bf16 only"):
        StepTracer("fastmae", MODEL, precision="fp32", weights="bf16")


@pytest.mark.parametrize(("recompute", "weights"), [("none", "fp32"), ("selective", "bf16")])
def test_predicted_peak_matches_the_real_train_step(recompute, weights):
    """The trainer's own eager step (nonfinite check, fused AdamW, masters) on real CPU tensors peaks where the
    report predicts: the check a GPU repeats with max_memory_allocated (benchmarks/bench_memory.py --measure)."""
    from fastmae.bench.memory_measure import measure_peak

    row = measure_peak("fastmae", MODEL, 4, "cpu", recompute=recompute, weights=weights)
    assert row["measured_peak_bytes"] > 1_000_000
    assert abs(row["measured_over_predicted"] - 1) < 0.01, row
    with pytest.raises(ValueError, match="on CPU only the fastmae step"):
        measure_peak("reference-modern", MODEL, 4, "cpu")


def test_largest_batch_is_the_last_that_fits():
    tracer = StepTracer("fastmae", "mae_vit_test", fake=False)  # real tensors: faster than fake at this size
    at5, at6 = tracer.trace(5), tracer.trace(6)
    capacity = (at5.peak_bytes + at6.peak_bytes) // 2
    batch, memory = largest_batch(tracer, capacity, headroom=1.0, probe_batches=(1, 2))
    assert batch == 5 and memory.peak_bytes == at5.peak_bytes
    assert fits(at5, capacity, 1.0) and not fits(at6, capacity, 1.0)
    assert largest_batch(tracer, 1000, headroom=1.0, probe_batches=(1, 2)) == (0, None)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="provider must be one of"):
        StepTracer("official", MODEL)
    with pytest.raises(ValueError, match="recompute applies to the fastmae provider only"):
        StepTracer("reference-modern", MODEL, recompute="selective")
    with pytest.raises(ValueError, match="precision must be one of"):
        StepTracer("fastmae", MODEL, precision="fp8")
    with pytest.raises(ValueError, match="batch must be a positive int"):
        StepTracer("fastmae", "mae_vit_test").trace(0)
    with pytest.raises(ValueError, match="gpu must be one of"):
        gpu_capacity("a100")
    assert gpu_capacity("h100") == 80 * 10**9


def test_cli_prints_categories_and_the_fit(capsys, tmp_path):
    out = tmp_path / "memory.jsonl"
    code = memory_cli.main(["--model", "mae_vit_test", "--batch_size", "2", "--providers", "fastmae",
                            "reference-published", "--gpu_memory_gb", "0.002", "--fit", "--real", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "encoder attention" in text and "predicted peak" in text and "not GPU measurements" in text
    assert "largest batch for fastmae:" in text
    assert len(out.read_text().splitlines()) == 4  # two traces, two largest batches


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--headroom", "1.5"], "--headroom must be in"),
    (["--model", "vit_giant"], "unknown model 'vit_giant'"),
])
def test_cli_rejects_bad_input(argv, message):
    with pytest.raises(SystemExit, match=message):
        memory_cli.main(argv)


def test_trainer_flag_default_is_selective():
    from fastmae.train.args import parse_args

    assert parse_args([]).recompute == "selective"
    assert parse_args(["--recompute", "none"]).recompute == "none"
    with pytest.raises(SystemExit):
        parse_args(["--recompute", "half"])
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("model", ["mae_vit_base_patch16", "mae_vit_huge_patch14"])
def test_selective_recompute_adds_under_one_percent_of_flops(model):
    from fastmae.bench.flops import mae_train_flops_per_image, selective_recompute_extra_flops_per_image

    extra = selective_recompute_extra_flops_per_image(model)
    assert 0 < extra < 0.01 * mae_train_flops_per_image(model)


def test_compiled_partition_saves_what_eager_keeps_and_selective_cuts_it():
    """The min-cut partition of the compiled step (aot_autograd, no code generation) saves about what the eager
    step keeps, and selective recomputation cuts it there too."""
    from fastmae.bench.memory_compiled import compiled_saved_bytes

    eager = StepTracer("fastmae", MODEL, fake=False).trace(4).activation_bytes
    plain = compiled_saved_bytes("fastmae", MODEL, 4)
    selective = compiled_saved_bytes("fastmae", MODEL, 4, recompute="selective")
    assert 0.8 * eager < plain < 1.2 * eager
    assert selective < 0.6 * plain
