"""The harness's parts: paths per device, the kernel check, the probe, paired timing and ceilings (CPU, tiny)."""

from __future__ import annotations

import pytest
import torch

from fastmae import _native
from fastmae.bench import op_paths
from fastmae.bench.op_bench import Budget, probe_batch
from fastmae.bench.op_cases import BUILDERS, PRESETS, pass_fn
from fastmae.bench.timing import Spread, cpu_clock, interleaved_times, matmul_ceiling, paired_ratios

CPU = torch.device("cpu")


def test_paths_per_device() -> None:
    cpu = {p.name: p for p in op_paths.op_paths(CPU, has_native=True)}
    assert list(cpu) == list(op_paths.PATH_NAMES)
    assert cpu["triton"].reason == op_paths.TRITON_ON_CPU  # the interpreter is never timed
    assert (cpu["native"].reason is None) == _native.available()
    assert cpu["torch"].reason is None and cpu["torch"].backend == "torch"
    blend = {p.name: p for p in op_paths.op_paths(CPU, has_native=False, compile_reference=False)}
    assert blend["native"].reason == "the op has no native kernel" and blend["compiled"].reason
    # only the device type is read: no GPU is queried
    cuda = {p.name: p for p in op_paths.op_paths(torch.device("cuda"), has_native=True)}
    assert cuda["triton"].reason is None and cuda["triton"].backend == "triton"
    assert op_paths.default_kernel(torch.device("cuda"), has_native=True) == "triton"
    assert op_paths.default_kernel(CPU, has_native=False) == "torch"


def test_observed_kernel_and_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    case = BUILDERS["patchify_gather"](PRESETS["tiny"], CPU, torch.float32)
    fn = pass_fn(case.fastmae, "fwd+bwd")
    torch_kernel = op_paths.observed_kernel(op_paths.with_backend(fn, "torch"), CPU)
    assert torch_kernel == "aten"
    assert op_paths.check_kernel(op_paths.OpPath("torch", "torch"), torch_kernel) is None
    problem = op_paths.check_kernel(op_paths.OpPath("native", "native"), torch_kernel)
    assert problem == "asked for the native path, which runs native, but aten ran"
    if _native.available():
        kernel = op_paths.observed_kernel(op_paths.with_backend(fn, "native"), CPU)
        assert kernel == "native: patchify_gather, patchify_gather_backward"
    compiled = torch.compile(lambda x: x * 2, backend="eager")  # no inductor compile: only the label is checked
    x = torch.randn(4)
    compiled(x)
    assert op_paths.observed_kernel(lambda: compiled(x), CPU) in ("aten", "inductor")


def test_probe_batch_follows_time_and_memory_budgets() -> None:
    size = PRESETS["tiny"].with_batch(64)
    assert probe_batch("mask_token_blend", size, CPU, torch.float32, Budget(None, 0.5))["batch"] == 64
    assert probe_batch("mask_token_blend", size, CPU, torch.float32, Budget(1e-9, 0.5))["batch"] == 1
    assert probe_batch("mask_token_blend", size, CPU, torch.float32, Budget(None, 1e-15))["batch"] == 1
    probed = probe_batch("mask_token_blend", size, CPU, torch.float32, Budget(10.0, 0.5))
    assert probed["batch_source"] == "probe" and probed["probe_ms_per_image"] > 0


def test_interleaved_rounds_rotate_and_ratios_pair_rounds() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = interleaved_times(fns, CPU, rounds=3, warmup=0, block_s=0.0)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3, "c": 3}
    ratios = paired_ratios({"ref": [1.0, 2.0, 4.0, 1.0], "x": [2.0, 2.0, 2.0, 3.0]}, "ref")
    assert ratios["ref"] == Spread(1.0, 1.0, 1.0)
    assert ratios["x"] == Spread(1.5, 0.875, 2.25)  # per-round ratios 2, 1, 0.5, 3
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        interleaved_times(fns, CPU, rounds=0)


def test_cpu_clock_and_ceiling_dtype() -> None:
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cpu_clock().name == "process_time"
        ceiling = matmul_ceiling(CPU, torch.bfloat16)
        assert ceiling.dtype == "bfloat16" and ceiling.tflops > 0 and ceiling.clock == "process_time"
        assert ceiling.shape.count("x") == 2
        if previous > 1:
            torch.set_num_threads(2)
            assert cpu_clock().name == "perf_counter"  # CPU time of several threads is not elapsed time
    finally:
        torch.set_num_threads(previous)
