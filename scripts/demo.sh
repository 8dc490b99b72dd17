#!/usr/bin/env bash
# README command 1: set up fastmae in .venv, make the embedded dataset, pretrain a small MAE and show
# that it learned (first vs last loss, loss_curve.png, reconstruction.png in demo_out/, and a linear probe of
# the pretrained encoder against its random init on held-out labelled images).
# CPU: ~5 minutes on 2 cores with the torch loader. With a GPU the demo trains a larger model, with
# DALI if it is installed (pip install -e ".[dali]").
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q setuptools wheel
python -m pip install -q torch==2.13.0          # the local CPU wheel: no CUDA wheels are pulled in
python -m pip install -q --no-build-isolation -e ".[plots]"   # matplotlib draws loss_curve.png
python -m fastmae.train.demo --out demo_out "$@"
