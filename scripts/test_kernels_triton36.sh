#!/usr/bin/env bash
# Run the kernel tests (tests/test_op_*.py and tests/test_ops_compose.py) through the Triton interpreter under triton==3.6.0,
# the version on the H100 machine, in a throwaway venv (scripts/triton36_venv.sh). Not part of CI: run it before
# merging a kernel (CI runs the kernel report under triton 3.6, not these tests).
# Usage: scripts/test_kernels_triton36.sh [pytest args, e.g. tests/test_op_patchify_gather.py -q]
# FASTMAE_TRITON36_VENV overrides the venv path; an existing venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/triton36_venv.sh)
if [ "$#" -eq 0 ]; then
    set -- tests/test_op_*.py tests/test_ops_compose.py -q
fi
export TRITON_INTERPRET=1 FASTMAE_BACKEND=triton PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m pytest -p no:cacheprovider "$@"
