#!/usr/bin/env bash
# llama-bench speed of f16, q4_0 (llama.cpp, with its Hadamard rotation) and TurboQuant KV caches, flash attention
# on, THREADS threads, all in one run, with each cache type's median and its ratio to f16.
#   MODE=decode  (default) tg32 at depths DEPTHS (default 0,4096)
#   MODE=prefill pp512 at depths DEPTHS (default 4096): a 512-token prompt chunk over an already filled cache
# ROUNDS > 1 repeats the whole list of cache types (one llama-bench call each, REPS repetitions per call), so that
# load changes on a shared machine hit every type alike; medians are over all ROUNDS × REPS samples.
# Environment: LLAMA_BIN, MODEL, THREADS; optional MODE, REPS, ROUNDS, DEPTHS, TYPES ("K/V K/V ..."), OUT (markdown
# file to write), PYTHON.
set -euo pipefail
: "${LLAMA_BIN:?}" "${MODEL:?}"
THREADS=${THREADS:-2}
MODE=${MODE:-decode}
REPS=${REPS:-2}
ROUNDS=${ROUNDS:-1}
TYPES=${TYPES:-f16/f16 q4_0/q4_0 tq4/tq4 tq4/tq3}
OUT=${OUT:-}
PYTHON=${PYTHON:-python3}
case "$MODE" in
  decode)  DEPTHS=${DEPTHS:-0,4096}; shape=(-p 0 -n 32) ;;
  prefill) DEPTHS=${DEPTHS:-4096};   shape=(-p 512 -n 0) ;;
  *) echo "MODE=$MODE: use decode or prefill" >&2; exit 2 ;;
esac
case " $TYPES " in *" f16/f16 "*) ;; *) echo "TYPES must include f16/f16 (the reference of the ratios)" >&2; exit 2 ;; esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for round in $(seq "$ROUNDS"); do
  for t in $TYPES; do
    k=${t%/*} v=${t#*/}
    echo "== round $round: -ctk $k -ctv $v" >&2
    "$LLAMA_BIN/llama-bench" -m "$MODEL" -t "$THREADS" -fa 1 "${shape[@]}" -d "$DEPTHS" -r "$REPS" \
        -ctk "$k" -ctv "$v" -o json 2>/dev/null > "$tmp/$round-$k-$v.json"
  done
done

table=$("$PYTHON" - "$tmp" $TYPES <<'EOF'
import glob, json, statistics, sys
tmp, types = sys.argv[1], sys.argv[2:]
samples = {}  # (type, test) -> tokens/s samples
tests = []
for t in types:
    k, v = t.split("/")
    for path in sorted(glob.glob(f"{tmp}/*-{k}-{v}.json")):
        for r in json.load(open(path)):
            test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
            if r["n_depth"]:
                test += f" @ d{r['n_depth']}"
            if test not in tests:
                tests.append(test)
            samples.setdefault((t, test), []).extend(r["samples_ts"])
print("| KV cache (K / V) | test | samples | median tokens/s | mean ± sd | median / f16 |")
print("|---|---|---:|---:|---:|---:|")
for test in tests:
    ref = statistics.median(samples[("f16/f16", test)])
    for t in types:
        s = samples.get((t, test), [])
        if not s:
            continue
        med = statistics.median(s)
        sd = statistics.stdev(s) if len(s) > 1 else 0.0
        print(f"| {t.replace('/', ' / ')} | {test} | {len(s)} | {med:.2f} | {statistics.mean(s):.2f} ± {sd:.2f} | {med / ref:.2f}× |")
EOF
)
if [ -n "$OUT" ]; then
  target=$([ "$MODE" = decode ] && echo llama-bench-decode || echo llama-bench-prefill)
  {
    if [ "$MODE" = decode ]; then
      echo "# llama-bench: decode speed with a TurboQuant KV cache beside f16 and q4_0"
    else
      echo "# llama-bench: prefill speed (a 512-token prompt chunk over a filled cache) with a TurboQuant KV cache beside f16 and q4_0"
    fi
    echo
    echo "Command: \`make $target\` (tools/llama/bench.sh MODE=$MODE: llama-bench -fa 1 -t $THREADS ${shape[*]} -d $DEPTHS -r $REPS per cache type, $ROUNDS round(s) over the types, one run)."
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores, shared with other jobs; $(date +%F)."
    echo
    echo "$table"
  } > "$OUT"
fi
echo "$table"
