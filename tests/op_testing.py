"""Assertions shared by the op tests: bitwise equality and the float64 dtype rule."""

from __future__ import annotations

import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# the kernels an op with a native twin runs on (tests/conftest.py use_backend skips what is absent here)
BACKENDS = ("triton", "native", "torch")


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor, name: str = "output") -> None:
    """Same shape, dtype and bits (NaN poison left in ``actual`` fails too)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert not torch.isnan(actual).any() or torch.isnan(expected).any(), f"{name}: unwritten (NaN) elements"
    assert torch.equal(actual, expected), (
        f"{name}: not bitwise equal, max abs diff {(actual.double() - expected.double()).abs().max().item()}"
    )


def assert_dtype_rule(
    actual: torch.Tensor,
    same_dtype_reference: torch.Tensor,
    float64_reference: torch.Tensor,
    *,
    atol: float = 1e-6,
    name: str = "output",
) -> None:
    """The error of ``actual`` against float64 is at most 2x PyTorch's own error in that dtype, plus atol.

    ``same_dtype_reference`` is the reference computed by plain PyTorch in the dtype under test;
    ``float64_reference`` is the same computation in float64.
    """
    assert actual.shape == float64_reference.shape, (
        f"{name}: shape {tuple(actual.shape)} != {tuple(float64_reference.shape)}"
    )
    assert torch.isfinite(actual).all(), f"{name}: non-finite (unwritten or overflowed) elements"
    exact = float64_reference.double()
    ours = (actual.double() - exact).abs().max().item()
    torch_error = (same_dtype_reference.double() - exact).abs().max().item()
    assert ours <= 2 * torch_error + atol, (
        f"{name}: error {ours:.3e} against float64 exceeds 2 x PyTorch's {torch_error:.3e} + atol {atol:.1e}"
    )
