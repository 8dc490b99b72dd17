"""benchmarks/bench_native_cpu.py at its smallest: the copy-style part on one image (no timing assertions;
the loss part compiles the reference with inductor and is left to the benchmark itself)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from fastmae import _native


def test_copy_ops_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if not _native.available():
        pytest.skip(f"native extension not available: {_native.load_error() or 'not built'}")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    monkeypatch.setenv("FASTMAE_BACKEND", "native")  # main() sets it; monkeypatch restores it
    sys.modules.pop("benchmarks.bench_native_cpu", None)
    from benchmarks import bench_native_cpu

    out = tmp_path / "native_cpu.jsonl"
    threads = torch.get_num_threads()
    try:
        bench_native_cpu.main(["--batch", "1", "--rounds", "1", "--parts", "copy", "--dtypes", "bfloat16",
                               "--label", "smoke", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    groups = {row["group"] for row in rows}
    assert groups == {"patchify_gather fwd", "patchify_gather bwd", "unshuffle fwd", "unshuffle bwd"}
    for row in rows:
        assert row["threads"] == 1 and row["label"] == "smoke" and row["dtype"] == "bfloat16"
        assert row["median_ms"] > 0 and row["gb_per_s"] > 0
    assert "| patchify_gather fwd | bfloat16 | native |" in capsys.readouterr().out
