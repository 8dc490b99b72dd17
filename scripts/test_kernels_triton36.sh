#!/usr/bin/env bash
# Run the kernel tests (tests/test_op_*.py and tests/test_ops_compose.py) through the Triton interpreter under triton==3.6.0,
# the version on the H100 machine, in a throwaway venv. Not part of CI: run it before merging a kernel.
# Usage: scripts/test_kernels_triton36.sh [pytest args, e.g. tests/test_op_patchify_gather.py -q]
# FASTMAE_TRITON36_VENV overrides the venv path; an existing venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FASTMAE_TRITON36_VENV:-/tmp/fastmae-triton36}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    # torch first (the local CPU wheel pulls no CUDA wheels), then triton without letting pip
    # re-resolve torch's own pin
    "$venv/bin/python" -m pip install -q torch==2.13.0 pytest pytest-timeout numpy pillow
    "$venv/bin/python" -m pip install -q --no-deps triton==3.6.0
fi
"$venv/bin/python" - <<'PY'
import triton
import torch
assert triton.__version__.startswith("3.6."), f"expected triton 3.6, got {triton.__version__}"
print(f"torch {torch.__version__}, triton {triton.__version__}")
PY
if [ "$#" -eq 0 ]; then
    set -- tests/test_op_*.py tests/test_ops_compose.py -q
fi
export TRITON_INTERPRET=1 FASTMAE_BACKEND=triton PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
