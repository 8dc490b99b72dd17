"""Shared test settings.

TRITON_INTERPRET=1 must be set before triton is imported so that Triton kernels run on
CPU tensors; scripts/test.sh sets it, and this sets it too for a bare ``pytest``.
"""

import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_seed(request: pytest.FixtureRequest) -> None:
    """Fresh random inputs per test, reproducible from the test's name."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
