#!/usr/bin/env bash
# The demo (`make example`): a long prompt — a few thousand tokens of a novel, then a question about it —
# answered by llama-completion (the chat template applied, greedy, one turn) with an f16 KV cache and with
# the TurboQuant defaults, same build. Prints both answers, prompt and generation tokens/s, and the KV cache memory of each.
# Environment: LLAMA_BIN (llama.cpp bin dir), MODEL (gguf), THREADS; optional CORPUS (text file), QUESTION,
# N_PREDICT, CTX, TQ_K, TQ_V, TQ_FLAGS (extra llama-completion flags of the TurboQuant run), LLAMA_ARGS (extra
# flags of both runs, e.g. "-ngl 99 -fa on" on a CUDA build), LOGDIR.
set -euo pipefail

: "${LLAMA_BIN:?}" "${MODEL:?}"
here=$(cd "$(dirname "$0")/../.." && pwd)
THREADS=${THREADS:-2}
N_PREDICT=${N_PREDICT:-64}
CTX=${CTX:-4096}
TQ_K=${TQ_K:-tq4}
TQ_V=${TQ_V:-tq4}
TQ_FLAGS=${TQ_FLAGS:-}
LLAMA_ARGS=${LLAMA_ARGS:-}
CORPUS=${CORPUS:-$here/examples/long-prompt/pride-and-prejudice-ch1-2.txt}
QUESTION=${QUESTION:-"Question: according to the passage above, who has taken Netherfield Park, and where is he from? Answer in one sentence."}
LOGDIR=${LOGDIR:-$(dirname "$LLAMA_BIN")/../example-logs}
mkdir -p "$LOGDIR"

[[ -f $CORPUS ]] || { echo "example.sh: CORPUS $CORPUS is not a file"; exit 2; }
prompt=$LOGDIR/prompt.txt
{ cat -- "$CORPUS"; printf '\n\n%s\n' "$QUESTION"; } >"$prompt"

run() { # name ctk ctv [flags...]
    local name=$1 ctk=$2 ctv=$3
    shift 3
    local out="$LOGDIR/$name.out" log="$LOGDIR/$name.log"
    printf '\n-- %s cache (-ctk %s -ctv %s%s), %s threads, greedy, %s tokens max\n' \
        "$name" "$ctk" "$ctv" "${*:+ $*}" "$THREADS" "$N_PREDICT"
    local start=$SECONDS
    # progress: the prompt takes a while on a small CPU
    (while sleep 10; do printf '   ... %ss (prompt of %s, then generation)\n' $((SECONDS - start)) "$(basename "$CORPUS")"; done) &
    local ticker=$!
    local rc=0
    "$LLAMA_BIN/llama-completion" -m "$MODEL" -cnv -st --no-display-prompt -f "$prompt" -n "$N_PREDICT" \
        --temp 0 --seed 1 -t "$THREADS" -c "$CTX" -ctk "$ctk" -ctv "$ctv" "$@" --no-warmup -lv 4 \
        >"$out" 2>"$log" </dev/null || rc=$?
    kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
    if ((rc != 0)); then
        echo "llama-completion failed (exit $rc); last lines of $log:"; tail -20 -- "$log"; exit 1
    fi
    echo "   answer:"
    sed -e 's/^> *//' -e '/^EOF by user/d' -e '/^[[:space:]]*$/d' -e 's/^/     /' -- "$out"
    # llama_perf_context_print: prompt eval time = T ms / N tokens (... ms per token, R tokens per second)
    local pe ev
    pe=$(grep -E 'prompt eval time' -- "$log" | tail -1 | sed -E 's#.*/ *([0-9]+) tokens.*, *([0-9.]+) tokens per second.*#\1 tokens at \2 tok/s#')
    ev=$(grep -E '[^t] eval time' -- "$log" | grep -v prompt | tail -1 | sed -E 's#.*/ *([0-9]+) runs.*, *([0-9.]+) tokens per second.*#\1 tokens at \2 tok/s#')
    printf '   prompt: %s; generation: %s; %ss wall\n' "${pe:-?}" "${ev:-?}" $((SECONDS - start))
    # the cache's size lines are info-level (-lv 4); a log without them must not end the demo
    grep -E 'llama_kv_cache: (size|TurboQuant)' -- "$log" | sed -E 's/^.*llama_kv_cache: /   KV: /' || echo "   KV: (no size line in $log)"
}

echo "model:    $MODEL"
echo "prompt:   $(wc -w <"$CORPUS") words of $(basename "$CORPUS"), then:"
echo "          $QUESTION"
# shellcheck disable=SC2086 # LLAMA_ARGS and TQ_FLAGS are lists of flags
run f16 f16 f16 $LLAMA_ARGS
# shellcheck disable=SC2086
run turboquant "$TQ_K" "$TQ_V" $LLAMA_ARGS $TQ_FLAGS
echo
echo "(logs: $LOGDIR; the answers differ where the compressed cache changes a greedy choice)"
