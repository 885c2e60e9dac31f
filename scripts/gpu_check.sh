#!/usr/bin/env bash
# Build + GPU tests + compute-sanitizer + benchmark in one go, for one lease of the GPU machine.
# Logs go under $OUT (the device tool brings that folder back), else build/gpu-check.
# GPU_CHECK_STEPS picks steps (default: build tests sanitizer bench): also portable (the suite with
# the Hopper kernels off), memory, llm, decode, varlen, upstream (flash-attn's own tests), diag,
# extras (softcap/ALiBi/dropout against plain), fp8 (the fp8 forward against bf16 and SDPA)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-check}
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
STEPS=${GPU_CHECK_STEPS:-"build tests sanitizer bench"}
# Every step runs the Hopper kernels not yet verified on a GPU (off by default for users): this
# script is how they get verified (FLASH_ATTN_ROCM_UNVERIFIED=0 measures the default instead).
export FLASH_ATTN_ROCM_UNVERIFIED=${FLASH_ATTN_ROCM_UNVERIFIED:-1}
PYTEST_ARGS=${PYTEST_ARGS:-}
export PYTHONUNBUFFERED=1
# The GPU image sets CXX to a /opt/gcc wrapper that links libstdc++ statically: the extension
# then carries a second copy whose locale state clashes with torch's, and the first
# std::ostream << int (any TORCH_CHECK message with a number) segfaults. Build with the system
# compiler, which links the shared libstdc++ torch uses.
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
status=0

run() {  # run NAME CMD...: logs the command and its output, remembers a failure
  echo "=== $1: ${*:2}" | tee -a "$LOG"
  local t0=$SECONDS
  "${@:2}" 2>&1 | tee -a "$LOG" | tail -n "${TAIL_LINES:-25}"
  local rc=${PIPESTATUS[0]}
  echo "=== $1: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee -a "$LOG"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$LOG"

for step in $STEPS; do
  case $step in
    build) MAX_JOBS=${MAX_JOBS:-16} run build python3 -m pip install --no-build-isolation --no-deps -v -e . || exit 1 ;;
    tests) run tests python3 -m pytest -q -p no:cacheprovider tests $PYTEST_ARGS ;;
    portable) FLASH_ATTN_ROCM_HOPPER=0 run portable python3 -m pytest -q -p no:cacheprovider tests $PYTEST_ARGS ;;
    sanitizer)
      # Without the caching allocator each tensor is its own allocation, so memcheck also sees a
      # write past a tensor's end (inside the cache's blocks it would land in another tensor).
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 run memcheck compute-sanitizer --tool memcheck --error-exitcode 1 \
        python3 -m pytest -q -p no:cacheprovider -m sanitizer tests
      run racecheck compute-sanitizer --tool racecheck --error-exitcode 1 python3 -m pytest -q -p no:cacheprovider -m sanitizer tests ;;
    bench) TAIL_LINES=40 run bench python3 benchmarks/bench_attention.py ${BENCH_ARGS:-} ;;
    memory) TAIL_LINES=12 run memory python3 benchmarks/bench_memory.py ;;
    llm) TAIL_LINES=20 run llm python3 benchmarks/bench_llm.py ${LLM_ARGS:-} ;;
    decode) TAIL_LINES=40 run decode python3 benchmarks/bench_decode.py ${DECODE_ARGS:-} ;;
    varlen) TAIL_LINES=20 run varlen python3 benchmarks/bench_varlen_window.py ;;
    # flash-attn 2.8.3's own tests/test_flash_attn.py, copied by hand to .upstream/ (never
    # committed; carry it to the device): a deterministic sample, failures grouped.
    upstream) TAIL_LINES=30 run upstream python3 tools/run_flash_attn_tests.py .upstream/test_flash_attn.py \
                ${UPSTREAM_ARGS:---every 53 --budget-s 220} ;;
    diag) TAIL_LINES=20 run diag python3 tools/diag_fwd_repeat.py --backward ;;
    extras) TAIL_LINES=20 run extras python3 benchmarks/bench_extras.py ${EXTRAS_ARGS:-} ;;
    fp8) TAIL_LINES=20 run fp8 python3 benchmarks/bench_fp8.py ${FP8_ARGS:-} ;;
    *) echo "unknown step $step"; status=1 ;;
  esac
done
exit $status
