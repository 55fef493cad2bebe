#!/usr/bin/env bash
# Issue 14 on the GPU machine, in one device call (< 540 s): the CUDA tests (Triton upscalers and
# their fast launch), the launch benchmark, the 61-layer decode step, host overhead and the
# standard runner's call forms.
#
#     bash benchmarks/gpu_issue14.sh          # from the repository root; logs go to "$OUT"
#
# Each step runs under its own `timeout`, so one that hangs cannot take the others' time; a step
# that times out keeps what it printed. Every step's log is "$OUT/<step>.log" and its markdown
# tables (where it writes any) are in "$OUT"; "$OUT/summary.txt" has one line per step with its
# exit status (124 = cut by its timeout) and the lines of its log that say what failed.
set -u
OUT="${OUT:-$PWD/gpu_issue14_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
summary="$OUT/summary.txt"
: >"$summary"

step() {
    local name="$1" limit="$2"
    shift 2
    local started=$SECONDS
    echo "=== $name (limit ${limit}s): $*" | tee -a "$summary"
    timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "    exit $rc after $((SECONDS - started)) s" | tee -a "$summary"
    # What failed, in the words of the step itself (pytest's summary lines, FAILED checks).
    grep -E "^(FAILED|ERROR)|FAILED checks|^- |Error:|[0-9]+ (passed|failed|skipped)" "$OUT/$name.log" \
        | head -40 | sed 's/^/    /' | tee -a "$summary"
    tail -3 "$OUT/$name.log" | sed 's/^/    | /'
}

{
    date -u
    git log -1 --format='commit %H %s' 2>/dev/null
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    python3 -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch",
torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$OUT/environment.txt" | tee -a "$summary"

# 1. Bit-identity of the Triton upscalers (every code and scale, every upscaling runner), the fast
#    launch (bound, no JITFunction.run on a seen specialisation, re-specialisation on shape /
#    stride / alignment / dtype changes, refusal of a mismatched kernel, current stream, CUDA
#    graph, profiler hooks) and the CUDA-graph tests. -rfE lists each failure by name.
step pytest_gpu 135 python3 -m pytest tests/gpu -o addopts="" -q -rfE

# 2. Host time per upscale call: torch code, Triton's own launch (old), the fast launch (new);
#    checks bit-identity of the three first and prints FAILED checks if any.
step triton_launch 50 python3 -m benchmarks.triton_launch --device cuda --out-dir "$OUT"

# 3. The 61-layer decode step (the 3 fp4-wire MORI rows are last; they never ran on the H200).
step decode_step 150 python3 -m benchmarks.decode_step --device cuda --out-dir "$OUT"

# 4. Host overhead per call, every hot path (standard gen/hand; upscaling rows with the new launch).
step host_overhead 125 python3 -m benchmarks.host_overhead --device cuda --budget-s 0.2 \
    --out-dir "$OUT"

# 5. Where standard's gen/hand gap goes: the class check, the instance call (slot_tp_call), both.
step call_forms 40 python3 -m benchmarks.call_forms --device cuda --budget-s 0.5 --out-dir "$OUT"

echo "=== done in $SECONDS s; logs and tables in $OUT" | tee -a "$summary"
