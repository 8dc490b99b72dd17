#!/usr/bin/env bash
# The committed CPU run: the op benchmark at ViT-B/16 shapes (and SimMIM's for mask_token_blend) and the ViT-B/16
# train step, eager then compiled, on one torch thread timed by process CPU time; then RESULTS.md.
#
#   bash benchmarks/cpu_run.sh          # about 20 minutes on the shared 2-core machine; PYTHON=... to pick python
#
# Rows are appended to benchmarks/results/ops.jsonl and train_step.jsonl (each stamped with the commit; run it
# from a clean checkout so the stamp names what ran), and benchmarks/RESULTS.md is regenerated from all rows.
# One thread and CPU time make the figures stand up on a machine other people load too; they still share its
# caches and memory bandwidth, so ratios (paired per round) are steadier than absolute times.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 FASTMAE_BACKEND=auto PYTHONUNBUFFERED=1
step=(--device cpu --models mae_vit_base_patch16 --batch 2 --warmup 2 --iters 3 --repeats 2)

$python benchmarks/bench_ops.py --device cpu --sizes vit_b16 simmim_vit_b16_192
$python benchmarks/bench_train_step.py "${step[@]}" --no-compile
$python benchmarks/bench_train_step.py "${step[@]}" --compile
$python benchmarks/report.py
