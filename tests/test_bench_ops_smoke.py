"""benchmarks/bench_ops.py main() at tiny sizes on CPU: rows and fields, no speed assertions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fastmae import _native

REPO_ROOT = Path(__file__).resolve().parent.parent

ENV_FIELDS = {"device", "device_type", "torch", "triton", "cuda", "fastmae", "python", "git_commit", "date", "command"}
ROW_FIELDS = {"bench", "op", "size", "provider", "pass", "dtype", "bytes", "median_ms", "gbps", "peak_mem_bytes",
              "status"}


def test_bench_ops_main_writes_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    sys.modules.pop("benchmarks.bench_ops", None)
    from benchmarks import bench_ops

    out = tmp_path / "rows.jsonl"
    argv = ["--tiny", "--device", "cpu", "--reps", "2", "--warmup", "1", "--out", str(out)]
    returned = bench_ops.main(argv)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == json.loads(json.dumps(returned))

    # every op x provider x pass once (no --compile on CPU: reference and fastmae only)
    keys = {(row["op"], row["provider"], row["pass"]) for row in rows}
    expected = {(op, p, s) for op in bench_ops.OP_NAMES for p in ("reference", "fastmae") for s in bench_ops.PASSES}
    if _native.available():  # every op but mask_token_blend has a native twin
        native_ops = set(bench_ops.OP_NAMES) - {"mask_token_blend"}
        expected |= {(op, "native", s) for op in native_ops for s in bench_ops.PASSES}
    assert keys == expected
    assert len(rows) == len(keys)
    for row in rows:
        assert ENV_FIELDS | ROW_FIELDS <= row.keys(), sorted(ENV_FIELDS | ROW_FIELDS - row.keys())
        assert row["bench"] == "ops" and row["device_type"] == "cpu" and row["peak_mem_bytes"] is None
        assert row["command"].endswith("--out " + str(out))
        assert row["bytes"] > 0
        # every op is merged: every provider runs
        assert row["status"] == "ok", row
        assert row["median_ms"] > 0 and row["gbps"] == pytest.approx(row["bytes"] / row["median_ms"] / 1e6)

    table = capsys.readouterr().out
    assert "| op | size | pass | provider | dtype | median_ms | gbps | peak_mem_bytes | status |" in table
    for op in ("unshuffle_with_mask_token", "mask_token_blend"):
        assert table.count(f"| {op} |") == sum(row_op == op for row_op, _, _ in keys)
