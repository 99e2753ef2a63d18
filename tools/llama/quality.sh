#!/usr/bin/env bash
# Perplexity and KL divergence against the f16 KV cache (llama-perplexity --kl-divergence-base, then
# --kl-divergence with each cache type), same chunks, same build:
#   - f16 with flash attention off (the noise floor);
#   - llama.cpp's own cache types (with its automatic Hadamard rotation): every K/V pair of q8_0, q5_1, q5_0,
#     q4_1, q4_0, and iq4_nl/iq4_nl;
#   - TurboQuant K/V bit pairs from 3/2 to 8/8 with the defaults (key centering), 4/4 without centering and with
#     K and V centering, and the per-layer mixes (--tq-layer-bits) named in MIXES below;
#   - TurboQuant with the full-precision window and sinks (--tq-window, --tq-sinks) named in WINDOWS below;
#   - TurboQuant with key outlier channels (--tq-key-outliers) named in OUTLIERS below, and the per-layer mixes
#     of the same bits they are measured against (in MIXES);
#   - TurboQuant 4/4 without centering with 1 sequence (-b 512) against 4 parallel sequences (same perplexity).
# Writes bench/llama/quality.md (table, frontier verdict) and bench/llama/kld_vs_bits.{svg,png}.
# Environment: LLAMA_BIN, MODEL, CORPUS, THREADS, PYTHON (with matplotlib); optional CHUNKS, OUTDIR, WORK,
# TABLE_ONLY=1 (only rebuild the table from the logs of a previous run), KEEP=1 (skip runs whose log is complete, and
# cache-line runs whose log has the line),
# NOTE (a paragraph for the table's header, e.g. when KEEP=1 mixed rows of several builds).
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
RUNS=("f16-fa-off||-fa off")
LLAMA_TYPES="q8_0 q5_1 q5_0 q4_1 q4_0"
for k in $LLAMA_TYPES; do
  for v in $LLAMA_TYPES; do
    RUNS+=("ll-$k-$v||-ctk $k -ctv $v")
  done
done
RUNS+=("ll-iq4_nl-iq4_nl||-ctk iq4_nl -ctv iq4_nl")
for kv in 3/2 3/3 4/2 4/3 4/4 5/3 5/4 6/4 6/5 8/8; do
  k=${kv%/*}; v=${kv#*/}
  RUNS+=("tq-$k-$v||-ctk tq$k -ctv tq$v")
done
RUNS+=("tq-4-4-nc||-ctk tq4 -ctv tq4 --no-tq-centering")
RUNS+=("tq-4-4-kv||-ctk tq4 -ctv tq4 --tq-centering-kv")
# per-layer mixes (name:K/V of the other layers:--tq-layer-bits): --tq-preset q4_0's (the last 17 of 30 layers at
# K5/V3), and the last 22 or 15 layers one K bit up, at the K bits of the key-outlier rows below (earlier tables,
# in the history of bench/llama/quality.md, measured more mixes and windows)
MIXES=(
  "54-l17-53:5/4:last17=5/3"
  "33-l22-43:3/3:last22=4/3"
  "32-l22-42:3/2:last22=4/2"
  "43-l22-53:4/3:last22=5/3"
  "44-l15-54:4/4:last15=5/4"
)
for m in "${MIXES[@]}"; do
  IFS=':' read -r name kv spec <<< "$m"
  RUNS+=("tq-mix-$name||-ctk tq${kv%/*} -ctv tq${kv#*/} --tq-layer-bits $spec")
done
# the full-precision window and sinks (K/V:window:sinks): each sequence's W most recent and S first positions also
# as f16 rows, their bits counted at the 512 cells of a sequence
WINDOWS=(4/4:64:4 4/3:8:4 4/3:19:4 4/3:22:1 5/4:19:4 3/2:3:4 3/2:19:4 6/5:19:4 8/8:3:4)
for w in "${WINDOWS[@]}"; do
  IFS=':' read -r kv win snk <<< "$w"
  k=${kv%/*}; v=${kv#*/}
  RUNS+=("tq-win-$k-$v-w$win-s$snk||-ctk tq$k -ctv tq$v --tq-window $win --tq-sinks $snk")
done
# key outlier channels (K/V:C:window:sinks): C channels per key head at K + 1 bits (the mixes of the same K bits:
# 3/3:32 and 33-l22-43, 3/2:32 and 32-l22-42, 4/3:32 and 43-l22-53, 4/4:16 and 44-l15-54)
OUTLIERS=(3/3:32:0:0 3/2:32:0:0 4/3:32:0:0 4/3:16:0:0 4/4:16:0:0)
for o in "${OUTLIERS[@]}"; do
  IFS=':' read -r kv nout win snk <<< "$o"
  k=${kv%/*}; v=${kv#*/}
  RUNS+=("tq-ko-$k-$v-o$nout-w$win-s$snk||-ctk tq$k -ctv tq$v --tq-key-outliers $nout --tq-window $win --tq-sinks $snk")
done
# 1 sequence at a time against tq-4-4-nc's 4 parallel ones: the same perplexity (without centering: with it the
# means come from the first ubatch, 512 tokens of one chunk here and 128 of each of 4 there)
RUNS+=("tq-4-4-nc-1seq||-ctk tq4 -ctv tq4 --no-tq-centering -b 512")

complete() { [ -f "$1" ] && grep -q "Mean    KLD" "$1"; }

t0=$(date +%s)
if [ -z "${TABLE_ONLY:-}" ]; then
  echo "== f16 base: $CHUNKS chunks of 512 tokens of $CORPUS"
  if [ -z "${KEEP:-}" ] || [ ! -f "$BASE" ]; then
    "${PPL[@]}" --kl-divergence-base "$BASE" > "$WORK/f16.log" 2>&1 || { tail -20 "$WORK/f16.log"; exit 1; }
  fi
  grep -E "Final estimate" "$WORK/f16.log"

  for r in "${RUNS[@]}"; do
    IFS='|' read -r name envs args <<< "$r"
    printf '== %-18s %s %s ... ' "$name" "$envs" "$args"
    if [ -n "${KEEP:-}" ] && complete "$WORK/$name.log"; then
      echo "kept: $(grep -E "Mean    KLD" "$WORK/$name.log" | tr -s ' ')"; continue
    fi
    # shellcheck disable=SC2086
    if ! env $envs "${PPL[@]}" $args --kl-divergence-base "$BASE" --kl-divergence > "$WORK/$name.log" 2>&1; then
      echo "failed"; tail -20 "$WORK/$name.log"; exit 1
    fi
    grep -E "Mean    KLD" "$WORK/$name.log" | tr -s ' '
  done
  echo "== $(( $(date +%s) - t0 )) s"

  # the cache's own account of its bits per element (llama-perplexity logs the KV cache lines only at -lv 4):
  # a 1-chunk run of each TurboQuant configuration
  for r in "${RUNS[@]}"; do
    IFS='|' read -r name envs args <<< "$r"
    case $name in tq*) ;; *) continue ;; esac
    if [ -n "${KEEP:-}" ] && grep -q "TurboQuant K" "$WORK/$name.cache.log" 2>/dev/null; then continue; fi
    # shellcheck disable=SC2086
    env $envs "$LLAMA_BIN/llama-perplexity" -m "$MODEL" -f "$CORPUS" -c 512 --chunks 1 -t "$THREADS" -fa on -lv 4 $args \
        > "$WORK/$name.cache.log" 2>&1 || { tail -20 "$WORK/$name.cache.log"; exit 1; }
  done
fi

CMD="make llama-quality CORPUS=$(basename "$CORPUS") LLAMA_CHUNKS=$CHUNKS LLAMA_THREADS=$THREADS"
"$PYTHON" tools/llama/quality_table.py --work "$WORK" --outdir "$OUTDIR" --chunks "$CHUNKS" \
    --corpus "$(basename "$CORPUS")" --command "$CMD" --runs "$(printf '%s\n' "${RUNS[@]}" | cut -d'|' -f1)" \
    --note "${NOTE:-}"
if [ -z "${KEEP:-}" ] && [ -z "${TABLE_ONLY:-}" ]; then rm -f "$BASE"; fi
