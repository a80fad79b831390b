#!/usr/bin/env bash
# Issue 16's GPU check in one run of about 8 minutes, from the checkout's root on a lent
# GPU machine (benchmarks/README.md, "On a lent GPU"): after `make gpu-wheels` here,
#
#   run(command="GPU_CHECK_COMMIT=<git rev-parse HEAD> bash benchmarks/gpu_check.sh",
#       carry=[".whl"], timeout_s=590)
#
# 1. installs the carried wheels (.whl: cryptography and its needs) into /tmp/site;
# 2. records the machine: nvidia-smi, torch and the device's name (env.txt);
# 3. the device tests with MPC_ML_TEST_DEVICE=cuda (test_limbs, test_device_prg,
#    test_cuda_path, test_device_path: limb kernels and ChaCha20 on the GPU bit for bit
#    against the CPU, private ops and a LeNet-like model with shares on the GPU);
# 4. `mpc-ml bench` rows on the GPU (--device cuda) while the same rows run on the CPU
#    beside them (16 cores: the two never share a core), one group of rows per run so a
#    failing row costs only its group: matmul1024, resnet18_b64 (batch 64; too slow for
#    the CPU side here, see README), lenet5_b1/b32, resnet18, bert_base;
#    summary.md / summary.json (CPU against GPU, benchmarks/suite.py --compare) are
#    rewritten after every group;
# 5. the whole test suite with MPC_ML_TEST_DEVICE=cuda (pytest-xdist -n 8 where present)
#    in the time left, interrupted (SIGINT: pytest still prints its summary) at the end.
#
# Every step runs under `timeout` against one budget (GPU_CHECK_BUDGET_S, default 540 s),
# so one hang cannot eat the device time. What comes back from $OUT (at most 8 files):
# gpu_check.log (this script's output), env.txt, device_tests.log, suite_tests.log,
# summary.md, summary.json, bench.tar.gz (every group's suite.json, suite.md and log).
#
# A dry run of the same steps on a CPU-only machine (to check the plumbing):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 GPU_CHECK_WHEELS=0 GPU_CHECK_PYTHON=.venv/bin/python \
#   GPU_CHECK_TESTS="tests/test_limbs.py" bash benchmarks/gpu_check.sh
# (GPU_CHECK_DEVICE=cpu: the "GPU" side runs on the CPU; GPU_CHECK_QUICK=1: --quick rows;
# GPU_CHECK_TESTS: what step 5 runs instead of the whole of tests/).
set -u -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
PY=${GPU_CHECK_PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
QUICK=${GPU_CHECK_QUICK:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
TESTS=${GPU_CHECK_TESTS:-tests}
OUT=${OUT:-$ROOT/benchmarks/out/gpu_check}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
START=$(date +%s)
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK/bench/cpu" "$WORK/bench/gpu" || exit 1

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }
# limit CAP [RESERVE]: CAP seconds, or what is left of the budget less RESERVE (at least 5)
limit() {
    local l=$(( $(left) - ${2:-0} ))
    (( l < 5 )) && l=5
    (( l < $1 )) && echo "$l" || echo "$1"
}
STATUS=()
FAILED=0
# step NAME SECONDS LOG CMD...: CMD under timeout, its output also in LOG, its status kept.
# timeout signals CMD's whole process group (the parties it started too): SIGINT first
# (pytest then prints its summary), SIGKILL 15 s later.
step() {
    local name=$1 secs=$2 log=$3 rc
    shift 3
    echo "== [$(elapsed) s] $name (limit ${secs} s)"
    timeout -s INT -k 15 "$secs" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    echo "== [$(elapsed) s] $name: exit $rc$( ((rc == 124)) && echo ' (time limit)')"
    STATUS+=("$name: exit $rc")
    ((rc == 0)) || FAILED=1
}

main() {

# -- 1. wheels ------------------------------------------------------------------------------
if [ "${GPU_CHECK_WHEELS:-1}" = 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "gpu_check: installing .whl failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$ROOT
else
    export PYTHONPATH=$ROOT
fi
[ -n "${GPU_CHECK_COMMIT:-}" ] && export MPC_ML_GIT_COMMIT=$GPU_CHECK_COMMIT  # suite.json's commit
"$PY" -c "import cryptography, mpc_ml" || {
    echo "gpu_check: mpc_ml does not import (no cryptography? run make gpu-wheels here and carry .whl)"
    exit 1
}

# -- 2. the machine -------------------------------------------------------------------------
{
    date -u; uname -a; echo "nproc: $(nproc)"
    echo "commit: ${GPU_CHECK_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo 'unknown (no .git here; pass GPU_CHECK_COMMIT)')}"
    command -v nvidia-smi >/dev/null && nvidia-smi
    "$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|numpy|cryptography|cffi|pytest|pytest-xdist|pytest-timeout|transformers|hypothesis|matplotlib|scikit-learn|mpi4py) "
} > "$OUT/env.txt" 2>&1
"$PY" - "$DEVICE" >> "$OUT/env.txt" 2>&1 <<'EOF' || { cat "$OUT/env.txt"; echo "gpu_check: no GPU to check"; exit 1; }
import sys, torch
print("torch", torch.__version__, "CUDA build", torch.version.cuda,
      "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device 0:", torch.cuda.get_device_name(0), f"{p.total_memory / 2**30:.1f} GiB",
          "capability", torch.cuda.get_device_capability(0), "count", torch.cuda.device_count())
elif sys.argv[1] != "cpu":
    sys.exit("gpu_check: torch sees no GPU")
EOF
cat "$OUT/env.txt"

XDIST=() XDIST4=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 8) XDIST4=(-n 4)
PYTEST=("$PY" -m pytest -q -rfEs -p no:cacheprovider --durations=15)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout=240)

# -- 3. the device tests ----------------------------------------------------------------------
DEVICE_TESTS=(tests/test_limbs.py tests/test_device_prg.py tests/test_cuda_path.py
              tests/test_device_path.py)
export MPC_ML_TEST_DEVICE=$DEVICE
step "device tests" "$(limit 100 360)" "$OUT/device_tests.log" \
    "${PYTEST[@]}" "${XDIST4[@]}" "${DEVICE_TESTS[@]}"

# -- 4. the bench rows, CPU beside GPU ---------------------------------------------------------
Q=()
[ "$QUICK" = 1 ] && Q=(--quick)
COMMON=(--profiles lan --parties 2 --no-crypten "${Q[@]}")
# group name|its options. One `mpc-ml bench` a group, so that a failing row costs only its
# group; the issue's aims first (matmul1024, resnet18_b64). The dealer only where its
# CPU-made correlations are small (it computes every conv triple's product on its CPU).
GROUPS_GPU=("matmul|--ops matmul1024 --models --providers tfp dealer --repeats 5"
            "resnet18_b64|--ops --models resnet18_b64 --providers tfp --repeats 1"
            "lenet5|--ops --models lenet5_b1 lenet5_b32 --providers tfp dealer --repeats 3"
            "resnet18|--ops --models resnet18 --providers tfp --repeats 3"
            "bert|--ops --models bert_base --providers tfp --repeats 1")
# resnet18_b64 is no CPU row here: minutes a run (README.md, "On a GPU")
GROUPS_CPU=("matmul|--ops matmul1024 --models --providers tfp dealer --repeats 5"
            "lenet5|--ops --models lenet5_b1 lenet5_b32 --providers tfp dealer --repeats 3"
            "resnet18|--ops --models resnet18 --providers tfp --repeats 1"
            "bert|--ops --models bert_base --providers tfp --repeats 1")
[ "$QUICK" = 1 ] && GROUPS_CPU+=("resnet18_b64|--ops --models resnet18_b64 --providers tfp --repeats 1")

summarize() {
    "$PY" benchmarks/suite.py --compare "$OUT/summary" "$WORK/bench/cpu" "$WORK/bench/gpu" \
        > /dev/null 2>"$WORK/compare.err" || cat "$WORK/compare.err"
    tar -czf "$OUT/bench.tar.gz" -C "$WORK" bench 2>/dev/null
}

# run_groups SIDE DEVICE DEADLINE GROUP...: each group one `mpc-ml bench`, until DEADLINE
run_groups() {
    local side=$1 device=$2 deadline=$3 g name opts secs rc
    shift 3
    for g in "$@"; do
        name=${g%%|*} opts=${g#*|}
        secs=$(( deadline - $(date +%s) ))
        if (( secs < 10 )); then echo "== $side $name: no time left"; continue; fi
        echo "== [$(elapsed) s] bench $side $name on $device (limit ${secs} s)"
        # shellcheck disable=SC2086  # opts is a list of words
        # SIGTERM to the group: the suite and the parties it started (a background job
        # ignores SIGINT)
        timeout -k 15 "$secs" "$PY" -m mpc_ml bench --device "$device" "${COMMON[@]}" \
            $opts --out "$WORK/bench/$side/$name" > "$WORK/bench/$side/$name.log" 2>&1
        rc=$?
        echo "== [$(elapsed) s] bench $side $name: exit $rc$( ((rc == 124)) && echo ' (time limit)')"
        if [ "$side" = gpu ]; then
            STATUS+=("bench gpu $name: exit $rc")
            ((rc == 0)) || FAILED=1
            summarize
        fi
    done
}

BENCH_END=$(( $(date +%s) + $(limit 240 120) ))
run_groups cpu cpu "$BENCH_END" "${GROUPS_CPU[@]}" &
CPU_SIDE=$!
run_groups gpu "$DEVICE" "$BENCH_END" "${GROUPS_GPU[@]}"
wait "$CPU_SIDE"
summarize
STATUS+=("bench: $(ls "$WORK"/bench/*/*/suite.json 2>/dev/null | wc -l) of $(( ${#GROUPS_GPU[@]} + ${#GROUPS_CPU[@]} )) groups wrote suite.json")
cat "$OUT/summary.md"

# -- 5. the whole suite -------------------------------------------------------------------------
# shellcheck disable=SC2086  # TESTS is a list of paths
step "test suite ($TESTS)" "$(limit 600 10)" "$OUT/suite_tests.log" \
    "${PYTEST[@]}" "${XDIST[@]}" $TESTS

echo "== [$(elapsed) s] done"
printf '  %s\n' "${STATUS[@]}"
return $FAILED
}

main 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
