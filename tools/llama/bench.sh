#!/usr/bin/env bash
# llama-bench decode speed (tg32) at depth 0 and 4096, flash attention on, THREADS threads:
# f16, q4_0 (llama.cpp, with its Hadamard rotation), TurboQuant K4/V4 and K4/V3, one after the other in one run.
# Environment: LLAMA_BIN, MODEL, THREADS; optional REPS, DEPTHS, OUT (markdown file to write).
set -euo pipefail
: "${LLAMA_BIN:?}" "${MODEL:?}"
THREADS=${THREADS:-2}
REPS=${REPS:-2}
DEPTHS=${DEPTHS:-0,4096}
OUT=${OUT:-}

tmp=$(mktemp)
echo "| KV cache (K / V) | test | tokens/s |" > "$tmp"
echo "|---|---|---:|" >> "$tmp"
for t in "f16 f16" "q4_0 q4_0" "tq4 tq4" "tq4 tq3"; do
  set -- $t
  echo "== -ctk $1 -ctv $2" >&2
  "$LLAMA_BIN/llama-bench" -m "$MODEL" -t "$THREADS" -fa 1 -p 0 -n 32 -d "$DEPTHS" -r "$REPS" \
      -ctk "$1" -ctv "$2" -o md 2>/dev/null | tee /dev/stderr | grep -E '^\| .*tg' \
    | awk -F'|' -v kv="$1 / $2" '{ gsub(/^ +| +$/, "", $(NF-2)); gsub(/^ +| +$/, "", $(NF-1));
                                    printf "| %s | %s | %s |\n", kv, $(NF-2), $(NF-1) }' >> "$tmp"
done
if [ -n "$OUT" ]; then
  {
    echo "# llama-bench: decode speed with a TurboQuant KV cache beside f16 and q4_0"
    echo
    echo "Command: \`make llama-bench-decode\` (llama-bench -fa 1 -t $THREADS -p 0 -n 32 -d $DEPTHS -r $REPS, per cache type, one run)."
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores, shared with other jobs; $(date +%F)."
    echo
    cat "$tmp"
  } > "$OUT"
fi
cat "$tmp"
rm -f "$tmp"
