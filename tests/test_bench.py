"""Benchmark harness: the analytic FLOP count, and CPU smoke runs (no speed assertions)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fastmae import _native
from fastmae.bench import report
from fastmae.bench.flops import mae_forward_flops_per_image, mae_train_flops_per_image, meta_train_flops_per_image
from fastmae.models import create_model
from fastmae.reference import create_reference_model

VIT_B = "mae_vit_base_patch16"
VIT_B_TRAIN_FLOPS = 58_166_575_104  # analytic: encoder on 1+K tokens, decoder and head on 1+L, x3 for training
D, P, L, K, DEC = 768, 16 * 16 * 3, 196, 49, 512  # ViT-B/16 widths, patches, kept patches, decoder width


def test_analytic_flop_count_for_vit_base_is_pinned() -> None:
    assert mae_train_flops_per_image(VIT_B) == VIT_B_TRAIN_FLOPS
    assert VIT_B_TRAIN_FLOPS == 3 * mae_forward_flops_per_image(VIT_B)


@pytest.mark.parametrize("attn", ["math", "sdpa"])
def test_meta_flop_count_of_the_reference_agrees_with_the_analytic_count(attn: str) -> None:
    """On meta, SDPA decomposes to math, so the counter sees the attention products (on CPU tensors it does not).
    The reference differs by its patch embedding only: a conv over all L patches (forward, and its weight
    gradient: the images need none) where the count has a linear on K patches, three times."""
    counted = meta_train_flops_per_image(lambda: create_reference_model(VIT_B, attn_impl=attn), VIT_B)
    assert counted == 58_455_588_864
    assert counted - VIT_B_TRAIN_FLOPS == 2 * (2 * L * P * D) - 3 * (2 * K * P * D)
    assert abs(counted / VIT_B_TRAIN_FLOPS - 1) < 0.005


@pytest.mark.parametrize("attn", ["math", "sdpa"])
def test_meta_flop_count_of_fastmae_agrees_with_the_analytic_count(attn: str) -> None:
    """fastmae embeds only the K visible patches (no gradient for the images either) and runs its head on the
    L - K removed tokens only, where the count has 1 + L."""
    counted = meta_train_flops_per_image(lambda: create_model(VIT_B, attn_backend=attn), VIT_B)
    assert counted == 57_990_807_552
    assert counted - VIT_B_TRAIN_FLOPS == -(2 * K * P * D) - 3 * (2 * (1 + L - (L - K)) * DEC * P)
    assert abs(counted / VIT_B_TRAIN_FLOPS - 1) < 0.005


def test_flop_counter_on_cpu_tensors_misses_sdpa_which_meta_counts() -> None:
    """Why the harness counts on meta: on CPU tensors SDPA runs a flash kernel FlopCounterMode has no formula
    for, so the attention products vanish from the count (if torch adds one, docs/bench.md must change)."""
    from torch.utils.flop_counter import FlopCounterMode

    name = "mae_vit_test"
    meta = meta_train_flops_per_image(lambda: create_reference_model(name, attn_impl="sdpa"), name)
    model = create_reference_model(name, attn_impl="sdpa")
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, 16, 16), noise=torch.rand(2, 16))[0].backward()
    on_cpu = counter.get_flop_counts()["Global"]
    assert torch.ops.aten.bmm not in on_cpu  # the attention products
    assert meta - counter.get_total_flops() / 2 > 0


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
        # MFU against a ceiling measured in the dtype the provider's products run in (fp32 without autocast)
        compute = {"bf16": "bfloat16", "fp32": "float32"}[row["precision"]]
        assert row["peak_dtype"] == compute and row["peak_tflops"] > 0 and row["peak_shape"]
        assert row["mfu"] == pytest.approx(row["achieved_tflops"] / row["peak_tflops"])
        assert row["flops_source"] == "analytic" and row["threads"] == torch.get_num_threads()
        assert row["timing"] == "interleaved" and row["clock"] in ("process_time", "perf_counter")
    by_provider = {r["provider"]: r for r in rows}
    assert by_provider["reference-published"]["precision"] == "fp32"  # CPU: no fp16 autocast
    assert by_provider["fastmae"]["precision"] == by_provider["reference-modern"]["precision"] == "bf16"
    assert by_provider["reference-published"]["attn"] == "math" and by_provider["reference-modern"]["attn"] == "sdpa"
    assert by_provider["fastmae"]["op_kernel"] == ("native" if _native.available() else "torch")
    assert by_provider["reference-modern"]["op_kernel"] is None
    fast = by_provider["fastmae"]
    assert fast["speedup_vs_reference-modern_q1"] <= fast["speedup_vs_reference-modern"] \
        <= fast["speedup_vs_reference-modern_q3"]
    assert by_provider["reference-modern"]["speedup_vs_reference-modern"] == 1.0
    md = report.render_markdown(rows)
    assert "## train_step on cpu" in md and "reference-published" in md
    plots = report.plot_train_step(rows, tmp_path)
    assert [p.name.split("_cpu")[0] for p in plots] == ["train_step_img_per_s"]  # no CPU peak memory to plot
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
    row = {"bench": "ops", "device": "cpu (x, 1 threads)", "date": "2026-01-01T00:00:00+00:00", "git_commit": "abc",
           "op": "masked_mse_loss", "size": "vit_b16", "batch": 8, "pass": "fwd", "provider": "native",
           "kernel": "native: masked_mse_loss", "default": True, "dtype": "float32", "threads": 1,
           "clock": "process_time", "median_ms": 0.5, "q1_ms": 0.25, "q3_ms": 0.75, "ratio_vs_reference": 0.5,
           "ratio_q1": 0.25, "ratio_q3": 0.75, "gbps": 1.25, "frac_of_ceiling": 0.125, "ceiling_gbps": 10.0,
           "peak_mem_bytes": None, "status": "ok", "bytes": 625000}
    md = report.render_markdown([row])
    assert "## ops on cpu (x, 1 threads) (2026-01-01T00:00:00+00:00)" in md
    assert "| " + " | ".join(report.COLUMNS["ops"]) + " |" in md
    assert ("| masked_mse_loss | vit_b16 | 8 | fwd | native | native: masked_mse_loss | True | float32 | 1 | "
            "process_time | 0.5 | 0.25 | 0.75 | 0.5 | 0.25 | 0.75 | 1.25 | 0.125 | 10 | - | ok |") in md


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
