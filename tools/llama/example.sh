#!/usr/bin/env bash
# Greedy generation with llama-cli (single turn, non-interactive): TurboQuant KV cache and f16 KV cache,
# same prompt, same build. Prints both answers, prompt/generation speed and the KV cache memory.
# Environment: LLAMA_BIN (llama.cpp bin dir), MODEL (gguf), THREADS; optional PROMPT, N_PREDICT, CTX, TQ_K, TQ_V.
set -euo pipefail

: "${LLAMA_BIN:?}" "${MODEL:?}"
THREADS=${THREADS:-2}
N_PREDICT=${N_PREDICT:-96}
CTX=${CTX:-4096}
TQ_K=${TQ_K:-tq4}
TQ_V=${TQ_V:-tq4}
PROMPT=${PROMPT:-"Explain in a short paragraph why the sky is blue."}
LOGDIR=${LOGDIR:-$(dirname "$LLAMA_BIN")/../example-logs}
mkdir -p "$LOGDIR"

run() { # name ctk ctv
    local name=$1 ctk=$2 ctv=$3
    local out="$LOGDIR/$name.out" log="$LOGDIR/$name.log"
    printf '\n-- %s cache (-ctk %s -ctv %s), %s threads, greedy, %s tokens max\n' "$name" "$ctk" "$ctv" "$THREADS" "$N_PREDICT"
    if ! "$LLAMA_BIN/llama-cli" -m "$MODEL" -st -p "$PROMPT" -n "$N_PREDICT" --temp 0 --seed 1 -t "$THREADS" \
            -c "$CTX" -ctk "$ctk" -ctv "$ctv" -lv 4 --no-warmup >"$out" 2>"$log" </dev/null; then
        echo "llama-cli failed; last lines of $log:"; tail -20 "$log"; exit 1
    fi
    # the answer: what follows the echoed prompt line, up to the timing line
    awk '/^> /{on=1; next} /^\[ Prompt:/{print; exit} on' "$out" | sed '/^$/d' | sed 's/^/   /'
    grep -E 'llama_kv_cache: (size|TurboQuant)' "$log" | sed -E 's/^[0-9.]+ I llama_kv_cache: /   KV: /'
}

echo "model:  $MODEL"
echo "prompt: $PROMPT"
run turboquant "$TQ_K" "$TQ_V"
run f16 f16 f16
echo
echo "(logs: $LOGDIR; the answers differ where the compressed cache changes a greedy choice)"
