"""Benchmark harness: the analytic FLOP count, and CPU smoke runs (no speed assertions)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastmae.bench import report
from fastmae.bench.flops import mae_forward_flops_per_image, mae_train_flops_per_image
from fastmae.reference import create_reference_model


def test_flop_count_agrees_with_torch_flop_counter_for_vit_base() -> None:
    """The reference embeds all L patches (the algorithm only needs K), so it counts slightly more."""
    name = "mae_vit_base_patch16"
    with torch.device("meta"):
        model = create_reference_model(name)
        imgs, noise = torch.randn(2, 3, 224, 224), torch.rand(2, 196)
    with FlopCounterMode(display=False) as counter:
        loss, _, _ = model(imgs, noise=noise)
        loss.backward()
    counted = counter.get_total_flops() / 2
    assert 1.0 <= counted / mae_train_flops_per_image(name) < 1.02


def test_flop_counts_match_the_published_figures() -> None:
    # shared/GPU_NOTES.md: ~58 / ~124 / ~290 GFLOP per image for training at 224 px, mask 0.75
    for name, gflop in (("mae_vit_base_patch16", 58), ("mae_vit_large_patch16", 124), ("mae_vit_huge_patch14", 290)):
        assert mae_train_flops_per_image(name) / 1e9 == pytest.approx(gflop, rel=0.01)
    assert mae_train_flops_per_image("mae_vit_base_patch16") == 3 * mae_forward_flops_per_image("mae_vit_base_patch16")


def test_train_step_benchmark_smoke_on_cpu(tmp_path) -> None:
    from fastmae.bench.cli import main as bench_main

    out = tmp_path / "rows.jsonl"
    assert bench_main(["--model", "mae_vit_test", "--batch_size", "2", "--iters", "1", "--warmup", "0",
                       "--repeats", "2", "--device", "cpu", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["provider"] for r in rows} == {"reference-published", "reference-modern", "fastmae"}
    for row in rows:
        for field in ("device", "provider", "model", "batch", "img_per_s", "peak_mem_bytes", "mfu", "torch",
                      "triton", "git_commit", "date", "command"):
            assert field in row, field
        assert row["img_per_s"] > 0 and 0 < row["mfu"] and row["timed_steps"] == 2
    md = report.render_markdown(rows)
    assert "## train_step on cpu" in md and "reference-published" in md
    plots = report.plot_train_step(rows, tmp_path)
    assert len(plots) == 2
    for path in plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_end_to_end_benchmark_smoke_on_cpu(tmp_path) -> None:
    from fastmae.bench.end_to_end import ensure_dataset, run

    data = ensure_dataset(tmp_path / "data", 12, (24, 40), workers=1)
    configs = [("fastmae", "torch"), ("reference-modern", "torch")]
    if importlib.util.find_spec("nvidia.dali") is not None:
        configs.append(("fastmae", "dali"))
    rows = run("mae_vit_test", data, 2, torch.device("cpu"), configs=configs, steps=2, warmup=1, num_workers=0,
               compile_model=False)
    assert [(r["provider"], r["loader"]) for r in rows] == configs
    for row in rows:
        assert row["steps"] == 2 and row["img_per_s"] > 0 and 0 <= row["data_wait_share"] < 1
        assert row["speedup_vs_reference-modern"] > 0
    with pytest.raises(ValueError, match="need warmup \\+ steps = 9"):
        run("mae_vit_test", data, 2, torch.device("cpu"), configs=configs[:1], steps=8, warmup=1, num_workers=0,
            compile_model=False)


def test_loader_benchmark_rows_and_report(tmp_path, monkeypatch) -> None:
    """benchmarks/bench_loader.py at its smallest: bench=loader rows appended to --out, rendered by report."""
    import sys
    from pathlib import Path

    from fastmae.bench.record import read_jsonl

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    sys.modules.pop("benchmarks.bench_loader", None)
    from benchmarks import bench_loader

    out = tmp_path / "results" / "loader.jsonl"
    argv = ["--num-images", "8", "--image-size", "20", "28", "--batch-size", "4", "--input-size", "16",
            "--epochs", "1", "--threads", "1", "--backends", "torch", "--out", str(out)]
    assert bench_loader.main(argv) == 0
    assert bench_loader.main(argv) == 0  # appends
    rows = read_jsonl(out)
    assert len(rows) == 2
    for row in rows:
        assert row["bench"] == "loader" and row["backend"] == "torch" and row["device_type"] == "cpu"
        assert row["images"] == 8 and row["images_per_s"] == pytest.approx(8 / row["seconds"])
        assert row["command"].endswith("--out " + str(out))
    md = report.render_markdown(report.load_rows(out.parent))
    header = "| " + " | ".join(report.COLUMNS["loader"]) + " |"
    assert md.count("## loader on cpu") >= 1 and md.count(header) >= 1
    assert md.count("| torch | cpu | 1 | 4 | 16 | float32 | 8 |") == 2


def test_report_renders_ops_rows_with_their_columns() -> None:
    row = {"bench": "ops", "device": "cpu (x, 2 threads)", "date": "2026-01-01T00:00:00+00:00", "git_commit": "abc",
           "op": "masked_mse_loss", "size": "tiny", "pass": "fwd", "provider": "fastmae", "dtype": "float32",
           "median_ms": 0.5, "gbps": 1.25, "peak_mem_bytes": None, "status": "ok", "bytes": 625000}
    md = report.render_markdown([row])
    assert "## ops on cpu (x, 2 threads) (2026-01-01T00:00:00+00:00)" in md
    assert "| op | size | pass | provider | dtype | median_ms | gbps | peak_mem_bytes | status |" in md
    assert "| masked_mse_loss | tiny | fwd | fastmae | float32 | 0.5 | 1.25 | - | ok |" in md


def test_train_step_and_profile_scripts_smoke(tmp_path, monkeypatch) -> None:
    """benchmarks/bench_train_step.py and profile_step.py at tiny sizes on CPU (no speed assertions)."""
    from pathlib import Path

    from fastmae.bench.record import read_jsonl

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    from benchmarks import bench_train_step, profile_step

    out = tmp_path / "train_step.jsonl"
    assert bench_train_step.main(["--models", "mae_vit_test", "--batch", "2", "--warmup", "0", "--iters", "1",
                                  "--repeats", "1", "--device", "cpu", "--out", str(out)]) == 0
    rows = read_jsonl(out)
    assert sorted(r["provider"] for r in rows) == ["fastmae", "reference-modern", "reference-published"]
    assert all(r["bench"] == "train_step" and r["model"] == "mae_vit_test" and r["img_per_s"] > 0 for r in rows)
    assert profile_step.main(["--model", "mae_vit_test", "--batch", "2", "--steps", "1", "--device", "cpu",
                              "--out", str(tmp_path / "prof")]) == 0
    table = (tmp_path / "prof" / "profile_fastmae_mae_vit_test.txt").read_text()
    assert "aten::" in table or "fastmae::" in table
    assert (tmp_path / "prof" / "profile_fastmae_mae_vit_test.trace.json").stat().st_size > 0
