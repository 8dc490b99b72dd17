"""Collect the examples' ``test_*`` functions: the example files are named ``*_step.py``, not ``test_*.py``.

TRITON_INTERPRET=1 must be set before triton is imported so that the kernels run on CPU tensors
(tests/conftest.py does the same for the test suite).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.stem.endswith("_step"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
