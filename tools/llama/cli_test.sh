#!/usr/bin/env bash
# llama-cli with a TurboQuant KV cache, non-interactively: one turn (-st) with the prompt from -p, stdin from
# /dev/null, greedy, bounded in time; once with the f16 cache and once with TurboQuant K4/V4.
# This llama-cli is chat-only (it starts llama-server's code in a thread and sends /v1/chat/completions), so a
# base model such as Gemma 3 270M gets a pass-through chat template (the user's text as is): the turn is then a
# plain completion of a short pattern. With the model's own template this base model does not answer (it
# repeats the question or drifts, f16 and TurboQuant alike).
# Fails unless both runs exit 0, the f16 answer names the expected word (the reference is sane), the TurboQuant
# answer names it too and starts with the same first sentence as the f16 answer, the TurboQuant log shows
# CACHES TurboQuant caches (Gemma 3: 2, full-attention and sliding-window) and the f16 log none.
# Measured (Gemma 3 270M Q4_K_M, 2 cores, 2026-12-04, default key centering): f16 " Rome. The capital of the
# United States is Washington. ...", TurboQuant 4/4 " Rome. The capital of Japan is Tokyo. ..." (same first sentence).
# Environment: LLAMA_BIN, MODEL, THREADS; optional CACHES (1), PROMPT, EXPECT, N_PREDICT (16), TIMEOUT (300 s).
set -euo pipefail
: "${LLAMA_BIN:?}" "${MODEL:?}"
THREADS=${THREADS:-2}
CACHES=${CACHES:-1}
PROMPT=${PROMPT:-"The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"}
EXPECT=${EXPECT:-Rome}
N_PREDICT=${N_PREDICT:-16}
TIMEOUT=${TIMEOUT:-300}
W=$(dirname "$LLAMA_BIN")/../test-cli
mkdir -p "$W"
RAW_TEMPLATE="{% for message in messages %}{{ message['content'] }}{% endfor %}"

# the assistant's text of the single turn, from llama-cli's -o file ("User:\n...\n\nAssistant:\n<text>\n\n")
answer() { awk 'f { print } /^Assistant:$/ { f = 1 }' "$1"; }

for t in f16 tq4; do
  rm -f "$W/$t.txt"
  echo "== cli-test: llama-cli -st, -ctk $t -ctv $t"
  rc=0
  timeout "$TIMEOUT" "$LLAMA_BIN/llama-cli" -m "$MODEL" -t "$THREADS" -c 1024 -n "$N_PREDICT" --temp 0 -st \
      -co off --jinja --chat-template "$RAW_TEMPLATE" -p "$PROMPT" -ctk $t -ctv $t -lv 4 -o "$W/$t.txt" \
      < /dev/null > "$W/$t.out" 2> "$W/$t.log" || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -20 "$W/$t.log"
    echo "cli-test: FAIL: llama-cli with the $t cache exited with status $rc$([ "$rc" -eq 124 ] && echo " (timeout ${TIMEOUT} s)")"
    exit 1
  fi
  [ -s "$W/$t.txt" ] || { echo "cli-test: FAIL: llama-cli with the $t cache wrote no answer"; exit 1; }
  echo "$t answer: $(answer "$W/$t.txt" | tr '\n' ' ')"
done

n=$(grep -c "TurboQuant K 4 bits, V 4 bits" "$W/tq4.log" || true)
[ "$n" -ge "$CACHES" ] || { echo "cli-test: FAIL: $n TurboQuant cache lines in the TurboQuant run's log, expected $CACHES"; exit 1; }
n0=$(grep -c "TurboQuant" "$W/f16.log" || true)
[ "$n0" -eq 0 ] || { echo "cli-test: FAIL: the f16 run's log mentions TurboQuant"; exit 1; }

ref=$(answer "$W/f16.txt")
got=$(answer "$W/tq4.txt")
grep -q "$EXPECT" <<< "$ref" || { echo "cli-test: FAIL: the f16 reference answer does not name $EXPECT (the check needs a model that answers)"; exit 1; }
grep -q "$EXPECT" <<< "$got" || { echo "cli-test: FAIL: the TurboQuant answer does not name $EXPECT"; exit 1; }
# first sentence: up to the first '.', '!' or '?' (or the whole first line)
first() { head -n 1 <<< "$1" | sed -E 's/^([^.!?]*[.!?]).*/\1/'; }
[ "$(first "$got")" = "$(first "$ref")" ] \
  || { echo "cli-test: FAIL: first sentence differs: f16 '$(first "$ref")', TurboQuant '$(first "$got")'"; exit 1; }
same=$([ "$got" = "$ref" ] && echo "identical to" || echo "differs after the first sentence from")
echo "cli-test: PASS (TurboQuant 4/4 answer names $EXPECT, $same the f16 answer; $CACHES+ TurboQuant caches in the log)"
