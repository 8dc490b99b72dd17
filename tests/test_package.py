"""Packaging promises: a light import, the console script, py.typed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


def test_ops_stub_re_exports_the_export_table() -> None:
    """fastmae/ops/__init__.pyi (what type checkers read) names exactly the lazily loaded exports, each from the
    submodule that defines it."""
    import fastmae.ops

    stub = ast.parse((Path(fastmae.ops.__file__).parent / "__init__.pyi").read_text())
    typed = {
        alias.asname: node.module
        for node in stub.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname == alias.name  # "import x as x": an explicit re-export
    }
    assert typed == fastmae.ops._EXPORTS
    for name in fastmae.ops.__all__:
        assert getattr(fastmae.ops, name).__module__ == f"fastmae.ops.{fastmae.ops._EXPORTS[name]}"
