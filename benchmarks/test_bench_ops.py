"""pytest-benchmark entry for bench_ops (run explicitly: ``pytest benchmarks/test_bench_ops.py``).

One test per op x provider x pass, at the tiny size on CPU and each op's first GPU size (batch 256) on CUDA.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_ops import BUILDERS, OP_NAMES, PASSES, pass_fn, providers, sizes_for


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("provider", ["reference", "compiled", "fastmae"])
@pytest.mark.parametrize("op", OP_NAMES)
def test_bench_op(benchmark, op: str, provider: str, pass_name: str) -> None:  # type: ignore[no-untyped-def]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = sizes_for(op, tiny=device.type != "cuda")[0]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    case = BUILDERS[op](size, device, dtype)
    impls = {name: impl for name, impl, _ in providers(case, compile_reference=True)}
    impl = impls[provider]
    fn = pass_fn(impl, pass_name)

    def timed() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    benchmark.extra_info.update(op=op, provider=provider, size=size.name, bytes=case.bytes_fwd)
    benchmark(timed)
