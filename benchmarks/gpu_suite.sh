#!/usr/bin/env bash
# The GPU suite, one stage per call (each stage < 8 minutes on the H100 of shared/GPU_NOTES.md):
#
#   bash benchmarks/gpu_suite.sh STAGE [OUTPUT_DIR]      # OUTPUT_DIR defaults to $OUT, else ./gpu_out
#
# Stages: tests, sanitize, ops, loader, step-b, step-l, step-h, e2e, profile, all (all = every stage in turn,
# for a machine with no time limit). Each stage installs fastmae from this tree (no native build
# unless FASTMAE_BUILD_NATIVE=1), installs the wheels carried in .whl/ (xformers, DALI's pure-Python
# needs) and DALI once its parts (.dali1, .dali2, ...; scripts/prepare_gpu_wheels.sh makes them) have all
# arrived, one per call, runs, and packs
# everything it wrote into one archive OUTPUT_DIR/fastmae-STAGE.tar.gz.
set -uo pipefail
stage=${1:?usage: gpu_suite.sh STAGE [OUTPUT_DIR]}
out=${2:-${OUT:-$PWD/gpu_out}}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
work=$(mktemp -d)
mkdir -p "$out" "$work/results"
log="$work/$stage.log"
exec > >(tee -a "$log") 2>&1
python=${PYTHON:-python3}

install() {
    if compgen -G ".whl/*.whl" >/dev/null; then
        $python -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    # DALI travels in parts (.dali1, .dali2, ... from scripts/prepare_gpu_wheels.sh), one per call: each is
    # appended once (a repeated call does not append twice); the call that completes the tar installs it
    local part
    mkdir -p /tmp/dali-parts
    for part in .dali[0-9]*; do
        [ -f "$part/part" ] || continue
        if ! grep -qx "$part" /tmp/dali-parts/appended 2>/dev/null; then
            cat "$part/part" >> /tmp/dali-parts/dali.tar && echo "$part" >> /tmp/dali-parts/appended
        fi
    done
    if [ -f /tmp/dali-parts/dali.tar ] && tar -tf /tmp/dali-parts/dali.tar >/dev/null 2>&1; then
        tar -xf /tmp/dali-parts/dali.tar -C /tmp/dali-parts
        $python -m pip install -q --no-index --no-deps --target /tmp/site /tmp/dali-parts/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    elif [ -f /tmp/dali-parts/dali.tar ]; then
        echo "DALI parts so far: $(tr '\n' ' ' < /tmp/dali-parts/appended)(incomplete: carry the next part)"
    fi
    FASTMAE_BUILD_NATIVE=${FASTMAE_BUILD_NATIVE:-0} \
        $python -m pip install -q --no-deps --no-build-isolation -e . || return 1
    $python -m fastmae info
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv || true
}

run_stage() {
    local name=$1 res="$work/results"
    echo "=== stage $name ($(date -u +%FT%TZ)) ==="
    case "$name" in
        tests)
            # kernels on the GPU for real: no interpreter; the op tests take their CUDA parametrisations
            TRITON_INTERPRET=0 FASTMAE_TEST_DEVICE=cuda $python -m pytest tests -q -x --timeout 300 \
                -p no:cacheprovider --junitxml="$res/tests.xml" ;;
        sanitize)
            # every Triton kernel, forward and backward, under compute-sanitizer memcheck then racecheck;
            # no caching allocator, so memcheck sees each tensor's own bounds (scripts/sanitize_kernels.py)
            local sanitizer tool failed=0
            sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
            for tool in memcheck racecheck; do
                TRITON_INTERPRET=0 PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" --error-exitcode 1 \
                    $python scripts/sanitize_kernels.py 2>&1 | tee "$res/sanitize-$tool.log" || failed=1
            done
            return $failed ;;
        ops)
            $python benchmarks/bench_ops.py --out "$res/ops.jsonl" ;;
        loader)
            $python benchmarks/bench_loader.py --out "$res/loader.jsonl" ;;
        step-b)
            $python benchmarks/bench_train_step.py --models mae_vit_base_patch16 --batch 256 \
                --out "$res/train_step.jsonl" ;;
        step-l)
            $python benchmarks/bench_train_step.py --models mae_vit_large_patch16 --batch 256 \
                --out "$res/train_step.jsonl" ;;
        step-h)
            $python benchmarks/bench_train_step.py --models mae_vit_huge_patch14 --batch 128 --max-batch \
                --out "$res/train_step.jsonl" ;;
        e2e)
            $python benchmarks/bench_end_to_end.py --out "$res/end_to_end.jsonl" ;;
        profile)
            $python benchmarks/profile_step.py --out "$res" ;;
        *)
            echo "unknown stage $name (tests, sanitize, ops, loader, step-b, step-l, step-h, e2e, profile, all)"
            return 2 ;;
    esac
}

status=0
if install; then
    if [ "$stage" = all ]; then
        for s in tests sanitize ops loader step-b step-l step-h e2e profile; do run_stage "$s" || status=$?; done
    else
        run_stage "$stage" || status=$?
    fi
else
    status=1
fi
echo "=== stage $stage finished with status $status ==="
tar -czf "$out/fastmae-$stage.tar.gz" -C "$work" .
echo "archive: $out/fastmae-$stage.tar.gz"
exit $status
