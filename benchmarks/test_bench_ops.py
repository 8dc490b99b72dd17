"""pytest-benchmark entry for the op benchmark (run explicitly: ``pytest benchmarks/test_bench_ops.py``).

One test per op x path x pass at the tiny size on CPU and ViT-B/16's shapes (batch 256) on CUDA; a path that
does not exist on the device (fastmae.bench.op_paths) is skipped with its reason.
"""

from __future__ import annotations

import pytest
import torch

from fastmae.bench.op_cases import BUILDERS, OP_NAMES, PASSES, PRESETS, Implementation, pass_fn, sizes_for
from fastmae.bench.op_paths import PATH_NAMES, op_paths, with_backend


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("path_name", [p for p in PATH_NAMES if p != "copy_"])
@pytest.mark.parametrize("op", OP_NAMES)
def test_bench_op(benchmark, op: str, path_name: str, pass_name: str) -> None:  # type: ignore[no-untyped-def]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = sizes_for(op)[0] if device.type == "cuda" else PRESETS["tiny"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    case = BUILDERS[op](size, device, dtype)
    path = {p.name: p for p in op_paths(device, has_native=case.has_native)}[path_name]
    if path.reason:
        pytest.skip(path.reason)
    ref = case.reference
    impl = {"reference": ref, "compiled": Implementation(torch.compile(ref.fn), ref.args, ref.grad_args)}.get(
        path_name, case.fastmae)
    fn = with_backend(pass_fn(impl, pass_name), path.backend)

    def timed() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    benchmark.extra_info.update(op=op, path=path_name, size=size.name, bytes=case.bytes_moved(pass_name))
    benchmark(timed)
