#!/usr/bin/env bash
# Patch 10 (prompt chunks of CUDA layers through f16 flash attention over rows decoded by tq_dequantize_rows) on a
# GPU, in steps that fit 10-minute commands on the lent machine (later ones reuse the first's build while it is held):
#   a  run.sh build (llama-bench, llama-perplexity) and the library's GPU test of tq_dequantize_rows (a skip fails)
#   b  run.sh model8b, then llama-bench -ngl 99 -fa 1 on it: pp512 at depth 32768 for f16, TurboQuant 4/4 and
#      TurboQuant 4/4 with LLAMA_TQ_F16_PREFILL=0 (attending the compressed rows), one after the other; then
#      pp512 and tg128 at depths 0 and 32768 for f16, q8_0, q4_0 and TurboQuant 4/4
#   c  run.sh ppl (SmolLM2 at $MODEL, GPU and CPU, the new path and LLAMA_TQ_F16_PREFILL=0)
# Environment: as run.sh (LLAMA_TARBALL, TQ_DIR, W, OUT, MODEL, CORPUS) plus TQ_TESTS (the gpu_kernels test binary).
# Results: bench/llama/cuda.md.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
fail=0
for step in "$@"; do
  case $step in
    a)
      TARGETS="llama-bench llama-perplexity" bash "$HERE/run.sh" build || exit 1
      echo "== GPU test: cuda_dequantized_rows_match_cpu"
      TQ_REQUIRE_GPU=1 timeout 240 "${TQ_TESTS:?}" --exact cuda_dequantized_rows_match_cpu --nocapture > "$OUT/gpu_test_dequant.log" 2>&1
      rc=$?; grep -E "test result|cuda_dequantized|panicked|SKIPPED" "$OUT/gpu_test_dequant.log"; [ $rc -eq 0 ] || fail=1 ;;
    b)
      bash "$HERE/run.sh" model8b || exit 1
      B=${W:-$(cd "$HERE/../../.." && pwd)/build/cuda-llama}/build/bin
      M=$(dirname "$B")/../llama3-8b-shape-q4_0.gguf
      for t in "f16 1" "tq4 1" "tq4 0"; do
        set -- $t
        LLAMA_TQ_F16_PREFILL=$2 timeout 150 "$B/llama-bench" -m "$M" -ngl 99 -fa 1 -ctk $1 -ctv $1 -p 512 -n 0 -d 32768 -r 2 -o md 2>&1 \
          | grep -E "pp512|rror" | sed "s/^/$1 F16_PREFILL=$2 /"
      done | tee "$OUT/bench_pp_f16prefill.txt"
      DEPTHS=0,32768 TYPES="f16 tq4 q8_0 q4_0" REPS=2 BENCH_TIMEOUT=150 bash "$HERE/run.sh" bench || fail=1 ;;
    c)
      bash "$HERE/run.sh" ppl || fail=1 ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
[ $fail -eq 0 ] && echo "patch10.sh: all steps passed" || echo "patch10.sh: FAILURES above"
exit $fail
