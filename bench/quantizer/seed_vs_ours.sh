#!/usr/bin/env bash
# Quantize / dequantize throughput of libturboquant against the seed Python package (PyPI
# `turboquant==0.2.0`), side by side in one run on this machine: d=128, 4 bits, 65,536 Gaussian
# vectors, 1 and 2 threads, median of 5 timed runs after a warm-up (the protocol of
# examples/quantizer_speed.rs; bench/quantizer/seed_speed.py times the seed the same way). Ours runs before and after the seed
# for each thread count and the slower of the two is reported, so load from other processes counts
# against us, not for us.
#
# Usage: bench/quantizer/seed_vs_ours.sh [output.md]      (default: print only)
# Needs: python3 with venv + pip (PyPI reachable the first time), cargo.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
venv=$root/build/seed-venv
work=$root/build/bench
n=${N:-65536}
reps=${REPS:-5}
mkdir -p "$work"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import turboquant, torch' 2>/dev/null; then
  echo "== setting up the seed package in $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'numpy<2.4' torch scipy turboquant==0.2.0
fi
echo "== building examples/quantizer_speed" >&2
cargo build -q --release --example quantizer_speed
ours=$root/target/release/examples/quantizer_speed

: > "$work/runs.jsonl"
for t in 1 2; do
  echo "== $t thread(s)" >&2
  "$ours" --n "$n" --reps "$reps" --threads "$t" --rotation hadamard | sed 's/^{/{"run": "ours-before", /' >> "$work/runs.jsonl"
  "$ours" --n "$n" --reps "$reps" --threads "$t" --rotation dense | sed 's/^{/{"run": "ours-dense", /' >> "$work/runs.jsonl"
  "$venv/bin/python" bench/quantizer/seed_speed.py --n "$n" --dim 128 --bits 4 --reps "$reps" --threads "$t" \
    --json "$work/seed_$t.json" > "$work/seed_$t.log"
  "$ours" --n "$n" --reps "$reps" --threads "$t" --rotation hadamard | sed 's/^{/{"run": "ours-after", /' >> "$work/runs.jsonl"
done

model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
flags=$(grep -o -w 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
cores=$(nproc)
load=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

"$venv/bin/python" - "$work" "$model" "$flags" "$cores" "$load" "$commit" "$n" "$reps" "${1:-}" <<'PY'
import datetime, json, sys
work, model, flags, cores, load, commit, n, reps, out = sys.argv[1:]
runs = [json.loads(l) for l in open(f"{work}/runs.jsonl")]
lines = []
p = lines.append
p("# Quantizer throughput: libturboquant vs the seed package")
p("")
p(f"Measured {datetime.date.today().isoformat()} by `bench/quantizer/seed_vs_ours.sh` (commit {commit}) on "
  f"**{model}** ({cores} cores; {flags.strip()}), load average before the summary {load}. "
  f"d = 128, 4 bits, {int(n):,} Gaussian vectors per call, median wall time of {reps} runs after a warm-up. "
  "Ours: the C API (`tq_quantize` / `tq_dequantize`, `examples/quantizer_speed.rs`), run before and after "
  "the seed for each thread count; the slower run is reported. Seed: `turboquant==0.2.0` "
  "(`TurboQuantMSE`, torch CPU) timed by `bench/quantizer/seed_speed.py`.")
p("")
p("| threads | impl | rotation | quantize vec/s | dequantize vec/s | bytes/vector | quantize × seed | dequantize × seed |")
p("|---:|---|---|---:|---:|---:|---:|---:|")
for t in (1, 2):
    seed = [r for r in json.load(open(f"{work}/seed_{t}.json"))["rows"] if r["algo"] == "MSE"][0]
    sq, sd = seed["quant_vec_per_s"], seed["dequant_vec_per_s"]
    had = [r for r in runs if r["threads"] == t and r["rotation"] == "hadamard"]
    worst_q = min(r["quant_vec_per_s"] for r in had)
    worst_d = min(r["dequant_vec_per_s"] for r in had)
    dense = [r for r in runs if r["threads"] == t and r["rotation"] == "dense"][0]
    p(f"| {t} | seed 0.2.0 | dense (QR) | {sq:,.0f} | {sd:,.0f} | {seed['bytes_per_vector_stored']} | 1 | 1 |")
    p(f"| {t} | libturboquant | HADAMARD | {worst_q:,.0f} | {worst_d:,.0f} | {had[0]['bytes_per_vector_stored']} | "
      f"**{worst_q / sq:.0f}×** | {worst_d / sd:.1f}× |")
    p(f"| {t} | libturboquant | DENSE | {dense['quant_vec_per_s']:,.0f} | {dense['dequant_vec_per_s']:,.0f} | "
      f"{dense['bytes_per_vector_stored']} | {dense['quant_vec_per_s'] / sq:.1f}× | {dense['dequant_vec_per_s'] / sd:.1f}× |")
p("")
p("Every run (vectors/s):")
p("")
for t in (1, 2):
    for r in runs:
        if r["threads"] == t:
            p(f"- {t} thread(s), ours {r['run']} ({r['rotation']}): quantize {r['quant_vec_per_s']:,.0f}, "
              f"dequantize {r['dequant_vec_per_s']:,.0f}")
    seed = json.load(open(f"{work}/seed_{t}.json"))["rows"][0]
    p(f"- {t} thread(s), seed: quantize {seed['quant_vec_per_s']:,.0f}, dequantize {seed['dequant_vec_per_s']:,.0f} "
      f"(CPU busy before: {seed['cpu_busy_before']:.2f})")
text = "\n".join(lines) + "\n"
print(text)
if out:
    open(out, "w").write(text)
PY
