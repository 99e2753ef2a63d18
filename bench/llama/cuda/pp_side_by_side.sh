#!/usr/bin/env bash
# llama-bench pp512 at depth 32K (-ngl 99 -fa 1, the 8B-shaped Q4_0 model of run.sh) with f16 and with TurboQuant
# 4/4 through two builds of libturboquant swapped under the same llama.cpp build (LIB_NEW, LIB_OLD: --features cuda
# libturboquant.so files), two rounds; before that, llama-completion smoke runs with per-layer bits on the GPU.
# Environment: as run.sh (LLAMA_TARBALL or LLAMA_SRC, W, OUT), plus LIB_NEW, LIB_OLD and TQ_DIR (include/ and a
# lib/ folder this script fills with LIB_NEW or LIB_OLD). Results: bench/llama/cuda.md.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
OUT=${OUT:-$PWD/out}
W=${W:-$ROOT/build/cuda-llama}
: "${LIB_NEW:?}" "${LIB_OLD:?}" "${TQ_DIR:?}"
mkdir -p "$OUT" "$TQ_DIR/lib"
use() { cp "$1" "$TQ_DIR/lib/libturboquant.so" && ln -sf libturboquant.so "$TQ_DIR/lib/libturboquant.so.0"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
use "$LIB_NEW"
TARGETS="llama-bench llama-completion" bash "$HERE/run.sh" build model8b > "$OUT/build_step.log" 2>&1 \
  || { tail -20 "$OUT/build_step.log"; exit 1; }
B=$W/build/bin; M=$W/llama3-8b-shape-q4_0.gguf
for spec in "tq5 tq3 first2+last2=6/4" "tq4 tq4 first1=8/8,last1=2/2"; do
  set -- $spec
  timeout 90 "$B/llama-completion" -m "$M" -ngl 99 -fa on -ctk "$1" -ctv "$2" --tq-layer-bits "$3" -p "The sky is" -n 8 \
      -no-cnv --temp 0 -lv 4 > "$OUT/smoke_$1_$2.log" 2>&1; echo "smoke $spec: rc $?"
  grep -E "TurboQuant K" "$OUT/smoke_$1_$2.log" | head -1
done
for round in 1 2; do
  for t in f16 tq4-new tq4-old; do
    case $t in f16) c=f16;; tq4-new) c=tq4; use "$LIB_NEW";; tq4-old) c=tq4; use "$LIB_OLD";; esac
    timeout 100 "$B/llama-bench" -m "$M" -ngl 99 -fa 1 -ctk $c -ctv $c -p 512 -n 0 -d 32768 -r 2 -o md 2>&1 \
      | grep -E "pp512|rror" | sed "s/^/$t r$round /"
  done
done | tee "$OUT/bench_pp.txt"
