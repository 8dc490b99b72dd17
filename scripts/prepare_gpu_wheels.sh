#!/usr/bin/env bash
# Fetch, on a CPU machine, the wheels the GPU machine lacks (shared/GPU_NOTES.md), before any GPU time
# is spent: xformers and DALI's pure-Python needs go to .whl/ (small, carried on every call), DALI and
# its CUDA libraries are packed into one tar and split into parts under 60 MB, one per folder
# .dali1, .dali2, ... (carry one part per call; benchmarks/gpu_suite.sh appends each part and installs
# DALI once the tar is complete). All these folders must be git-ignored (.git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
download() {  # the GPU machine: Python 3.12, x86-64, manylinux
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 \
        -d "$1" "${@:2}"
}
for folder in .whl .dali-wheels; do
    grep -qx "/$folder/" .git/info/exclude 2>/dev/null || echo "/$folder/" >> .git/info/exclude
done
grep -qx "/.dali[0-9]*/" .git/info/exclude || echo "/.dali[0-9]*/" >> .git/info/exclude
mkdir -p .whl .dali-wheels
download .whl xformers==0.0.35 astunparse gast optree nvtx makefun libcst six
download .dali-wheels nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13 nvidia-libnvcomp-cu13 nvidia-nvjpeg \
    nvidia-nvjpeg2k-cu13 nvidia-nvtiff-cu13
rm -rf .dali[0-9]*
tar -cf /tmp/fastmae-dali.tar -C .dali-wheels .
split -b 55M -d -a 1 /tmp/fastmae-dali.tar /tmp/fastmae-dali.part.
index=1
for part in /tmp/fastmae-dali.part.*; do
    mkdir -p ".dali$index" && mv "$part" ".dali$index/part"
    index=$((index + 1))
done
rm -f /tmp/fastmae-dali.tar
du -sh .whl .dali[0-9]*
echo "carry .whl on every call, and .dali1 .. .dali$((index - 1)) one per call, in order, back to back"
