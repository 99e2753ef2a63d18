#!/usr/bin/env bash
# The full-precision window and sinks (--tq-window N --tq-sinks N, patch 7) against llama.cpp's cache types and
# TurboQuant without them: llama-perplexity at context CTX (one sequence per chunk: -b CTX), KL divergence against
# the f16 cache's logits of the same chunks. Bits per element count everything stored at CTX cells: llama.cpp's
# block types as codes + block scales; TurboQuant the cache line's codes + scales, the side store's f16 rows
# (the log's "with it ... bits per element at CTX cells") and the key-centering means (one f32 per channel and
# layer: 32/CTX bits for K, 16/CTX on the K/V mean).
# Writes $OUTDIR/window-c$CTX.md. Environment: LLAMA_BIN, MODEL, CORPUS, THREADS; optional CTX (4096), CHUNKS (8),
# OUTDIR (bench/llama), WORK, RUNS_FILE (lines "name|arguments", replacing the list below), KEEP=1 (skip runs whose
# log is complete).
set -euo pipefail
: "${LLAMA_BIN:?}" "${MODEL:?}" "${CORPUS:?}"
THREADS=${THREADS:-2}
CTX=${CTX:-4096}
CHUNKS=${CHUNKS:-8}
OUTDIR=${OUTDIR:-bench/llama}
WORK=${WORK:-build/llama/window-c$CTX}
mkdir -p "$WORK" "$OUTDIR"
test -f "$CORPUS" || { echo "CORPUS=$CORPUS: no such file"; exit 2; }

PPL=("$LLAMA_BIN/llama-perplexity" -m "$MODEL" -f "$CORPUS" -c "$CTX" -b "$CTX" --chunks "$CHUNKS" -t "$THREADS" -fa on)
BASE="$WORK/base-f16.kld"
W1=$((CTX / 32))
W2=$((CTX / 8))
if [ -n "${RUNS_FILE:-}" ]; then
  mapfile -t RUNS < "$RUNS_FILE"
else
  RUNS=(
    "q4_0|-ctk q4_0 -ctv q4_0"
    "tq4-4|-ctk tq4 -ctv tq4"
    "tq4-4-w$W1-s4|-ctk tq4 -ctv tq4 --tq-window $W1 --tq-sinks 4"
    "preset-q4_0|--tq-preset q4_0"
    "preset-q4_0-w$W1-s4|--tq-preset q4_0 --tq-window $W1 --tq-sinks 4"
    "tq4-3-w$W1-s4|-ctk tq4 -ctv tq3 --tq-window $W1 --tq-sinks 4"
    "tq4-4-s4|-ctk tq4 -ctv tq4 --tq-sinks 4"
    "tq4-4-w$W2-s4|-ctk tq4 -ctv tq4 --tq-window $W2 --tq-sinks 4"
    "q8_0|-ctk q8_0 -ctv q8_0"
  )
fi

complete() { [ -f "$1" ] && grep -q "Mean    KLD" "$1"; }
t0=$(date +%s)
if [ -z "${KEEP:-}" ] || [ ! -f "$BASE" ]; then
  echo "== f16 base: $CHUNKS chunks of $CTX tokens of $CORPUS"
  "${PPL[@]}" --kl-divergence-base "$BASE" > "$WORK/f16.log" 2>&1 || { tail -20 "$WORK/f16.log"; exit 1; }
fi
for r in "${RUNS[@]}"; do
  IFS='|' read -r name args <<< "$r"
  log="$WORK/$name.log"
  if [ -n "${KEEP:-}" ] && complete "$log"; then continue; fi
  s=$(date +%s)
  # shellcheck disable=SC2086
  "${PPL[@]}" $args -lv 4 --kl-divergence-base "$BASE" --kl-divergence > "$log" 2>&1 || { tail -20 "$log"; exit 1; }
  echo "$name: mean KLD $(grep -E 'Mean    KLD' "$log" | awk '{print $3}') ($(( $(date +%s) - s )) s)"
done

out="$OUTDIR/window-c$CTX.md"
{
  echo "# Full-precision window and sinks at -c $CTX"
  echo
  echo "Command: \`CTX=$CTX CHUNKS=$CHUNKS tools/llama/window.sh\` (LLAMA_BIN = a CPU build of the patched tree, MODEL ="
  echo "$(basename "$MODEL"), CORPUS = $(basename "$CORPUS"), $THREADS threads); \`llama-perplexity -c $CTX -b $CTX --chunks $CHUNKS -fa on\`"
  echo "(one sequence per chunk), KL divergence against the f16 cache's logits of the same chunks. Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores; $(date -u +%Y-%m-%d)."
  echo
  echo "f16 cache: $(grep -E 'Final estimate' "$WORK/f16.log" | sed 's/.*Final estimate: //')."
  echo
  echo "Bits per element count everything stored at $CTX cells: codes + scales, the side store's f16 rows (window + sinks"
  echo "positions of each sequence, K and V), and the key-centering means (32/$CTX bits per K element)."
  echo
  echo "| KV cache | bits/elem (K+V mean) | PPL | mean KLD vs f16 | same top-1 | KLD / q4_0's |"
  echo "|---|---|---|---|---|---|"
  q4=$(grep -E 'Mean    KLD' "$WORK/q4_0.log" 2>/dev/null | awk '{print $3}' || true)
  for r in "${RUNS[@]}"; do
    IFS='|' read -r name args <<< "$r"
    log="$WORK/$name.log"
    complete "$log" || continue
    kld=$(grep -E 'Mean    KLD' "$log" | awk '{print $3, $4, $5}')
    ppl=$(grep -E 'Mean PPL\(Q\) +:' "$log" | awk '{print $4, $5, $6}')
    top=$(grep -E '^Same top p:' "$log" | awk '{print $4 "%"}')
    case $name in
      q8_0*) bits=8.500 ;; q5_0*) bits=5.500 ;; q4_0*) bits=4.500 ;; q5_1*) bits=6.000 ;; q4_1*) bits=5.000 ;;
      *)
        side=$(grep -oE "with it [0-9.]+ bits per element" "$log" | head -1 | grep -oE "[0-9.]+" || true)
        kv=$(grep -oE "K [0-9.]+ \+ V [0-9.]+ bits per element" "$log" | head -1)
        if [ -n "$side" ]; then base=$side; else base=$(echo "$kv" | awk '{print ($2 + $5) / 2}'); fi
        cen=0; grep -q "centering K" "$log" && cen=1
        bits=$(awk -v b="$base" -v c="$cen" -v n="$CTX" 'BEGIN { printf "%.3f", b + c * 16 / n }') ;;
    esac
    ratio=$(awk -v a="${kld%% *}" -v b="$q4" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    echo "| $name (\`$args\`) | $bits | $ppl | $kld | $top | $ratio |"
  done
} > "$out"
echo "== wrote $out ($(( $(date +%s) - t0 )) s)"
