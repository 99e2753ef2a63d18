#!/usr/bin/env python3
"""Fractional bits by splitting the channels (TurboQuant paper §4.3) against integer widths and per-layer mixes
at the same budget, on real attention inputs of SmolLM2-135M.

Input: a dump of each layer's attention inputs for ubatches of 512 tokens (records of int32 header [layer, n_tokens,
n_heads, n_kv_heads, head_dim, n_tokens] then q [n_tokens][n_heads][head_dim], k and v [n_tokens][n_kv][head_dim]
as f32, post-RoPE, as llama.cpp hands them to the TurboQuant cache). Each arm quantizes K (V exact) or V (K exact)
of every (layer, kv head) with libturboquant's quantizer (`turboquant.Quantizer`: rotation, Lloyd–Max codebook,
one bf16 scale per vector), keys centred as the cache centres them (mean of the rows after the first), and
measures the attention output's error against exact K and V: causal softmax, scale 1/sqrt(d), the queries of the
second half of each ubatch (the tokens llama-perplexity scores), ‖o − ô‖² / ‖o‖² averaged over them, the heads
and the layers.

Arms at b bits (bits per element = codes + scales: one 16-bit scale per vector of 64 is 0.25):
  - integer b and b+1 (b + 0.25, b + 1.25);
  - split: C channels at b+1 and 64 − C at b, two independent quantizers (each its rotation and scale:
    b + C/64 + 0.5); the C channels either the largest by RMS in that layer and head (outliers, as the paper
    picks them) or C fixed channels (the first C);
  - the per-layer mix of the same budget: a fraction f of the layers at b+1 and the rest at b with
    f = (C/64 + 0.25), its error the layers' average (f·err(b+1) + (1 − f)·err(b)).
Usage: split_channels.py DUMP [--bits 2 3 4] [--c 16 32] [--lib PATH]
"""
import argparse
import os
import sys

import numpy as np


def records(path):
    with open(path, "rb") as f:
        while True:
            h = f.read(24)
            if len(h) < 24:
                return
            il, nt, nh, nkv, d, nt2 = np.frombuffer(h, np.int32)
            q = np.frombuffer(f.read(4 * nt * nh * d), np.float32).reshape(nt, nh, d)
            k = np.frombuffer(f.read(4 * nt2 * nkv * d), np.float32).reshape(nt2, nkv, d)
            v = np.frombuffer(f.read(4 * nt2 * nkv * d), np.float32).reshape(nt2, nkv, d)
            yield int(il), q, k, v


def attend(q, k, v, t0):
    """q [nt][g][d], k, v [nt][d]: causal attention per query head of the queries t0.. -> [nt - t0][g][d]."""
    nt, g, d = q.shape
    s = np.einsum("tgd,jd->gtj", q[t0:].astype(np.float64), k.astype(np.float64)) / np.sqrt(d)
    s = s + np.triu(np.full((nt, nt), -np.inf), 1)[None, t0:]
    s -= s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("gtj,jd->tgd", p, v.astype(np.float64))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--c", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--lib", default=None)
    ap.add_argument("--records", type=int, default=0, help="only the first N records (0: all)")
    ap.add_argument("--python", default=os.path.join(os.path.dirname(__file__), "..", "..", "bindings", "python"))
    a = ap.parse_args()
    sys.path.insert(0, a.python)
    import turboquant as tq
    if a.lib:
        tq.load_library(a.lib)

    qcache = {}

    def quant(x, bits):
        n, dim = x.shape
        key = (dim, bits)
        if key not in qcache:
            qcache[key] = tq.Quantizer(dim=dim, bits=bits, seed=1 + dim)
        qz = qcache[key]
        codes, scales = qz.quantize(np.ascontiguousarray(x, np.float32))
        return qz.dequantize(codes, scales)

    def split(x, chans, bits):
        rest = np.setdiff1d(np.arange(x.shape[1]), chans)
        out = np.empty_like(x)
        out[:, chans] = quant(x[:, chans], bits + 1)
        out[:, rest] = quant(x[:, rest], bits)
        return out

    # err[(which, arm)] -> list over (record, head) of mean relative output error
    err = {}
    n_rec = 0
    for il, q, k, v in records(a.dump):
        if a.records and n_rec == a.records:
            break
        if q.shape[0] < 64:
            continue  # a warm-up call of a few tokens, not a ubatch of the text
        n_rec += 1
        nt, nh, d = q.shape
        nkv = k.shape[1]
        g = nh // nkv
        half = nt // 2
        for h in range(nkv):
            qh = q[:, h * g:(h + 1) * g, :]
            kh, vh = k[:, h, :], v[:, h, :]
            ref = attend(qh, kh, vh, half)
            den = (ref ** 2).sum(-1)

            def e(k_hat, v_hat):
                o = attend(qh, k_hat, v_hat, half)
                return float((((o - ref) ** 2).sum(-1) / den).mean())

            mu = kh[1:].mean(0)
            kc = kh - mu
            for which, x in (("K", kc), ("V", vh)):
                rms = np.sqrt((x ** 2).mean(0))
                arms = {}
                for b in a.bits:
                    for bb in (b, b + 1):
                        if ("int", bb) not in arms:
                            arms[("int", bb)] = quant(x, bb)
                    for c in a.c:
                        arms[("out", b, c)] = split(x, np.argsort(-rms)[:c], b)
                        arms[("fix", b, c)] = split(x, np.arange(c), b)
                for name, xh in arms.items():
                    if which == "K":
                        val = e(xh + mu, vh)
                    else:
                        val = e(kh, xh)
                    err.setdefault((which, name), []).append(val)
    if n_rec == 0:
        raise SystemExit(f"{a.dump}: no records")

    mean = {key: float(np.mean(v)) for key, v in err.items()}
    print(f"records (layer × ubatch): {n_rec}; relative attention-output error, mean over layers, kv heads and the "
          f"second half's queries\n")
    print("| quantized | b | C | split, outlier channels | split, fixed channels | per-layer mix, same bits | "
          "integer b | integer b+1 | bits/elem (split, mix) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for which in ("K", "V"):
        for b in a.bits:
            for c in a.c:
                f = c / 64 + 0.25
                mix = f * mean[(which, ("int", b + 1))] + (1 - f) * mean[(which, ("int", b))]
                so, sf = mean[(which, ("out", b, c))], mean[(which, ("fix", b, c))]
                best = min(so, sf, mix)
                mark = lambda x: f"**{x:.4g}**" if x == best else f"{x:.4g}"
                print(f"| {which} | {b} | {c} | {mark(so)} | {mark(sf)} | {mark(mix)} | {mean[(which, ('int', b))]:.4g} | "
                      f"{mean[(which, ('int', b + 1))]:.4g} | {b + c / 64 + 0.5:.3f} |")


if __name__ == "__main__":
    main()
