#!/usr/bin/env bash
# Perplexity and KL divergence against the f16 KV cache (llama-perplexity --kl-divergence-base, then
# --kl-divergence with each cache type), same chunks, same build: f16 (flash attention off: noise floor),
# llama.cpp's q8_0 / q5_0 / q4_0 (with its automatic Hadamard rotation) and TurboQuant K/V 4/4, 3/3, 4/3, 4/2,
# 3/2, each without centering and with the default key centering (LLAMA_TQ_CENTERING=0 / 1). 4 sequences in parallel streams (llama-perplexity's default with
# -b 2048), plus TurboQuant 4/4 (defaults) with 1 sequence (-b 512) to check that both give the same perplexity.
# Writes bench/llama/quality.md and bench/llama/kld_vs_bits.{svg,png}.
# Environment: LLAMA_BIN, MODEL, CORPUS, THREADS, PYTHON (with matplotlib); optional CHUNKS, OUTDIR, WORK.
set -euo pipefail

: "${LLAMA_BIN:?}" "${MODEL:?}" "${CORPUS:?}" "${PYTHON:?}"
THREADS=${THREADS:-2}
CHUNKS=${CHUNKS:-32}
OUTDIR=${OUTDIR:-bench/llama}
WORK=${WORK:-build/llama/quality}
mkdir -p "$WORK" "$OUTDIR"
test -f "$CORPUS" || { echo "CORPUS=$CORPUS: no such file"; exit 2; }

PPL=("$LLAMA_BIN/llama-perplexity" -m "$MODEL" -f "$CORPUS" -c 512 --chunks "$CHUNKS" -t "$THREADS" -fa on)
BASE="$WORK/base-f16.kld"

# name | environment | extra arguments
RUNS=(
  "f16-fa-off||-fa off"
  "q8_0||-ctk q8_0 -ctv q8_0"
  "q5_0||-ctk q5_0 -ctv q5_0"
  "q4_0||-ctk q4_0 -ctv q4_0"
)
for kv in 4/4 3/3 4/3 4/2 3/2; do
  k=${kv%/*}; v=${kv#*/}
  RUNS+=("tq$k$v|LLAMA_TQ_CENTERING=0|-ctk tq$k -ctv tq$v")
  RUNS+=("tq$k$v-c|LLAMA_TQ_CENTERING=1|-ctk tq$k -ctv tq$v")
done
RUNS+=("tq44-1seq|LLAMA_TQ_CENTERING=1|-ctk tq4 -ctv tq4 -b 512")

t0=$(date +%s)
if [ -z "${TABLE_ONLY:-}" ]; then  # TABLE_ONLY=1: only rebuild the table from the logs of a previous run
  echo "== f16 base: $CHUNKS chunks of 512 tokens of $CORPUS"
  "${PPL[@]}" --kl-divergence-base "$BASE" > "$WORK/f16.log" 2>&1 || { tail -20 "$WORK/f16.log"; exit 1; }
  grep -E "Final estimate" "$WORK/f16.log"

  for r in "${RUNS[@]}"; do
    IFS='|' read -r name envs args <<< "$r"
    printf '== %-12s %s %s ... ' "$name" "$envs" "$args"
    # shellcheck disable=SC2086
    if ! env $envs "${PPL[@]}" $args --kl-divergence-base "$BASE" --kl-divergence > "$WORK/$name.log" 2>&1; then
      echo "failed"; tail -20 "$WORK/$name.log"; exit 1
    fi
    grep -E "Mean    KLD" "$WORK/$name.log" | tr -s ' '
  done
  echo "== $(( $(date +%s) - t0 )) s"
fi

# the cache's own account of its bits per element (llama-perplexity logs the KV cache lines only at -lv 4):
# a 1-chunk run of each TurboQuant configuration
for r in "${RUNS[@]}"; do
  IFS='|' read -r name envs args <<< "$r"
  case $name in tq*) ;; *) continue ;; esac
  # shellcheck disable=SC2086
  env $envs "$LLAMA_BIN/llama-perplexity" -m "$MODEL" -f "$CORPUS" -c 512 --chunks 1 -t "$THREADS" -fa on -lv 4 $args \
      > "$WORK/$name.cache.log" 2>&1 || { tail -20 "$WORK/$name.cache.log"; exit 1; }
done

CMD="make llama-quality CORPUS=$(basename "$CORPUS") LLAMA_CHUNKS=$CHUNKS LLAMA_THREADS=$THREADS"
"$PYTHON" tools/llama/quality_table.py --work "$WORK" --outdir "$OUTDIR" --chunks "$CHUNKS" \
    --corpus "$(basename "$CORPUS")" --command "$CMD"
rm -f "$BASE"
