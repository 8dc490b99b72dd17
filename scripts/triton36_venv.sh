#!/usr/bin/env bash
# Make (or reuse) a virtual environment with torch 2.13.0 (the local CPU wheel: no CUDA wheels are pulled in)
# and triton 3.6.0, the GPU machine's triton, and print its python. FASTMAE_TRITON36_VENV overrides the path.
# Used by scripts/test.sh (the kernel report under triton 3.6) and scripts/test_kernels_triton36.sh.
set -euo pipefail
venv="${FASTMAE_TRITON36_VENV:-/tmp/fastmae-triton36}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
    # torch first, then triton without letting pip re-resolve torch's own pin
    "$venv/bin/python" -m pip install -q torch==2.13.0 pytest pytest-timeout numpy pillow >&2
    "$venv/bin/python" -m pip install -q --no-deps triton==3.6.0 >&2
fi
"$venv/bin/python" - >&2 <<'PY'
import triton
import torch
assert triton.__version__.startswith("3.6."), f"expected triton 3.6, got {triton.__version__}"
print(f"triton 3.6 environment: torch {torch.__version__}, triton {triton.__version__}")
PY
echo "$venv/bin/python"
