#!/usr/bin/env bash
# The demo (`make example`): a long prompt — a few thousand tokens of a novel with a pass key hidden in it —
# and questions about it, answered by llama-completion (greedy, plain completion: "Q: ... A: <lead>") with an
# f16 KV cache and with the TurboQuant defaults, same build. The prompt is processed once per cache and its KV
# state saved with --prompt-cache; the other questions reload that session (the compressed rows and the
# centering means) and evaluate only their own tokens. Prints each answer beside the one the passage gives,
# prompt and generation tokens/s, the KV cache memory and the saved session's size.
# Environment: LLAMA_BIN (llama.cpp bin dir), MODEL (gguf), THREADS; optional CORPUS (text file), PASSKEY,
# QUESTION + LEAD + EXPECT (one question of your own instead of the built-in three; EXPECT may be empty),
# N_PREDICT (tokens generated for the first question, which gives the generation rate), CTX, TQ_K, TQ_V,
# TQ_FLAGS (extra llama-completion flags of the TurboQuant run), LLAMA_ARGS (extra flags of both runs, e.g.
# "-ngl 99 -fa on" on a CUDA build), LOGDIR.
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
PASSKEY=${PASSKEY:-68245}
LOGDIR=${LOGDIR:-$(dirname "$LLAMA_BIN")/../example-logs}
mkdir -p "$LOGDIR"
[[ -f $CORPUS ]] || { echo "example.sh: CORPUS $CORPUS is not a file"; exit 2; }
[[ $PASSKEY =~ ^[0-9]+$ ]] || { echo "example.sh: PASSKEY '$PASSKEY' is not a number"; exit 2; }

# questions: text, the answer's lead-in (the model continues it), the words the passage gives ('' = not checked)
if [[ -n ${QUESTION:-} ]]; then
    QS=("$QUESTION"); LEADS=("${LEAD:-}"); EXPECTS=("${EXPECT:-}")
else
    QS=("What is the pass key?"
        "What is the name of the young man who has taken Netherfield Park?"
        "Where does the young man who has taken Netherfield Park come from?")
    LEADS=("The pass key is" "His name is" "He comes from the")
    EXPECTS=("$PASSKEY" "Bingley" "north of England")
fi

# the passage with the pass key as its own paragraph, a third of the way in
passage=$LOGDIR/passage.txt
awk -v key="$PASSKEY" 'BEGIN { RS = ""; ORS = "\n\n" } { p[NR] = $0 }
    END { for (i = 1; i <= NR; i++) { if (i == int(NR / 3) + 1) print "The pass key is " key ". Remember it: " key "."; print p[i] } }' \
    "$CORPUS" >"$passage"

# prompt file of question i: the passage, then "Q: <question>\nA: <lead>"
prompt_of() { printf '%s\n\nQ: %s\nA:%s' "$(cat -- "$passage")" "${QS[$1]}" "${LEADS[$1]:+ ${LEADS[$1]}}" >"$LOGDIR/prompt$1.txt"; }

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

declare -A RIGHT KV SESSION
run() { # name ctk ctv [flags...]
    local name=$1 ctk=$2 ctv=$3
    shift 3
    local session="$LOGDIR/$name.session" right=0 checked=0
    rm -f -- "$session"
    printf '\n-- %s cache (-ctk %s -ctv %s%s), %s threads, greedy\n' "$name" "$ctk" "$ctv" "${*:+ $*}" "$THREADS"
    for i in "${!QS[@]}"; do
        prompt_of "$i"
        local out="$LOGDIR/$name.q$i.out" log="$LOGDIR/$name.q$i.log" n=16 start=$SECONDS rc=0 ticker=
        local -a pc=(--prompt-cache "$session")
        if ((i == 0)); then
            n=$N_PREDICT
            # progress: the prompt takes a while on a small CPU
            (while sleep 10; do printf '   ... %ss (the prompt: %s with the pass key, then generation)\n' \
                $((SECONDS - start)) "$(basename "$CORPUS")"; done) &
            ticker=$!
        else
            pc+=(--prompt-cache-ro)
        fi
        "$LLAMA_BIN/llama-completion" -m "$MODEL" -no-cnv --no-display-prompt -f "$LOGDIR/prompt$i.txt" -n "$n" \
            --temp 0 --seed 1 -t "$THREADS" -c "$CTX" -ctk "$ctk" -ctv "$ctv" "${pc[@]}" "$@" --no-warmup -lv 4 \
            >"$out" 2>"$log" </dev/null || rc=$?
        if [[ -n $ticker ]]; then kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true; fi
        if ((rc != 0)); then
            echo "llama-completion failed (exit $rc); last lines of $log:"; tail -20 -- "$log"; exit 1
        fi
        if ((i == 0)); then
            # llama_perf_context_print: prompt eval time = T ms / N tokens (... ms per token, R tokens per second)
            local pe ev
            pe=$(grep -E 'prompt eval time' -- "$log" | tail -1 | sed -E 's#.*/ *([0-9]+) tokens.*, *([0-9.]+) tokens per second.*#\1 tokens at \2 tok/s#')
            ev=$(grep -E '[^t] eval time' -- "$log" | grep -v prompt | tail -1 | sed -E 's#.*/ *([0-9]+) runs.*, *([0-9.]+) tokens per second.*#\1 tokens at \2 tok/s#')
            printf '   prompt: %s; generation: %s; %ss wall\n' "${pe:-?}" "${ev:-?}" $((SECONDS - start))
            # the cache's size lines are info-level (-lv 4); a log without them must not end the demo
            grep -E 'llama_kv_cache: (size|TurboQuant)' -- "$log" | sed -E 's/^.*llama_kv_cache: /   KV: /' || echo "   KV: (no size line in $log)"
            KV[$name]=$(grep -E 'llama_kv_cache: size' -- "$log" | head -1 | sed -E 's/.*size = *([0-9.]+ MiB).*/\1/')
            [[ -s $session ]] || { echo "example.sh: llama-completion saved no session to $session (see $log)"; exit 1; }
            SESSION[$name]=$(mib "$(stat -c %s -- "$session")")
            printf '   saved session (the prompt'"'"'s KV state, --prompt-cache): %s; the other questions reload it\n' "${SESSION[$name]}"
        elif ! grep -qE 'session file matches [1-9]' -- "$log"; then
            echo "example.sh: question $((i + 1)) did not reuse the saved session (see $log)"; exit 1
        fi
        # the answer: the lead-in plus the generated text up to its first line break
        local answer
        answer=$(printf '%s%s' "${LEADS[$i]:+${LEADS[$i]} }" "$(sed -e 's/^[[:space:]]*//' -- "$out" | awk 'NF { print; exit }')")
        local verdict=""
        if [[ -n ${EXPECTS[$i]} ]]; then
            checked=$((checked + 1))
            if grep -qiF -- "${EXPECTS[$i]}" <<<"$answer"; then verdict="  [right: ${EXPECTS[$i]}]"; right=$((right + 1))
            else verdict="  [wrong: the passage says ${EXPECTS[$i]}]"; fi
        fi
        printf '   Q: %s\n   A: %s%s\n' "${QS[$i]}" "$answer" "$verdict"
    done
    RIGHT[$name]="$right of $checked"
}

echo "model:    $MODEL"
echo "prompt:   $(wc -w <"$CORPUS") words of $(basename "$CORPUS") with a pass key ($PASSKEY) hidden a third of the way in,"
echo "          then ${#QS[@]} question(s), each as 'Q: ... A: <lead-in>' for the model to complete"
# shellcheck disable=SC2086 # LLAMA_ARGS and TQ_FLAGS are lists of flags
run f16 f16 f16 $LLAMA_ARGS
# shellcheck disable=SC2086
run turboquant "$TQ_K" "$TQ_V" $LLAMA_ARGS $TQ_FLAGS
echo
echo "summary:  f16 right on ${RIGHT[f16]}, TurboQuant ${TQ_K}/${TQ_V} right on ${RIGHT[turboquant]};" \
    "KV cache ${KV[f16]:-?} vs ${KV[turboquant]:-?}, saved session ${SESSION[f16]} vs ${SESSION[turboquant]}"
echo "(logs: $LOGDIR; answers can differ where the compressed cache changes a greedy choice)"
