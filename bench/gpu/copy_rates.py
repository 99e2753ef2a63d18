#!/usr/bin/env python3
"""Device-to-device copy rates by several methods (2 GiB, read + write bytes counted: 2 * size / time),
each timed eagerly (CUDA events over 20 calls) and as a CUDA-graph replay of 20 calls; medians of 5; and the
streaming-read rate of a torch.sum over the same bytes. Usage: python3 copy_rates.py (torch only).

These are the floor bench/gpu/RESULTS.md quotes. They showed that `copy_` captured in a graph (a memcpy
node) runs far below the copy kernels, so bench_decode.py's copy bandwidth is the faster of an eager
`copy_` and a graph-timed elementwise copy kernel."""
import statistics

import torch

N = 2 << 30
x8 = torch.empty(N, dtype=torch.uint8, device="cuda")
y8 = torch.empty_like(x8)
x8.random_(0, 255)
x32, y32 = x8.view(torch.float32), y8.view(torch.float32)
x32.copy_(torch.randn(N // 4, device="cuda"))
x64, y64 = x8.view(torch.float64), y8.view(torch.float64)

methods = {
    "copy_ uint8 (cudaMemcpyAsync)": lambda: y8.copy_(x8),
    "copy_ float32 (cudaMemcpyAsync)": lambda: y32.copy_(x32),
    "mul(x, 1) float32 (elementwise kernel)": lambda: torch.mul(x32, 1.0, out=y32),
    "add(x, 0) float64 (elementwise kernel)": lambda: torch.add(x64, 0.0, out=y64),
    "neg float32 (elementwise kernel)": lambda: torch.neg(x32, out=y32),
}


def eager(fn, calls=20):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(calls):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / 1e3 / calls


def graphed(fn, calls=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    g.replay()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / 1e3 / calls


print(f"device {torch.cuda.get_device_name()}; torch {torch.__version__}; 2 GiB, GB/s = 2 * size / time", flush=True)
for name, fn in methods.items():
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    e = statistics.median(eager(fn) for _ in range(5))
    g = statistics.median(graphed(fn) for _ in range(5))
    print(f"  {name:42s} eager {2 * N / e / 1e9:6.0f} GB/s   graph {2 * N / g / 1e9:6.0f} GB/s", flush=True)
r = torch.empty((), device="cuda")
for _ in range(10):
    torch.sum(x32, dim=0, out=r)
e = statistics.median(eager(lambda: torch.sum(x32, dim=0, out=r)) for _ in range(5))
print(f"  {'sum float32 (read only; size / time)':42s} eager {N / e / 1e9:6.0f} GB/s", flush=True)
