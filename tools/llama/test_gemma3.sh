#!/usr/bin/env bash
# CI check of the sliding-window (iSWA) path with a real model: Gemma 3 270M, whose layers are 5 sliding-window
# (512-token window) to 1 full-attention, each kind in its own KV cache, both holding TurboQuant rows.
#  1. llama-perplexity, 2 chunks of 1024 tokens (longer than the window, so the sliding-window cache overwrites
#     cells as it slides) in 2 parallel sequences: f16 base logits, then q4_0 and TurboQuant K4/V4 against them;
#     fails unless TurboQuant's mean KL divergence vs f16 is below KLD_BOUND = 0.3 and the log shows two TurboQuant
#     caches. Measured on these 2 chunks of docs/build.md: TurboQuant 4/4 0.192, q4_0 0.151 (2026-12-03, 2 cores);
#     longer runs: bench/llama/quality.md, section gemma3-270m. A cache that attended with the wrong window or
#     mixed the two caches up would be far above the bound.
#  2. llama-completion: the greedy continuation of a short pattern with the TurboQuant cache names the right
#     answer (Rome; measured: f16 and TurboQuant 4/4 both continue "Rome. The capital of ...").
# (llama-server with this model: make llama-server-test-gemma3, kept out of CI for the server's build time.)
# Environment: LLAMA_BIN, MODEL, CORPUS, THREADS; optional KLD_BOUND.
set -euo pipefail
: "${LLAMA_BIN:?}" "${MODEL:?}" "${CORPUS:?}"
THREADS=${THREADS:-2}
KLD_BOUND=${KLD_BOUND:-0.3}
W=$(dirname "$LLAMA_BIN")/../test-gemma3
mkdir -p "$W"
test -f "$CORPUS" || { echo "test-gemma3: corpus $CORPUS not found"; exit 2; }

PPL=("$LLAMA_BIN/llama-perplexity" -m "$MODEL" -f "$CORPUS" -c 1024 -b 2048 --chunks 2 -t "$THREADS" -fa on)
echo "== test-gemma3: 2 chunks of 1024 tokens of $CORPUS, 2 parallel sequences"
"${PPL[@]}" --kl-divergence-base "$W/base.kld" > "$W/f16.log" 2>&1 || { tail -20 "$W/f16.log"; exit 1; }
grep -E "Final estimate" "$W/f16.log"

kld() { grep -E "Mean    KLD" "$1" | awk '{print $3}'; }
for t in q4_0 tq4; do
  "${PPL[@]}" -ctk $t -ctv $t -lv 4 --kl-divergence-base "$W/base.kld" --kl-divergence > "$W/$t.log" 2>&1 \
      || { tail -20 "$W/$t.log"; rm -f "$W/base.kld"; exit 1; }
  grep -q "n_seq=2" "$W/$t.log" || { echo "test-gemma3: expected 2 parallel sequences"; rm -f "$W/base.kld"; exit 1; }
  echo "$t: $(grep -E 'Mean PPL\(Q\) +:' "$W/$t.log" | tr -s ' ')  |  mean KLD $(kld "$W/$t.log")"
done
rm -f "$W/base.kld"
n=$(grep -c "TurboQuant K 4 bits, V 4 bits" "$W/tq4.log" || true)
[ "$n" -ge 2 ] || { echo "test-gemma3: FAIL: $n TurboQuant cache lines in the log, expected 2 (full-attention and sliding-window)"; exit 1; }

k=$(kld "$W/tq4.log")
awk -v k="$k" -v b="$KLD_BOUND" 'BEGIN { if (k == "" || k != k + 0 || k >= b) { exit 1 } }' \
  || { echo "test-gemma3: FAIL: TurboQuant 4/4 mean KLD $k is not below $KLD_BOUND"; exit 1; }
echo "test-gemma3: perplexity PASS (TurboQuant 4/4 mean KLD $k < $KLD_BOUND; q4_0 $(kld "$W/q4_0.log") in the same run)"

echo "== test-gemma3: llama-completion, greedy, TurboQuant K4/V4"
"$LLAMA_BIN/llama-completion" -m "$MODEL" -t "$THREADS" -c 1024 -n 8 --temp 0 -no-cnv -ctk tq4 -ctv tq4 -lv 4 \
    -p "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is" \
    > "$W/completion.txt" 2> "$W/completion.log" \
    || { tail -20 "$W/completion.log"; exit 1; }
echo "completion: $(tr '\n' ' ' < "$W/completion.txt")"
grep -q "Italy is Rome" "$W/completion.txt" || { echo "test-gemma3: FAIL: the completion does not name Rome"; exit 1; }
n=$(grep -c "TurboQuant K 4 bits, V 4 bits" "$W/completion.log" || true)
[ "$n" -ge 2 ] || { echo "test-gemma3: FAIL: $n TurboQuant cache lines in the completion log, expected 2"; exit 1; }
echo "test-gemma3: PASS"
