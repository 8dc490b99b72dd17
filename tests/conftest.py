"""Shared test settings: the device the op and model tests run on, and when the Triton path can run.

TRITON_INTERPRET=1 must be set before triton is imported so that Triton kernels run on
CPU tensors; scripts/test.sh sets it, and this sets it too for a bare ``pytest``.

``FASTMAE_TEST_DEVICE`` (default ``cpu``) names the device of the op and model tests' tensors. On a GPU,
``TRITON_INTERPRET=0 FASTMAE_TEST_DEVICE=cuda pytest tests`` (the device check, benchmarks/gpu_check.sh, runs a
selection) runs the "triton" parametrisations on the compiled kernels and the "torch" ones on PyTorch on CUDA.
Only the variable is read here: nothing queries the GPU at import or collection.
"""

import os
import zlib
from collections.abc import Callable

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

DEVICE_VAR = "FASTMAE_TEST_DEVICE"


def configured_device() -> torch.device:
    """The device named by FASTMAE_TEST_DEVICE (cpu when unset)."""
    return torch.device(os.environ.get(DEVICE_VAR, "").strip() or "cpu")



def triton_skip_reason(device: torch.device) -> str | None:
    """Why the "triton" backend cannot run on ``device`` in this session, or None when it can.

    CPU tensors run the kernels only in the interpreter (TRITON_INTERPRET=1); on CUDA the point is the
    compiled kernels, so the interpreter must be off there.
    """
    interpreted = os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")
    if device.type == "cpu" and not interpreted:
        return "the Triton kernels run on CPU tensors only under TRITON_INTERPRET=1"
    if device.type == "cuda" and interpreted:
        return "on CUDA the compiled kernels are tested: run with TRITON_INTERPRET=0"
    if device.type not in ("cpu", "cuda"):
        return f"no Triton kernels for {device.type} tensors"
    return None


def native_skip_reason(device: torch.device) -> str | None:
    """Why the "native" backend cannot run on ``device`` here, or None; on CI the CPU library must be built."""
    from fastmae import _native

    if not _native.available():
        message = f"native extension did not load: {_native.load_error() or 'not built'}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (on CI it must be built)")
        return message
    if device.type == "cuda" and not _native.has_cuda_kernels():
        return "the native extension was built without its CUDA kernels"
    return None


@pytest.fixture
def native_cpu() -> None:
    """Skips a test of the native CPU library itself when it is not built (on CI a missing library fails)."""
    reason = native_skip_reason(torch.device("cpu"))
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _fresh_seed(request: pytest.FixtureRequest) -> None:
    """Fresh random inputs per test, reproducible from the test's name (seeds CUDA too, without a query)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def device() -> torch.device:
    """The device for the test's tensors. On CUDA, float32 is kept true float32 (no TF32 matmuls or
    convolutions), as the float32 tolerances against the reference assume."""
    selected = configured_device()
    if selected.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return selected


@pytest.fixture
def cuda_device(device: torch.device) -> torch.device:
    """``device`` for GPU-only tests; skips elsewhere."""
    if device.type != "cuda":
        pytest.skip(f"GPU-only test: run with {DEVICE_VAR}=cuda (and TRITON_INTERPRET=0)")
    return device


@pytest.fixture
def use_backend(monkeypatch: pytest.MonkeyPatch, device: torch.device) -> Callable[..., str]:
    """``use_backend(name, debug=False)`` sets FASTMAE_BACKEND (and FASTMAE_DEBUG=1 when ``debug``: poisoned
    outputs, id checks) for this test, skipping it when ``name`` is "triton" and the kernels cannot run here,
    or "native" and the native library is not built (on CI, env CI set, a missing library fails instead)."""

    def use(name: str, *, debug: bool = False) -> str:
        reason = triton_skip_reason(device) if name == "triton" else None
        if name == "native":
            reason = native_skip_reason(device)
        if reason is not None:
            pytest.skip(reason)
        monkeypatch.setenv("FASTMAE_BACKEND", name)
        # a compiled graph keeps the kernel picked when it was traced (FASTMAE_BACKEND is no dynamo guard):
        # without this, a test's closure compiled under the previous backend would be reused as it was
        torch._dynamo.reset()
        if debug:
            monkeypatch.setenv("FASTMAE_DEBUG", "1")
        return name

    return use
