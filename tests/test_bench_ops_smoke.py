"""benchmarks/bench_ops.py main() at the tiny size on CPU: rows, labels and fields; no speed assertions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from fastmae import _native
from fastmae.bench.op_cases import OP_NAMES, PASSES
from fastmae.bench.op_paths import PATH_NAMES, TRITON_ON_CPU

REPO_ROOT = Path(__file__).resolve().parent.parent

ENV_FIELDS = {"device", "device_type", "torch", "triton", "cuda", "fastmae", "python", "git_commit", "date", "command"}
ROW_FIELDS = {"bench", "op", "size", "batch", "batch_source", "provider", "backend", "kernel", "default", "pass",
              "dtype", "threads", "clock", "bytes", "median_ms", "q1_ms", "q3_ms", "gbps", "ceiling", "ceiling_gbps",
              "frac_of_ceiling", "ratio_vs_reference", "ratio_q1", "ratio_q3", "peak_mem_bytes", "status"}


@pytest.fixture
def bench_ops(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    sys.modules.pop("benchmarks.bench_ops", None)
    from benchmarks import bench_ops

    return bench_ops


def test_bench_ops_rows_name_what_ran(tmp_path: Path, bench_ops, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "rows.jsonl"
    argv = ["--tiny", "--no-compile", "--device", "cpu", "--rounds", "3", "--warmup", "1", "--out", str(out)]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        returned = bench_ops.main(argv)
    finally:
        torch.set_num_threads(previous)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == json.loads(json.dumps(returned))

    # one row per op x path x pass, untimed paths included with their reason
    keys = [(row["op"], row["provider"], row["pass"]) for row in rows]
    assert sorted(keys) == sorted((op, p, s) for op in OP_NAMES for p in PATH_NAMES
                                  for s in PASSES)
    native_built = _native.available()
    for row in rows:
        assert ENV_FIELDS | ROW_FIELDS <= row.keys(), sorted(ENV_FIELDS | ROW_FIELDS - row.keys())
        assert row["bench"] == "ops" and row["device_type"] == "cpu" and row["peak_mem_bytes"] is None
        assert row["command"].endswith("--out " + str(out)) and row["bytes"] > 0
        assert row["batch"] == 2 and row["batch_source"] == "forced" and row["dtype"] == "float32"
        assert row["threads"] == 1 and row["ceiling"] == "copy_"
        op, path = row["op"], row["provider"]
        has_native = op != "mask_token_blend"
        timed = {"triton": False, "native": has_native and native_built, "compiled": False}.get(path, True)
        if not timed:
            assert row["status"].startswith("skipped: ") and row["median_ms"] is None and row["kernel"] is None
            if path == "triton":
                assert row["status"] == f"skipped: {TRITON_ON_CPU}"
            continue
        assert row["status"] == "ok", row
        assert row["clock"] == "process_time"  # one thread: process CPU time
        assert row["q1_ms"] <= row["median_ms"] <= row["q3_ms"]
        assert row["gbps"] == pytest.approx(row["bytes"] / row["median_ms"] / 1e6)
        assert row["frac_of_ceiling"] == pytest.approx(row["gbps"] / row["ceiling_gbps"])
        assert row["ratio_q1"] <= row["ratio_vs_reference"] <= row["ratio_q3"]
        # the kernel the profiler saw, and whether fastmae picks it by default
        if path == "native":
            assert row["backend"] == "native" and row["kernel"].startswith(f"native: {op}")
            assert row["default"] is True
        elif path == "torch":
            assert row["backend"] == "torch" and row["kernel"] == "aten"
            assert row["default"] is (not (has_native and native_built))
        else:
            assert row["backend"] is None and row["default"] is None and row["kernel"] == "aten"
        if path == "reference":
            assert row["ratio_vs_reference"] == 1.0
        if path == "copy_":
            assert row["frac_of_ceiling"] == pytest.approx(1.0)

    table = capsys.readouterr().out
    assert "| op | size | batch | pass | provider | kernel | default |" in table
    assert table.count("| mask_token_blend |") == len(PATH_NAMES) * len(PASSES)


def test_size_flag_forces_shape_and_batch(bench_ops) -> None:  # type: ignore[no-untyped-def]
    args = bench_ops.parse_args(["--size", "vit_b16:3", "tiny"])
    assert [(s.name, s.batch, probe) for s, probe in bench_ops.sizes_to_run("patchify_gather", args)] == [
        ("vit_b16", 3, False), ("tiny", 2, False)]
    args = bench_ops.parse_args(["--sizes", "vit_h14", "simmim_vit_b16_192"])
    assert [(s.name, probe) for s, probe in bench_ops.sizes_to_run("masked_mse_loss", args)] == [("vit_h14", True)]
    assert [s.name for s, _ in bench_ops.sizes_to_run("mask_token_blend", args)] == ["simmim_vit_b16_192"]
    with pytest.raises(SystemExit):
        bench_ops.parse_args(["--size", "vit_b16:zero"])
