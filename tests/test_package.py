"""Packaging promises: a light import, the console script, py.typed."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import fastmae

HEAVY = ("triton", "nvidia.dali", "xformers", "fastmae._C", "fastmae_native", "PIL", "matplotlib")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_import_fastmae_is_light() -> None:
    loaded = _modules_after("import fastmae, fastmae.ops")
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not heavy, f"import fastmae pulled in {heavy}"


def test_cli_version_and_help() -> None:
    version = subprocess.run([sys.executable, "-m", "fastmae", "--version"], check=True, capture_output=True, text=True)
    assert version.stdout.strip() == f"fastmae {fastmae.__version__}"
    helped = subprocess.run([sys.executable, "-m", "fastmae", "--help"], check=True, capture_output=True, text=True)
    for command in ("pretrain", "visualize", "scan-dataset", "bench", "info"):
        assert command in helped.stdout
    unknown = subprocess.run([sys.executable, "-m", "fastmae", "frobnicate"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


def test_py_typed_ships_with_the_package() -> None:
    assert (Path(fastmae.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize("package", ["fastmae.ops", "fastmae.models"])
def test_typed_re_exports_match_the_lazy_export_table(package: str) -> None:
    """The ``TYPE_CHECKING`` re-exports (what type checkers read) name exactly the lazily loaded exports, each
    from the submodule that defines it; at run time every name loads from there."""
    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    typed = {
        alias.asname: node.module.rsplit(".", 1)[-1]
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
        if alias.asname == alias.name  # "import x as x": an explicit re-export
    }
    assert typed == module._EXPORTS
    for name, submodule in module._EXPORTS.items():
        assert getattr(module, name) is getattr(importlib.import_module(f"{package}.{submodule}"), name)
