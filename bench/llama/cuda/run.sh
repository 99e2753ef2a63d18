#!/usr/bin/env bash
# The llama.cpp integration on a CUDA GPU: build llama.cpp (the pinned tree with patches/llama.cpp applied) with
# -DGGML_CUDA=ON against a CUDA build of libturboquant, then check and measure it. Results and logs go to $OUT
# (default ./out); bench/llama/cuda.md holds the numbers.
#
# Usage: run.sh STEP...   with STEP one of
#   build     configure + build $TARGETS (default llama-bench llama-perplexity llama-completion llama-server llama-cli;
#             CUDA arch $CUDA_ARCH)
#   gputests  the library's GPU tests (TQ_TESTS: the gpu_kernels test binary; a skipped test fails)
#   model8b   a random-weight Llama-3-8B-shaped GGUF (bench/llama/gen_model.py) at $MODEL8B
#   model2l   the same shape with 2 layers at $MODEL2L (a small model for the memory checker)
#   smoke     llama-completion on the 8B shape: TurboQuant 4/4 with every layer on the GPU, flash attention on and
#             off, partial offload (-ngl 16: 15 of 32 layers' caches on the GPU), the KV cache on the CPU (-nkvo); each must run and report
#             its cache
#   ppl       llama-perplexity on $MODEL (a real model) and $CORPUS: f16 base logits, then q4_0 and TurboQuant 4/4
#             KLD vs f16, with 4 parallel sequences and with 1, on the GPU (-ngl 99) and on the CPU (-ngl 0); TurboQuant
#             4/4 also with LLAMA_TQ_F16_PREFILL=0 (prompt chunks attending the compressed rows, not patch 10's path)
#   server    tools/llama/server_test.py with -ngl 99 -np 2 (a chat request answered, twice)
#   sanitize  compute-sanitizer memcheck over a short llama-cli run (one turn, -st) on the GPU with TurboQuant 4/4,
#             on $SAN_MODEL (default $MODEL2L)
#   bench     llama-bench -ngl 99 -fa 1 on the 8B shape: pp512 and tg128 at depths $DEPTHS for cache types $TYPES
#             (a type for both sides, or K/V with optional layer bits: "tq5/tq4+last57%=5/3" = --tq-preset q4_0)
#             ($BENCH_TESTS: llama-bench's -p/-n options, default "-p 512 -n 128"; BENCH_TIMEOUT s per type, 560)
#   profile   ncu kernel times of decode (tg at depth 0, CUDA graphs off so that ncu sees each launch) for f16 and
#             TurboQuant 4/4: a window of PROFILE_COUNT launches after PROFILE_SKIP, summed per kernel (ncu_sum.py)
#
# Environment: LLAMA_TARBALL (an .tar.xz of the patched tree, top folder llama.cpp) or LLAMA_SRC (a patched tree);
# TQ_DIR (include/turboquant.h, lib/libturboquant.so built with --features cuda); W (work folder, default
# build/cuda-llama); MODEL, CORPUS (ppl, server, sanitize); MODEL8B; DEPTHS (0,8192,32768); TYPES; REPS (3).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
OUT=${OUT:-$PWD/out}
W=${W:-$ROOT/build/cuda-llama}
CUDA_ARCH=${CUDA_ARCH:-90}
DEPTHS=${DEPTHS:-0,8192,32768}
TYPES=${TYPES:-f16 q8_0 q4_0 tq4}
REPS=${REPS:-3}
MODEL8B=${MODEL8B:-$W/llama3-8b-shape-q4_0.gguf}
MODEL2L=${MODEL2L:-$W/llama3-8b-shape-2l-q4_0.gguf}
TARGETS=${TARGETS:-llama-bench llama-perplexity llama-completion llama-server llama-cli}
BENCH_TESTS=${BENCH_TESTS:--p 512 -n 128}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-560}
BIN=$W/build/bin
mkdir -p "$OUT" "$W"
fail=0
say() { printf '\n== %s\n' "$*"; }
check() { if "$@"; then :; else echo "FAIL: $*"; fail=1; fi; }

for step in "$@"; do
  case $step in
    build)
      say "build (CUDA arch $CUDA_ARCH)"
      if [ -z "${LLAMA_SRC:-}" ]; then
        if [ ! -f "$W/src/CMakeLists.txt" ]; then
          rm -rf "$W/src" "$W/unpack" && mkdir -p "$W/unpack" && tar -xJf "${LLAMA_TARBALL:?}" -C "$W/unpack" \
            && mv "$W/unpack/llama.cpp" "$W/src" || { echo "FAIL: unpacking $LLAMA_TARBALL"; exit 1; }
        fi
        LLAMA_SRC=$W/src
      fi
      # the options of mk/llama.mk's CUDA build tree (a GPU machine has its own cmake and no tools venv)
      cmake -S "$LLAMA_SRC" -B "$W/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DGGML_CUDA_GRAPHS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_TURBOQUANT=ON -DTURBOQUANT_DIR="${TQ_DIR:?}" \
        > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
      grep -iE "turboquant|CUDA Toolkit|cuda.*graph" "$OUT/cmake.log"
      t0=$(date +%s)
      cmake --build "$W/build" -j"$(nproc)" --target $TARGETS \
        > "$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -30; tail -5 "$OUT/build.log"; exit 1; }
      echo "built in $(( $(date +%s) - t0 )) s" ;;
    gputests)
      say "library GPU tests"
      TQ_REQUIRE_GPU=1 timeout 300 "${TQ_TESTS:?}" --test-threads=2 > "$OUT/gpu_tests.log" 2>&1
      rc=$?; grep -E "test result|panicked|FAILED|failed" "$OUT/gpu_tests.log"; check test $rc -eq 0 ;;
    model8b)
      say "random Llama-3-8B-shaped model"
      [ -f "$MODEL8B" ] || (cd "$W/src" && python3 "$ROOT/bench/llama/gen_model.py" "$MODEL8B") ;;
    model2l)
      say "random Llama-3-8B-shaped model, 2 layers"
      [ -f "$MODEL2L" ] || (cd "$W/src" && python3 "$ROOT/bench/llama/gen_model.py" "$MODEL2L" --layers 2) ;;
    smoke)
      say "llama-completion on the 8B shape"
      run_c() { # name, extra args...
        local name=$1; shift
        timeout 120 "$BIN/llama-completion" -m "$MODEL8B" -p "a b c d e f g" -n 32 -no-cnv --temp 0 -c 4096 -lv 4 "$@" \
          > "$OUT/smoke_$name.log" 2>&1
        local rc=$?
        printf '%-10s rc %d  %s | %s\n' "$name" $rc "$(grep -m1 -oE 'TurboQuant K [^)]*' "$OUT/smoke_$name.log")" \
          "$(grep -E ' eval time' "$OUT/smoke_$name.log" | grep -v prompt | tr -s ' ')"
        grep -E "llama_kv_cache: .*size" "$OUT/smoke_$name.log" | head -2
        check test $rc -eq 0
      }
      run_c gpu_fa   -ngl 99 -fa on  -ctk tq4 -ctv tq4
      check grep -q "32 layers on CUDA" "$OUT/smoke_gpu_fa.log"
      run_c gpu_nofa -ngl 99 -fa off -ctk tq4 -ctv tq4
      run_c partial  -ngl 16 -fa on  -ctk tq4 -ctv tq4
      # -ngl N offloads the output layer and the last N-1 repeating layers: 15 of the 32 caches are on CUDA,
      # the other 17 on the CPU, one codec context on each
      check grep -q "2 codec contexts (one per layer shape and device), 15 layers on CUDA" "$OUT/smoke_partial.log"
      run_c nkvo     -ngl 99 -fa on  -ctk tq4 -ctv tq4 -nkvo
      check bash -c "! grep -q 'layers on CUDA' '$OUT/smoke_nkvo.log'"
      run_c f16      -ngl 99 -fa on ;;
    ppl)
      say "llama-perplexity: $MODEL on $CORPUS"
      for where in gpu cpu; do
        ngl=99; [ $where = cpu ] && ngl=0
        P=("$BIN/llama-perplexity" -m "${MODEL:?}" -f "${CORPUS:?}" -c 512 --chunks 8 -fa on -ngl $ngl)
        "${P[@]}" -b 2048 --kl-divergence-base "$W/base_$where.kld" > "$OUT/ppl_${where}_f16.log" 2>&1 \
          || { tail -5 "$OUT/ppl_${where}_f16.log"; fail=1; continue; }
        echo "$where f16: $(grep -E 'Final estimate' "$OUT/ppl_${where}_f16.log")"
        # the third field: LLAMA_TQ_F16_PREFILL (patch 10; default 1: prompt chunks of CUDA layers through f16 flash
        # attention over the decoded rows; 0: attending the compressed rows)
        for cfg in "q4_0 2048 1" "tq4 2048 1" "tq4 512 1" "tq4 2048 0"; do
          set -- $cfg
          log=$OUT/ppl_${where}_$1_b$2_f16prefill$3.log
          LLAMA_TQ_F16_PREFILL=$3 "${P[@]}" -b $2 -ctk $1 -ctv $1 --kl-divergence-base "$W/base_$where.kld" --kl-divergence \
            > "$log" 2>&1 || { tail -5 "$log"; fail=1; continue; }
          printf '%s %-4s -b %-4s F16_PREFILL=%s n_seq=%s  %s | mean KLD %s | %s\n' $where $1 $2 $3 \
            "$(grep -m1 -oE 'n_seq=[0-9]+' "$log" | cut -d= -f2)" "$(grep -E 'Mean PPL\(Q\) +:' "$log" | tr -s ' ')" \
            "$(grep -E 'Mean    KLD' "$log" | awk '{print $3, $4, $5}')" "$(grep -m1 -oE 'TurboQuant K [^)]*' "$log")"
        done
      done ;;
    server)
      say "llama-server -ngl 99 -np 2 -ctk tq4 -ctv tq4"
      LLAMA_BIN=$BIN MODEL=${MODEL:?} THREADS=8 NP=2 SERVER_ARGS="-ngl 99" timeout 240 python3 "$ROOT/tools/llama/server_test.py" \
        2>&1 | tee "$OUT/server.log" | grep -E "answer|PASS|FAIL|server log"
      check test "${PIPESTATUS[0]}" -eq 0
      cp "$W/server-test.log" "$OUT/server_llama.log" 2>/dev/null ;;
    sanitize)
      say "compute-sanitizer memcheck: llama-cli -st -ngl 99 -fa on -ctk tq4 -ctv tq4"
      SAN_MODEL=${SAN_MODEL:-$MODEL2L}
      # llama-cli is chat-only here (llama-server's code in a thread): one turn, a pass-through template.
      # --report-api-errors no: ggml-cuda's own graph-update fallback (cudaGraphExecUpdate answers error 910 when a
      # step's graph differs from the instantiated one; ggml-cuda clears it and re-instantiates) is reported as an
      # API error with the f16 cache as well; memory errors are what this step checks.
      timeout "${SAN_TIMEOUT:-500}" compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 3 \
        "$BIN/llama-cli" -m "$SAN_MODEL" \
        -p "a b c d e f g" -n 16 --temp 0 -st -co off --jinja \
        --chat-template "{% for message in messages %}{{ message['content'] }}{% endfor %}" -c 1024 -ngl 99 -fa on \
        -ctk tq4 -ctv tq4 -lv 4 -o "$OUT/sanitizer_answer.txt" < /dev/null > "$OUT/sanitizer_memcheck.log" 2>&1
      rc=$?; echo "compute-sanitizer memcheck: exit $rc"
      grep -E "ERROR SUMMARY|TurboQuant K |layers on CUDA" "$OUT/sanitizer_memcheck.log" | head -5
      check test $rc -eq 0
      check grep -q "ERROR SUMMARY: 0 errors" "$OUT/sanitizer_memcheck.log"
      check grep -q "layers on CUDA" "$OUT/sanitizer_memcheck.log" ;;
    bench)
      say "llama-bench -ngl 99 -fa 1: $BENCH_TESTS at depths $DEPTHS"
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
      for t in $TYPES; do
        # a type, the same on both sides (f16, q4_0, tq4), or K/V[+layer bits]: tq5/tq4+last57%=5/3 is
        # --tq-preset q4_0 (llama-bench takes no --tq-preset; the layer bits go by LLAMA_TQ_LAYER_BITS)
        kv=${t%%+*}; lb=; [ "$kv" != "$t" ] && lb=${t#*+}
        tk=${kv%%/*}; tv=${kv#*/}
        name=$(printf '%s' "$t" | tr '/+%=' '_p__')
        # shellcheck disable=SC2086 # BENCH_TESTS is a list of options
        env ${lb:+LLAMA_TQ_LAYER_BITS=$lb} timeout "$BENCH_TIMEOUT" "$BIN/llama-bench" -m "$MODEL8B" -ngl 99 -fa 1 -ctk $tk -ctv $tv \
          $BENCH_TESTS -d "$DEPTHS" -r "$REPS" -o md > "$OUT/bench_$name.md" 2> "$OUT/bench_$name.err"
        rc=$?; grep -E "^\|.*(pp|tg)" "$OUT/bench_$name.md" | sed "s|^|$t |"; check test $rc -eq 0
        grep -m1 -E "llama_kv_cache: .*size|TurboQuant K " "$OUT/bench_$name.err"
      done ;;
    profile)
      say "ncu: decode kernels at depth 0 (CUDA graphs off), f16 and tq4"
      for t in f16 tq4; do
        GGML_CUDA_DISABLE_GRAPHS=1 timeout 280 ncu --clock-control none --cache-control none --csv \
          --metrics gpu__time_duration.sum --launch-skip "${PROFILE_SKIP:-3000}" --launch-count "${PROFILE_COUNT:-1500}" \
          "$BIN/llama-bench" -m "$MODEL8B" -ngl 99 -fa 1 -ctk $t -ctv $t -p 0 -n 64 -r 1 \
          > "$OUT/ncu_$t.csv" 2> "$OUT/ncu_$t.err"
        rc=$?; check test $rc -eq 0
        per=flash_attn; [ $t = tq4 ] && per=tq_combine  # one launch per layer and token
        python3 "$HERE/ncu_sum.py" "$OUT/ncu_$t.csv" --per $per | tee "$OUT/ncu_$t.txt"
      done ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
[ $fail -eq 0 ] && echo "run.sh: all steps passed" || echo "run.sh: FAILURES above"
exit $fail
