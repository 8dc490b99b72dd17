#!/usr/bin/env bash
# The device check: one call of at most 9 minutes on the H200 (torch, triton, pytest, pytest-timeout of that
# machine; nothing carried but the tree: no native build, no DALI, no xformers). Each stage runs under its
# own timeout, so a slow stage cannot take the others' results:
#
#   1 install   pip install -e . (no native build), fastmae info, nvidia-smi
#   2 nan       tests/test_nan_bits.py on CUDA: every NaN/Inf bit pattern through every compiled kernel
#   3 ops       the CUDA correctness selection of the op tests (Triton path against the reference, int64 tests)
#   4 timings   benchmarks/bench_ops.py at ViT-B/16 and ViT-H/14 (every path: fastmae's op on its Triton and
#               plain-torch kernels, eager and compiled reference, a plain copy_ of the same bytes)
#   5 step      benchmarks/bench_train_step.py: ViT-B/16, batch 256, the three providers
#
#   bash benchmarks/gpu_check.sh                     # on the GPU machine; results in $OUT (else ./gpu_check_out)
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh # CPU, tiny shapes, same stages (CI runs this)
#
# $OUT gets gpu_check.json (device, versions, date, commit, each stage's status, seconds and results),
# gpu_check.log, nan.xml, ops.xml, ops.jsonl and train_step.jsonl. docs/ops.md gives the expected device time.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=${OUT:-$repo/gpu_check_out}
mkdir -p "$out"
python=${PYTHON:-python3}
dry=${GPU_CHECK_DRY_RUN:-0}
exec > >(tee -a "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 FASTMAE_BACKEND=auto

# the CUDA correctness selection: each Triton op against the reference, forward and backward, and the int64 tests
OP_TESTS=(
    tests/test_op_patchify_gather.py::test_matches_reference
    tests/test_op_patchify_gather.py::test_video_tubelets
    tests/test_op_patchify_gather.py::test_int64_offsets_in_a_huge_image
    tests/test_op_patchify_gather.py::test_int64_offsets_in_a_huge_image_backward
    tests/test_op_unshuffle.py::test_matches_reference
    tests/test_op_unshuffle.py::test_int64_offsets_past_2_31
    tests/test_op_masked_mse_loss.py::test_images_match_reference
    tests/test_op_masked_mse_loss.py::test_video_tubelets
    tests/test_op_masked_mse_loss.py::test_image_gradient
    tests/test_op_masked_mse_loss.py::test_int64_offsets_past_2_31
    # three of the blend test's 24 parametrisations (they made 66 of the stage's 145 compiles): two channel
    # blocks in bf16 and fp32 with a bool mask, several backward row chunks in fp16 with a 0/1 float mask
    'tests/test_op_mask_token_blend.py::test_binary_mask_matches_reference_bitwise[triton-2x9x300-bool-torch.bfloat16]'
    'tests/test_op_mask_token_blend.py::test_binary_mask_matches_reference_bitwise[triton-2x9x300-bool-torch.float32]'
    'tests/test_op_mask_token_blend.py::test_binary_mask_matches_reference_bitwise[triton-3x200x5-binary-torch.float16]'
)

if [ "$dry" = 1 ]; then
    # CPU: kernels in the interpreter, tiny shapes, and a few tests of each selection (compile counts printed)
    export TRITON_INTERPRET=1 FASTMAE_TEST_DEVICE=cpu
    T_INSTALL=60 T_NAN=120 T_OPS=120 T_TIMINGS=120 T_STEP=180
    nan_args=(tests/test_nan_bits.py -k "patchify and triton")
    ops_args=("${OP_TESTS[0]}" -k "triton and float32")
    timing_args=(--tiny --no-compile --ops patchify_gather masked_mse_loss --warmup 1 --rounds 2)
    step_args=(--models mae_vit_test --batch 2 --warmup 0 --iters 1 --repeats 1 --no-compile)
else
    export TRITON_INTERPRET=0 FASTMAE_TEST_DEVICE=cuda
    T_INSTALL=45 T_NAN=80 T_OPS=120 T_TIMINGS=110 T_STEP=170
    nan_args=(tests/test_nan_bits.py)
    ops_args=("${OP_TESTS[@]}" -k triton)
    timing_args=(--sizes vit_b16 vit_h14 simmim_vit_b16_192)
    step_args=(--models mae_vit_base_patch16 --batch 256 --repeats 1)
fi

status_file="$out/stages.tsv"
: > "$status_file"

# run_stage NAME SECONDS COMMAND...: the command under its own timeout; records status and seconds
run_stage() {
    local name=$1 limit=$2 start rc
    shift 2
    echo "=== $name (limit ${limit}s, $(date -u +%FT%TZ)) ==="
    start=$(date +%s)
    timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@"  # bash -c: the stage may be a function
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$limit" >> "$status_file"
    echo "=== $name: exit $rc after $(( $(date +%s) - start ))s ==="
}

install() {
    if [ "$dry" != 1 ]; then
        FASTMAE_BUILD_NATIVE=0 $python -m pip install -q --no-deps --no-build-isolation -e . || return 1
        nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv || true
    fi
    $python -m fastmae info
}

pytest_stage() {
    local junit=$1 count=()
    shift
    # on CPU the interpreter runs the kernels: count the compiles the same selection makes on a GPU
    [ "$dry" = 1 ] && count=(-p fastmae.bench.compile_count)
    $python -m pytest -q -p no:cacheprovider "${count[@]}" --timeout 120 --junitxml="$junit" "$@"
}

export -f install pytest_stage
export dry python
run_stage install "$T_INSTALL" install
run_stage nan "$T_NAN" pytest_stage "$out/nan.xml" "${nan_args[@]}"
run_stage ops "$T_OPS" pytest_stage "$out/ops.xml" "${ops_args[@]}"
run_stage timings "$T_TIMINGS" $python benchmarks/bench_ops.py "${timing_args[@]}" --out "$out/ops.jsonl"
run_stage step "$T_STEP" $python benchmarks/bench_train_step.py "${step_args[@]}" --out "$out/train_step.jsonl"

$python -m fastmae.bench.gpu_check_summary "$out" "$status_file"
status=$?
rm -f "$status_file"  # its contents are in gpu_check.json
exit $status
