#!/usr/bin/env bash
# Quality of one more model in llama.cpp, as a section of bench/llama/quality.md (kept there between the
# markers <!-- section NAME --> and <!-- end NAME -->; tools/llama/quality_table.py keeps such sections when it
# rewrites the main table). Same method as quality.sh: llama-perplexity f16 base logits, then
# --kl-divergence with each cache type, same chunks, same build, -fa on, 4 sequences in parallel
# streams (-b 4*CTX). Rows: f16 with flash attention off (noise floor), q8_0, q4_0 (llama.cpp's own, with its
# Hadamard rotation) and TurboQuant K4/V4.
# Environment: LLAMA_BIN, MODEL, CORPUS, NAME (section name), TITLE (one line about the model), THREADS,
# CTX (tokens per chunk; default 1024: past Gemma 3's 512-token window, so its sliding-window cache reuses
# cells), CHUNKS (default 8), OUT (default bench/llama/quality.md), WORK.
set -euo pipefail
: "${LLAMA_BIN:?}" "${MODEL:?}" "${CORPUS:?}" "${NAME:?}" "${TITLE:?}"
THREADS=${THREADS:-2}
CTX=${CTX:-1024}
CHUNKS=${CHUNKS:-8}
OUT=${OUT:-bench/llama/quality.md}
WORK=${WORK:-build/llama/quality-$NAME}
mkdir -p "$WORK"
test -f "$CORPUS" || { echo "CORPUS=$CORPUS: no such file"; exit 2; }
test -f "$OUT" || { echo "OUT=$OUT: no such file (make llama-quality writes it)"; exit 2; }

PPL=("$LLAMA_BIN/llama-perplexity" -m "$MODEL" -f "$CORPUS" -c "$CTX" -b $((4 * CTX)) --chunks "$CHUNKS" -t "$THREADS" -fa on)
BASE="$WORK/base-f16.kld"
RUNS=(
  "f16-fa-off|f16, flash attention off (noise floor)||-fa off"
  "q8_0|q8_0 (llama.cpp, Hadamard rotation)||-ctk q8_0 -ctv q8_0"
  "q4_0|q4_0 (llama.cpp, Hadamard rotation)||-ctk q4_0 -ctv q4_0"
  "tq44|TurboQuant K4/V4|LLAMA_TQ_CENTERING=0|-ctk tq4 -ctv tq4"
)
t0=$(date +%s)
echo "== $NAME: f16 base, $CHUNKS chunks of $CTX tokens of $CORPUS"
"${PPL[@]}" --kl-divergence-base "$BASE" > "$WORK/f16.log" 2>&1 || { tail -20 "$WORK/f16.log"; exit 1; }
grep -E "Final estimate" "$WORK/f16.log"
for r in "${RUNS[@]}"; do
  IFS='|' read -r name label envs args <<< "$r"
  printf '== %-10s %s %s ... ' "$name" "$envs" "$args"
  # shellcheck disable=SC2086
  env $envs "${PPL[@]}" $args -lv 4 --kl-divergence-base "$BASE" --kl-divergence > "$WORK/$name.log" 2>&1 \
      || { echo "failed"; tail -20 "$WORK/$name.log"; exit 1; }
  grep -E "Mean    KLD" "$WORK/$name.log" | tr -s ' '
done
rm -f "$BASE"
secs=$(( $(date +%s) - t0 ))

CMD="make llama-quality-gemma3 CORPUS=$(basename "$CORPUS") LLAMA_GEMMA3_CHUNKS=$CHUNKS LLAMA_THREADS=$THREADS"
python3 - "$WORK" "$OUT" "$NAME" "$TITLE" "$CMD" "$CTX" "$CHUNKS" "$(basename "$CORPUS")" "$secs" "${RUNS[@]}" <<'EOF'
import datetime, os, re, sys
work, out, name, title, cmd, ctx, chunks, corpus, secs = sys.argv[1:10]
runs = [r.split("|") for r in sys.argv[10:]]

def grab(pattern, text, what):
    m = re.search(pattern, text, re.M)
    if not m:
        sys.exit(f"quality_section: no {what} in the log")
    return m.group(1)

base = open(os.path.join(work, "f16.log")).read()
ppl_f16 = grab(r"Final estimate: PPL = ([0-9.]+ \+/- [0-9.]+)", base, "f16 PPL")
rows, kld = [], {}
for key, label, _envs, _args in runs:
    t = open(os.path.join(work, key + ".log")).read()
    ppl = grab(r"Mean PPL\(Q\)\s*:\s*([0-9.]+\s*±\s*[0-9.]+)", t, key + " PPL")
    k = grab(r"Mean\s+KLD:\s*([0-9.]+\s*±\s*[0-9.]+)", t, key + " KLD")
    top = grab(r"Same top p:\s*([0-9.]+)\s*±", t, key + " top-1")
    kld[key] = float(k.split("±")[0])
    bits = "16 / 16"
    if key.startswith("q8_0"):
        bits = "8.5 / 8.5"
    elif key.startswith("q4_0"):
        bits = "4.5 / 4.5"
    elif key.startswith("tq"):
        m = re.findall(r"K ([0-9.]+) \+ V ([0-9.]+) bits per element", t)
        if not m:
            sys.exit(f"quality_section: no TurboQuant bits line in {key}.log")
        bits = " / ".join(m[0])
        caches = len(re.findall(r"TurboQuant K 4 bits, V 4 bits", t))
        if caches < 2:
            sys.exit(f"quality_section: {key}.log names {caches} TurboQuant caches; an iSWA model has two")
    rows.append((label, bits, ppl, k, top, key))

lines = [f"<!-- section {name} -->", f"## {title}", "",
         f"`llama-perplexity -c {ctx} -b {4 * int(ctx)} --chunks {chunks} -fa on` on `{corpus}` ({chunks} chunks of {ctx} tokens, "
         "4 sequences in parallel streams), KL divergence against the f16 cache's logits of the same chunks, all rows in "
         f"one run of one build ({secs} s). Both of the model's caches (full-attention and sliding-window layers) hold "
         "TurboQuant rows; the chunks are longer than the window, so the sliding-window cache overwrites its cells as "
         "the window moves on.", "",
         f"Machine: {open('/proc/cpuinfo').read().count('processor')} cores; {datetime.date.today().isoformat()}.", "",
         f"Command: `{cmd}`", "", f"f16 cache: PPL {ppl_f16.replace('+/-', '±')}.", "",
         "| KV cache | bits/elem K / V | PPL | mean KLD vs f16 | same top-1 | KLD / q4_0's |",
         "|---|---|---|---|---|---|"]
for label, bits, ppl, k, top, key in rows:
    lines.append(f"| {label} | {bits} | {ppl} | {k} | {top}% | {kld[key] / kld['q4_0']:.2f} |")
lines += ["", f"<!-- end {name} -->"]
section = "\n".join(lines)

text = open(out).read()
pat = re.compile(rf"<!-- section {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S)
text = pat.sub(lambda _: section, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
open(out, "w").write(text)
print(f"quality_section: wrote section '{name}' of {out}")
EOF
