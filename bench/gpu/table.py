#!/usr/bin/env python3
"""Markdown tables from a bench_decode.py results file: python3 table.py results/h200_v20_bench.json"""
import json, sys

r = json.load(open(sys.argv[1]))
m = r["meta"]
rd = m.get("read_gbps")
print(f"Card: {m['device']}, torch {m['torch']}, {m['date']}; measured device-to-device copy "
      f"{m['copy_gbps']:.0f} GB/s (read + write)" + (f", streaming read {rd:.0f} GB/s" if rd else "") +
      f". Command: `{m['command']}`.\n")
kern = any("kernel" in x for x in r["results"])
print("| heads q/kv | batch | context | bits |" + (" kernel |" if kern else "") + " TurboQuant µs | FP16 SDPA µs | speed-up | "
      "compressed GB/s | % of copy BW |" + (" % of read BW |" if rd else "") + " append M vectors/s |")
print("|---|---|---|---|" + ("---|" if kern else "") + "---|---|---|---|---|" + ("---|" if rd else "") + "---|")
dec = [x for x in r["results"] if x.get("kind") != "prefill"]
dec.sort(key=lambda x: (-x["kv_heads"], x["batch"], x["context"], -x["bits"]))
for x in dec:
    print(f"| {x['q_heads']}/{x['kv_heads']} | {x['batch']} | {x['context']//1024}K | {x['bits']} | "
          + (f"{x.get('kernel', '')} | " if kern else "") + f"{x['t_us']:.1f} | "
          f"{x['t_fp16_us']:.1f} | {x['speedup']:.2f}x | {x['gbps']:.0f} | {100*x['frac_copy']:.0f}% | "
          + (f"{100*x['frac_read']:.0f}% | " if rd else "") + f"{x['append_vectors_per_s']/1e6:.0f} |")
pre = [x for x in r["results"] if x.get("kind") == "prefill"]
if pre:
    print("\n| prefill queries | prefix | heads q/kv | bits | TurboQuant µs | TFLOP/s | FP16 SDPA µs | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for x in pre:
        print(f"| {x['n_q']} | {x['prefix']//1024}K | {x['q_heads']}/{x['kv_heads']} | {x['bits']} | {x['t_us']:.0f} | "
              f"{x['tflops']:.0f} | {x['t_fp16_us']:.0f} | {x['speedup']:.2f}x |")
