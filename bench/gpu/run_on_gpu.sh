#!/usr/bin/env bash
# Run on the GPU machine from a folder holding: libturboquant.so, gpu_kernels (test binary),
# bench_decode.py and this script. bench_decode.py imports the Python bindings from $TQ_BINDINGS if set,
# else from the repository it sits in (../../bindings/python: bench/gpu/ of a checkout), else from
# ./bindings/python of the current directory. Writes logs and results under $OUT (or ./out); the current
# numbers: RESULTS.md.
# Usage: run_on_gpu.sh STEP...  with STEP one of
#   tests      GPU tests (fast decode kernels, then TQ_CUDA_DECODE=staged)
#   sanitize   compute-sanitizer memcheck and racecheck over the quick GPU tests
#   bench      the full decode/prefill table (BENCH_BUDGET_S caps its seconds)
#   quickbench, compare (fast vs general kernels with per-kernel times), sweep (batch 1 over context),
#   targets (the target cases with per-kernel times, for each library in TQ_LIBS)
#   prefill    prefill against FP16 SDPA for each library in TQ_LIBS
#   ncu, ncufast, ncustall, ncusrc   hardware counters / stall reasons / stall locations of decode
export TQ_REQUIRE_GPU=1  # a skipped GPU test fails here (tests/gpu/mod.rs)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$HERE/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
for step in "$@"; do
  case $step in
    tests)
      timeout 240 "$HERE/gpu_kernels" --test-threads=2 --nocapture 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "test result|^test |rel err|SKIPPED|panicked|identical|replayed|cases|ok$"
      # Again with the general decode kernels (the ones contexts use where tq_decode_fast does not apply).
      echo "--- TQ_CUDA_DECODE=staged"
      TQ_CUDA_DECODE=staged timeout 240 "$HERE/gpu_kernels" --test-threads=2 --nocapture 2>&1 | tee "$OUT/gpu_tests_staged.log" | grep -E "test result|panicked|cases" ;;
    sanitize)
      for tool in memcheck racecheck; do
        TQ_GPU_QUICK=1 timeout 100 compute-sanitizer --tool $tool --error-exitcode 3 "$HERE/gpu_kernels" --test-threads=1 \
          > "$OUT/sanitizer_$tool.log" 2>&1; echo "compute-sanitizer $tool: exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" "$OUT/sanitizer_$tool.log"
      done ;;
    bench)
      PYTHONUNBUFFERED=1 timeout 420 python3 "$HERE/bench_decode.py" "$HERE/libturboquant.so" --budget-s ${BENCH_BUDGET_S:-420} --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" ;;
    ncufast)
      # Hardware counters of the fast decode kernel at batch 16 and batch 1 (32K, 32q/8kv, d=128, 4 bits).
      for b in 16 1; do
        timeout 200 ncu --clock-control none --kernel-name regex:tq_decode --launch-skip 1 --launch-count 1 \
          --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis \
          --section MemoryWorkloadAnalysis --section LaunchStats --section SchedulerStats --section InstructionStats \
          python3 "$HERE/bench_decode.py" "$HERE/libturboquant.so" --profile-one --profile-batch $b > "$OUT/ncu_fast_b$b.txt" 2>&1
        echo "ncu batch $b: exit $?"; grep -E "Duration|Throughput|Pipe|Stall|Issue|Eligible|Active Warps|Warp Cycles|Registers|Shared Memory|Bank|Executed Ipc|Block Limit|Grid Size|Waves" "$OUT/ncu_fast_b$b.txt" | head -60
      done ;;
    sweep)
      # Batch 1 over context lengths (fixed cost = intercept), per-kernel times.
      PYTHONUNBUFFERED=1 timeout 200 python3 "$HERE/bench_decode.py" "$HERE/libturboquant.so" --decode-only --breakdown \
        --cases "32/8/128/1/8192/4;32/8/128/1/32768/4;32/8/128/1/131072/4;32/8/128/4/32768/4" --out "$OUT/bench_sweep.json" 2>&1 \
        | grep -vE "UserWarning|_warn_once" | tee "$OUT/bench_sweep.log" ;;
    ncustall)
      # Stall reasons of the fast decode kernel, batch 1 and 16.
      for b in 1 16; do
        timeout 200 ncu --clock-control none --kernel-name regex:tq_decode --launch-skip 1 --launch-count 1 \
          --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum,sm__cycles_elapsed.avg,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,gpu__time_duration.sum \
          python3 "$HERE/bench_decode.py" "$HERE/libturboquant.so" --profile-one --profile-batch $b > "$OUT/ncu_stall_b$b.txt" 2>&1
        echo "ncu stall batch $b: exit $?"; grep -E "stalled|inst_executed|cycles|wavefronts|conflicts|duration" "$OUT/ncu_stall_b$b.txt" | awk '$NF+0 > 0.05 || /inst|cycles|wave|confl|duration/' | head -40
      done ;;
    ncusrc)
      # Where the batch-1 fast decode kernel's warps stall (sampling, SASS offsets).
      timeout 200 ncu --clock-control none --kernel-name regex:tq_decode --launch-skip 1 --launch-count 1 \
        --section SourceCounters --section WarpStateStats --print-details all \
        python3 "$HERE/bench_decode.py" "$HERE/libturboquant.so" --profile-one --profile-batch 1 > "$OUT/ncu_src_b1.txt" 2>&1
      echo "ncu src: exit $?"; grep -iE "stall|sampl|0x[0-9a-f]+" "$OUT/ncu_src_b1.txt" | head -60 ;;
    ncu)
      # Hardware counters of the decode kernel (B=16, 32K, 32q/8kv, d=128, 4 bits): what bounds it.
      timeout 240 ncu --clock-control none --kernel-name regex:tq_decode --launch-skip 1 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis \
        --section MemoryWorkloadAnalysis --section LaunchStats --section SchedulerStats \
        python3 "$HERE/bench_decode.py" "$HERE/libturboquant.so" --profile-one > "$OUT/ncu_decode.txt" 2>&1
      echo "ncu: exit $?"; grep -E "Throughput|Duration|Occupancy|Registers|Stall|Issue|Eligible|Warp Cycles|Pipe|Bank|L1|L2|DRAM|Shared" "$OUT/ncu_decode.txt" | head -70 ;;
    compare)
      # The fast and the general decode kernels side by side, with per-kernel times.
      PYTHONUNBUFFERED=1 timeout 200 python3 "$HERE/bench_decode.py" "$HERE/libturboquant.so" --quick --decode-only \
        --kernels fast,staged --breakdown --out "$OUT/bench_compare.json" 2>&1 | tee "$OUT/bench_compare.log" ;;
    targets)
      # The two target cases (batch 1 and 16, 32K, 32q/8kv, d=128, 4 bits; or TQ_CASES) with per-kernel
      # times, for each library in TQ_LIBS (default libturboquant.so; e.g. a previous build beside the
      # current one), kernels TQ_KERNELS (default fast), TQ_REPEAT repetitions (default 1); TQ_BENCH_ARGS:
      # more bench_decode.py options (e.g. --timeline).
      # Files are numbered by pass, so a library listed twice keeps both passes.
      n=0
      for lib in ${TQ_LIBS:-libturboquant.so}; do
        n=$((n + 1))
        echo "--- $lib"
        PYTHONUNBUFFERED=1 timeout 240 python3 "$HERE/bench_decode.py" "$HERE/$lib" --breakdown --kernels ${TQ_KERNELS:-fast} --repeat ${TQ_REPEAT:-1} ${TQ_BENCH_ARGS:-} \
          --cases "${TQ_CASES:-32/8/128/1/32768/4;32/8/128/16/32768/4}" \
          --decode-only --out "$OUT/bench_targets_${n}_${lib%.so}.json" 2>&1 | grep -vE "UserWarning|_warn_once" | tee "$OUT/bench_targets_${n}_${lib%.so}.log"
      done ;;
    prefill)
      # Prefill against FP16 SDPA (512 and 2048 queries over 32K, 32q/8kv, d=128, 4 bits; or
      # TQ_PREFILL_CASES), for each library in TQ_LIBS, TQ_REPEAT passes over the list.
      for pass in $(seq ${TQ_REPEAT:-1}); do
        for lib in ${TQ_LIBS:-libturboquant.so}; do
          echo "--- $lib (pass $pass)"
          PYTHONUNBUFFERED=1 timeout 200 python3 "$HERE/bench_decode.py" "$HERE/$lib" --prefill-only \
            --prefill-cases "${TQ_PREFILL_CASES:-32/8/128/512/32768/4;32/8/128/2048/32768/4}" \
            --out "$OUT/bench_prefill_${pass}_${lib%.so}.json" 2>&1 | grep -E "^prefill|Error|error" | tee -a "$OUT/bench_prefill.log"
        done
      done ;;
    quickbench)
      PYTHONUNBUFFERED=1 timeout 150 python3 "$HERE/bench_decode.py" "$HERE/libturboquant.so" --quick --out "$OUT/bench_quick.json" 2>&1 | tee "$OUT/bench_quick.log" ;;
  esac
done
