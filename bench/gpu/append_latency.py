#!/usr/bin/env python3
"""Time of a decode step's append through the CUDA backend: tq_append_kv of TOKENS tokens (every kv head, K and V,
f16 input, the library's defaults: key centering on, Hadamard rotation), the median time per call over replays of
a CUDA graph of CALLS appends in a row (each to its own cells), so that launch gaps are those of an engine's graph.

Usage: python3 append_latency.py path/to/libturboquant.so [--hkv 8] [--d 128] [--bits 4] [--tokens 1] [--calls 64]
Prints one line: the library, the shape and the median microseconds per append (with the spread of the replays).
"""
import argparse
import ctypes
import os
import statistics
import sys

import torch

p = argparse.ArgumentParser()
p.add_argument("lib")
p.add_argument("--hkv", type=int, default=8)
p.add_argument("--d", type=int, default=128)
p.add_argument("--bits", type=int, default=4)
p.add_argument("--tokens", type=int, default=1)
p.add_argument("--calls", type=int, default=64)
p.add_argument("--reps", type=int, default=9)
args = p.parse_args()

# The Python bindings' declarations of the C API: of the repository this script is in, or $TQ_BINDINGS.
for cand in [os.environ.get("TQ_BINDINGS", ""),
             os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bindings", "python")]:
    if cand and os.path.isfile(os.path.join(cand, "turboquant", "_lib.py")):
        sys.path.insert(0, cand)
        break
from turboquant._lib import ContextHandle, Library, Strides  # noqa: E402

lib = Library(args.lib)
vp, sz = ctypes.c_void_p, ctypes.c_size_t


def check(st, what):
    if st != 0:
        raise RuntimeError(f"{what}: status {st}: {lib.tq_last_error_message().decode()}")


def stream():
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


prm = lib.tq_context_default_params()
prm.n_layers, prm.n_heads, prm.n_kv_heads, prm.head_dim = 1, 4 * args.hkv, args.hkv, args.d
prm.bits_k = prm.bits_v = args.bits
prm.dtype, prm.backend, prm.max_batch, prm.seed = 1, 1, 64, 7
ctx = ContextHandle()
check(lib.tq_context_new(ctypes.byref(prm), ctypes.byref(ctx)), "tq_context_new")
kr, vr = sz(), sz()
check(lib.tq_context_row_bytes(ctx, ctypes.byref(kr), ctypes.byref(vr)), "row_bytes")

n_tok, calls = args.tokens, args.calls
n_cells = n_tok * (calls + 1)
kst = torch.zeros(n_cells, kr.value, dtype=torch.uint8, device="cuda")
vst = torch.zeros(n_cells, vr.value, dtype=torch.uint8, device="cuda")
k_in = torch.randn(calls + 1, n_tok, args.hkv, args.d, device="cuda", dtype=torch.float16)
v_in = torch.randn(calls + 1, n_tok, args.hkv, args.d, device="cuda", dtype=torch.float16)
slots = torch.arange(n_cells, device="cuda", dtype=torch.int64).view(calls + 1, n_tok)
st_in = Strides(args.hkv * args.d * 2, args.d * 2)


def append(i):
    check(lib.tq_append_kv(ctx, 0, vp(kst.data_ptr()), vp(vst.data_ptr()), n_cells,
                           ctypes.cast(slots[i].data_ptr(), ctypes.POINTER(ctypes.c_int64)), n_tok,
                           vp(k_in[i].data_ptr()), ctypes.byref(st_in), vp(v_in[i].data_ptr()), ctypes.byref(st_in),
                           stream()), "append")


append(calls)  # the first append computes the centering means (not part of a decode step)
torch.cuda.synchronize()
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
g = torch.cuda.CUDAGraph()
with torch.cuda.stream(s):
    with torch.cuda.graph(g, stream=s):
        for i in range(calls):
            append(i)
torch.cuda.synchronize()
g.replay()
torch.cuda.synchronize()
times = []
for _ in range(args.reps):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    g.replay()
    b.record()
    b.synchronize()
    times.append(a.elapsed_time(b) * 1e3 / calls)
med = statistics.median(times)
print(f"{args.lib}: append of {n_tok} token(s), {args.hkv} kv heads, d={args.d}, {args.bits} bits: "
      f"{med:.2f} us per call (replays {min(times):.2f}-{max(times):.2f}), {torch.cuda.get_device_name()}")
lib.tq_context_free(ctx)
