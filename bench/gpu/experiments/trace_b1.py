#!/usr/bin/env python3
"""Phase times inside the fast decode kernel at batch 1 (32q/8kv, d=128, 4 bits, context argv[2], default 32K).

Needs a trace build: apply v15_trace_tiles.diff (this folder; made against e2e4a25, applies to the v19 kernels;
v9_trace_phases.diff is its 8-slot predecessor
for v9) and build the library; its decode kernel writes per CTA (thread 0) the globaltimer at entry, clock64
offsets after the table fill + barrier, the dependency wait, the first item's query loads, the arrival of
each of the first four tiles, the item loop and the partial stores, and the globaltimer at exit (12 u64),
after the partials in use; with TQ_TRACE_SKIP_COMBINE=1 the host copies them into the
output tensor in place of the combine launch. Usage: python3 trace_b1.py path/to/libturboquant.so [context]. Prints medians/maxima over the CTAs
of each phase's end (us from CTA entry), with the L2 warm and after writing 512 MB (cold)."""
import ctypes, math, os, statistics, sys
import torch
os.environ["TQ_TRACE_SKIP_COMBINE"] = "1"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # bench/gpu (or beside it)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tq_ctypes import Strides, open_library  # noqa: E402
lib = open_library(sys.argv[1])
ctxlen = int(sys.argv[2]) if len(sys.argv) > 2 else 32768
vp, sz = ctypes.c_void_p, ctypes.c_size_t
hq, hkv, d, batch = 32, 8, 128, 1
prm = lib.tq_context_default_params()
prm.n_layers, prm.n_heads, prm.n_kv_heads, prm.head_dim = 1, hq, hkv, d
prm.bits_k = prm.bits_v = 4
prm.dtype, prm.backend, prm.max_batch, prm.seed = 1, 1, 2048, 7
ctx = vp(); assert lib.tq_context_new(ctypes.byref(prm), ctypes.byref(ctx)) == 0
kr, vr = sz(), sz(); lib.tq_context_row_bytes(ctx, ctypes.byref(kr), ctypes.byref(vr))
st = lambda: vp(torch.cuda.current_stream().cuda_stream)
k = torch.randn(hkv, ctxlen, d, device="cuda", dtype=torch.float16); v = torch.randn_like(k)
q = torch.randn(batch, hq, d, device="cuda", dtype=torch.float16)
kst = torch.empty(ctxlen, kr.value, dtype=torch.uint8, device="cuda"); vst = torch.empty(ctxlen, vr.value, dtype=torch.uint8, device="cuda")
slots = torch.arange(ctxlen, device="cuda", dtype=torch.int64); s_in = Strides(d * 2, ctxlen * d * 2)
assert lib.tq_append_kv(ctx, 0, vp(kst.data_ptr()), vp(vst.data_ptr()), ctxlen, vp(slots.data_ptr()), ctxlen, vp(k.data_ptr()),
                        ctypes.byref(s_in), vp(v.data_ptr()), ctypes.byref(s_in), st()) == 0
kp = torch.tensor([kst.data_ptr()], dtype=torch.int64, device="cuda"); vpp = torch.tensor([vst.data_ptr()], dtype=torch.int64, device="cuda")
lens = torch.full((batch,), ctxlen, dtype=torch.int64, device="cuda")
out = torch.zeros(3 * batch, hq, d, dtype=torch.float16, device="cuda")  # room for 12 u64 per CTA (256 rows of 12)
big = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
def call():
    assert lib.tq_attend_batch(ctx, 0, batch, vp(q.data_ptr()), 1, None, hq * d * 2, vp(kp.data_ptr()), vp(vpp.data_ptr()),
                               vp(lens.data_ptr()), ctxlen, None, 0, 0, 0, 1 / math.sqrt(d), vp(out.data_ptr()), None, hq * d * 2, st()) == 0
for label, flush in [("warm L2", False), ("cold L2 (512 MB written before)", True)]:
    rows = []
    for rep in range(5):
        call(); call()
        torch.cuda.synchronize()
        if flush:
            big.fill_(rep)
        out.zero_()
        call(); torch.cuda.synchronize()
        t = out.view(torch.int64).view(-1, 12).cpu().tolist()
        ctas = [r for r in t if r[0] != 0]
        rows.append(ctas)
    # clock rate from entry..end (ns) vs cycles to the end
    print(f"--- {label}, context {ctxlen}: {len(rows[0])} CTAs", flush=True)
    names = ["table+sync", "dependency wait", "item queries loaded", "tile 0 ready", "tile 1 ready", "tile 2 ready", "tile 3 ready",
             "item loop end", "partial stores end", "CTA barrier"]
    for ctas in rows:
        t0 = min(r[0] for r in ctas)
        ghz = statistics.median(r[10] / (r[11] - r[0]) for r in ctas if r[11] > r[0])  # cycles / ns, entry to end
        us = lambda c: c / ghz / 1e3
        parts = [f"start +{statistics.median((r[0]-t0)/1e3 for r in ctas):.2f}(max {max((r[0]-t0)/1e3 for r in ctas):.2f})"]
        for i, n in enumerate(names):
            vals = [us(r[i + 1]) for r in ctas]
            parts.append(f"{n} {statistics.median(vals):.2f}/{max(vals):.2f}")
        ends = [(r[11] - t0) / 1e3 for r in ctas]
        parts.append(f"end {statistics.median(ends):.2f}/{max(ends):.2f}")
        print(f"  {ghz:.2f} GHz; us from CTA entry, median/max: " + ", ".join(parts), flush=True)
