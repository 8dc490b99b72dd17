#!/usr/bin/env bash
# README command 2: install fastmae for a CPU machine into .venv and run the tests.
# Triton kernels run on CPU tensors through the interpreter (TRITON_INTERPRET=1).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q setuptools wheel
command -v cmake >/dev/null || python -m pip install -q cmake   # the native CPU build needs it; CI checks it loads
python -m pip install -q torch==2.13.0          # the local CPU wheel: no CUDA wheels are pulled in
FASTMAE_BUILD_NATIVE=1 python -m pip install -q --no-build-isolation -e ".[test]"
ruff check .
# triton 3.6 (the GPU machine's) in a second environment: tests/test_kernel_report.py compiles the kernels with it
FASTMAE_TRITON36_PYTHON=$(bash scripts/triton36_venv.sh)
export FASTMAE_TRITON36_PYTHON
set +e
TRITON_INTERPRET=1 python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit "$status"
