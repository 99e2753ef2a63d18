#!/usr/bin/env bash
# Two builds of libturboquant side by side in one llama-bench session: ROUNDS rounds of (f16 cache, TurboQuant
# with library A, TurboQuant with library B), the library swapped by LD_LIBRARY_PATH under the same llama.cpp
# binaries, so that the machine's drift hits all three alike. Prints each sample and the medians with their
# ratios to f16.
#   LLAMA_BIN (llama-bench's folder), MODEL, LIB_A, LIB_B (folders holding libturboquant.so.0); optional
#   THREADS (2), ROUNDS (5), REPS (3), TEST ("-p 0 -n 32 -d 4096"), TQ ("tq4/tq4").
set -euo pipefail
: "${LLAMA_BIN:?}" "${MODEL:?}" "${LIB_A:?}" "${LIB_B:?}"
THREADS=${THREADS:-2} ROUNDS=${ROUNDS:-5} REPS=${REPS:-3} TEST=${TEST:--p 0 -n 32 -d 4096} TQ=${TQ:-tq4/tq4}
k=${TQ%/*} v=${TQ#*/}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() {  # name lib ctk ctv
  # shellcheck disable=SC2086
  LD_LIBRARY_PATH="$2" "$LLAMA_BIN/llama-bench" -m "$MODEL" -t "$THREADS" -fa 1 $TEST -r "$REPS" -ctk "$3" -ctv "$4" \
      -o json 2>/dev/null > "$tmp/$round-$1.json"
}
for round in $(seq "$ROUNDS"); do
  echo "== round $round" >&2
  run f16 "$LIB_A" f16 f16
  run A "$LIB_A" "$k" "$v"
  run B "$LIB_B" "$k" "$v"
done
python3 - "$tmp" "$ROUNDS" <<'PY'
import json, statistics, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
s = {n: [] for n in ("f16", "A", "B")}
for r in range(1, rounds + 1):
    for n in s:
        got = [x for row in json.load(open(f"{tmp}/{r}-{n}.json")) for x in row["samples_ts"]]
        s[n].extend(got)
        print(f"round {r} {n}: " + " ".join(f"{x:.2f}" for x in got))
ref = statistics.median(s["f16"])
print("| build | samples | median tokens/s | mean ± sd | median / f16 |")
print("|---|---:|---:|---:|---:|")
for n, label in (("f16", "f16 cache"), ("A", "TurboQuant, library A"), ("B", "TurboQuant, library B")):
    x = s[n]
    print(f"| {label} | {len(x)} | {statistics.median(x):.2f} | {statistics.mean(x):.2f} ± {statistics.stdev(x):.2f} | {statistics.median(x) / ref:.2f}× |")
PY
