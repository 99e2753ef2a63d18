#!/usr/bin/env python3
"""Decode/prefill attention of libturboquant's CUDA backend against PyTorch SDPA over an FP16 cache,
in one process on one GPU (the library is called through ctypes with torch tensors' device pointers
and torch's current stream).

Usage: python3 bench_decode.py path/to/libturboquant.so [--quick] [--out results.json]

Per case: median time per call from CUDA-graph replays (each graph runs the call on several
distinct buffer sets, so the working set exceeds the L2 cache), achieved GB/s of compressed bytes,
the device-to-device copy bandwidth measured in the same run, and the speed-up over FP16 SDPA.
"""
import argparse, ctypes, json, math, os, statistics, sys, time
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("lib")
p.add_argument("--quick", action="store_true")
p.add_argument("--out", default=None)
p.add_argument("--budget-s", type=float, default=420.0)
p.add_argument("--kernels", default="fast",
               help="decode kernels to time, comma-separated: fast (the default choice of the library), staged "
                    "(the general kernels: TQ_CUDA_DECODE=staged)")
p.add_argument("--repeat", type=int, default=1,
               help="repetitions of each decode case (fresh stores and contexts each; FP16 re-timed; medians printed)")
p.add_argument("--breakdown", action="store_true", help="per-kernel GPU times of one call (torch profiler)")
p.add_argument("--timeline", action="store_true",
               help="start and end of each kernel inside a call, from graph replays under the torch profiler")
p.add_argument("--decode-only", action="store_true")
p.add_argument("--prefill-only", action="store_true", help="only the prefill cases (and their FP16 SDPA times)")
p.add_argument("--prefill-cases", default=None, help="prefill cases hq/hkv/d/queries/prefix/bits;... instead of the standard set")
p.add_argument("--same-store", action="store_true",
               help="every sequence reads sequence 0's rows (they stay in L2): the kernel without HBM traffic")
p.add_argument("--cases", default=None, help="decode cases hq/hkv/d/batch/context/bits;... instead of the standard set")
p.add_argument("--profile-one", action="store_true",
               help="one eager decode call (32q/8kv, d=128, batch 16, 32K, 4 bits) for ncu, then exit")
p.add_argument("--profile-batch", type=int, default=16)
p.add_argument("--profile-kv", type=int, default=8)
args = p.parse_args()
T_START = time.monotonic()

# The Python bindings' declarations of the C API (bindings/python): of the repository this script is in,
# or of the one it is run from (a copy of this script beside the built library), or $TQ_BINDINGS.
for cand in [os.environ.get("TQ_BINDINGS", ""),
             os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bindings", "python"),
             os.path.join(os.getcwd(), "bindings", "python")]:
    if cand and os.path.isfile(os.path.join(cand, "turboquant", "_lib.py")):
        sys.path.insert(0, cand)
        break
from turboquant._lib import ContextHandle, Library, Strides  # noqa: E402

lib = Library(args.lib)  # checks the struct layouts and the ABI version against the library
vp, sz = ctypes.c_void_p, ctypes.c_size_t


def i64p(t):
    """An int64 tensor's device address as the int64_t* the C API takes."""
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_int64))


def check(st, what):
    if st != 0:
        raise RuntimeError(f"{what}: status {st}: {lib.tq_last_error_message().decode()}")


def stream():
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


def context(hq, hkv, d, bits, max_batch, kernel="fast"):
    if kernel == "staged":
        os.environ["TQ_CUDA_DECODE"] = "staged"
    else:
        os.environ.pop("TQ_CUDA_DECODE", None)
    prm = lib.tq_context_default_params()
    prm.n_layers, prm.n_heads, prm.n_kv_heads, prm.head_dim = 1, hq, hkv, d
    prm.bits_k = prm.bits_v = bits
    prm.dtype, prm.backend, prm.max_batch, prm.seed = 1, 1, max_batch, 7
    ctx = ContextHandle()
    check(lib.tq_context_new(ctypes.byref(prm), ctypes.byref(ctx)), "tq_context_new")
    kr, vr = sz(), sz()
    check(lib.tq_context_row_bytes(ctx, ctypes.byref(kr), ctypes.byref(vr)), "row_bytes")
    return ctx, kr.value, vr.value


def graph_time(fn, n_sets, reps=7):
    """Median seconds per call: a CUDA graph of `per` calls (cycling n_sets buffer sets) replayed `reps` times."""
    per = max(n_sets, 4)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(2):
            fn(i % n_sets)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(per):
            fn(i % n_sets)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / per)
    del g
    return statistics.median(times), (max(times) - min(times)) / statistics.median(times)


def copy_bandwidth():
    """Device-to-device copy rate (read + write bytes per second) of 2 GiB: the faster of cudaMemcpyAsync
    (torch copy_) timed eagerly and an elementwise copy kernel (x * 1) timed as graph replays. Not copy_
    inside a graph: there the memcpy node runs at ~2.8 TB/s on an H200 against ~4.25 TB/s for both of these
    (bench/gpu/copy_rates.py)."""
    n = 2 << 30
    x = torch.empty(n // 4, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    x.uniform_()
    for _ in range(50):  # let the clocks ramp up
        y.copy_(x)
    times = []
    for _ in range(7):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(10):
            y.copy_(x)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / 10)
    t_memcpy = statistics.median(times)
    t_kernel, _ = graph_time(lambda i: torch.mul(x, 1.0, out=y), 1)
    return 2 * n / min(t_memcpy, t_kernel)


def breakdown(fn, n=20):
    """Average GPU time per call of each kernel fn launches (torch profiler, eager calls)."""
    from torch.profiler import profile, ProfilerActivity
    fn(0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn(0)
        torch.cuda.synchronize()
    tot = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            t = getattr(e, "device_time", None)
            t = e.cuda_time if t is None else t
            tot[e.name] = tot.get(e.name, 0.0) + t / n
    print("    per call: " + ", ".join(f"{k} {v:.1f} us" for k, v in sorted(tot.items(), key=lambda kv: -kv[1])), flush=True)


def timeline(fn, calls=8):
    """Kernel start/end times (us) relative to the first kernel of each call, medians over `calls` calls of a
    replayed CUDA graph (the same launch chain the timings use; graph replay leaves no host gaps)."""
    from torch.profiler import profile, ProfilerActivity
    g = torch.cuda.CUDAGraph()
    fn(0)
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn(0)
    g.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        g.replay()
        torch.cuda.synchronize()
    ev = sorted(((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda x: x[0])
    del g
    names = []
    for _, _, n in ev:
        if n in names:
            break
        names.append(n)
    k = len(names)
    if k == 0 or len(ev) < k * calls:
        print(f"    timeline: {len(ev)} kernel records for {calls} calls (profiler saw no graph kernels?)", flush=True)
        return
    per = [ev[i * k:(i + 1) * k] for i in range(calls)]
    starts = [c[0][0] for c in per]
    period = statistics.median(b - a for a, b in zip(starts, starts[1:]))
    parts = []
    for j, n in enumerate(names):
        s0 = statistics.median(c[j][0] - c[0][0] for c in per)
        e0 = statistics.median(c[j][1] - c[0][0] for c in per)
        parts.append(f"{n} {s0:.1f}-{e0:.1f}")
    print(f"    timeline (us from the call's first kernel start; call period {period:.1f}): " + ", ".join(parts), flush=True)


def read_bandwidth():
    """Bytes read per second by a streaming reduction over 2 GiB (torch sum of f32): a read-only ceiling."""
    x = torch.empty(1 << 29, dtype=torch.float32, device="cuda")
    x.uniform_()
    out = torch.empty((), dtype=torch.float32, device="cuda")
    for _ in range(20):
        torch.sum(x, dim=0, out=out)
    t, _ = graph_time(lambda i: torch.sum(x, dim=0, out=out), 1)
    return x.numel() * 4 / t


from torch.nn.attention import SDPBackend, sdpa_kernel


def sdpa(q, k, v, scale):
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)


def run_decode(hq, hkv, d, batch, ctxlen, bits_list, copy_bw, results):
    scale = 1.0 / math.sqrt(d)
    fp16_bytes = batch * ctxlen * hkv * d * 2 * 2
    L2 = 256 << 20
    n_sets_f = max(1, min(4, math.ceil(L2 / fp16_bytes)))
    ks = [torch.randn(batch, hkv, ctxlen, d, device="cuda", dtype=torch.float16) for _ in range(n_sets_f)]
    vs = [torch.randn(batch, hkv, ctxlen, d, device="cuda", dtype=torch.float16) for _ in range(n_sets_f)]
    qs = [torch.randn(batch, hq, 1, d, device="cuda", dtype=torch.float16) for _ in range(n_sets_f)]
    ref = sdpa(qs[0], ks[0], vs[0], scale)
    t_fp16, spread_f = graph_time(lambda i: sdpa(qs[i], ks[i], vs[i], scale), n_sets_f)
    kernels = args.kernels.split(",")
    fp16_times = {0: t_fp16}
    for rep, bits, kernel in [(r, b, k) for b in bits_list for r in range(args.repeat) for k in kernels]:
        if time.monotonic() - T_START > args.budget_s:
            print("budget exhausted; stopping", flush=True)
            return False
        if rep not in fp16_times:  # each repetition: FP16 again, then each kernel with fresh stores
            fp16_times[rep], spread_f = graph_time(lambda i: sdpa(qs[i], ks[i], vs[i], scale), n_sets_f)
        t_fp16 = fp16_times[rep]
        ctx, kr, vr = context(hq, hkv, d, bits, 2048, kernel)
        comp = batch * ctxlen * (kr + vr)
        n_sets = max(1, min(8, math.ceil(L2 / comp)))
        slots = torch.arange(ctxlen, device="cuda", dtype=torch.int64)
        st_in = Strides(d * 2, ctxlen * d * 2)
        sets = []
        t_app = None
        for si in range(n_sets):
            kst = torch.empty(batch, ctxlen, kr, dtype=torch.uint8, device="cuda")
            vst = torch.empty(batch, ctxlen, vr, dtype=torch.uint8, device="cuda")
            src = si % n_sets_f
            for b in range(batch):
                def app(b=b):
                    check(lib.tq_append_kv(ctx, 0, vp(kst[b].data_ptr()), vp(vst[b].data_ptr()), ctxlen, i64p(slots),
                                           ctxlen, vp(ks[src][b].data_ptr()), ctypes.byref(st_in), vp(vs[src][b].data_ptr()),
                                           ctypes.byref(st_in), stream()), "append")
                if si == 0 and b == 0 and t_app is None:
                    torch.cuda.synchronize()
                    a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record(); app(); e.record(); e.synchronize()
                    t_app = a.elapsed_time(e) / 1e3
                else:
                    app()
            sel = [0] * batch if args.same_store else list(range(batch))
            kp = torch.tensor([kst[b].data_ptr() for b in sel], dtype=torch.int64, device="cuda")
            vpp = torch.tensor([vst[b].data_ptr() for b in sel], dtype=torch.int64, device="cuda")
            lens = torch.full((batch,), ctxlen, dtype=torch.int64, device="cuda")
            out = torch.empty(batch, hq, d, dtype=torch.float16, device="cuda")
            sets.append((kst, vst, kp, vpp, lens, out, qs[src]))
        torch.cuda.synchronize()

        def ours(i):
            kst, vst, kp, vpp, lens, out, q = sets[i]
            check(lib.tq_attend_batch(ctx, 0, batch, vp(q.data_ptr()), 1, None, hq * d * 2, vp(kp.data_ptr()),
                                      vp(vpp.data_ptr()), i64p(lens), ctxlen, None, 0, 0, 0, scale,
                                      vp(out.data_ptr()), None, hq * d * 2, stream()), "attend_batch")
        ours(0)
        torch.cuda.synchronize()
        out0 = sets[0][5].float()
        r = ref[:, :, 0, :].float()
        err = ((out0 - r).norm() / r.norm()).item()
        t, spread = graph_time(ours, n_sets)
        if args.breakdown:
            breakdown(ours)
        if args.timeline:
            timeline(ours)
        row = dict(kernel=kernel, q_heads=hq, kv_heads=hkv, d=d, batch=batch, context=ctxlen, bits=bits, t_us=t * 1e6,
                   t_fp16_us=t_fp16 * 1e6, speedup=t_fp16 / t, comp_bytes=comp, gbps=comp / t / 1e9,
                   frac_copy=comp / t / copy_bw, frac_read=comp / t / read_bw, fp16_gbps=fp16_bytes / t_fp16 / 1e9, spread=spread,
                   spread_fp16=spread_f, rel_err_vs_fp16=err, buffer_sets=n_sets,
                   append_vectors_per_s=(ctxlen * hkv * 2 / t_app) if t_app else None, repetition=rep)
        results.append(row)
        print(f"{kernel:>6} {hq:>3}q/{hkv}kv d={d} B={batch:<3} ctx={ctxlen:<6} {bits}b: {t*1e6:9.1f} us  fp16 {t_fp16*1e6:9.1f} us"
              f"  x{t_fp16/t:5.2f}  {comp/t/1e9:7.0f} GB/s ({100*comp/t/copy_bw:4.0f}% copy, {100*comp/t/read_bw:4.0f}% read)  err-vs-fp16 {err:.3f}"
              f"  append {row['append_vectors_per_s']/1e6 if t_app else 0:.0f} M vec/s", flush=True)
        del sets
        lib.tq_context_free(ctx)
        torch.cuda.empty_cache()
        if args.repeat > 1 and rep == args.repeat - 1:
            rows = [r for r in results if (r["q_heads"], r["kv_heads"], r["d"], r["batch"], r["context"], r["bits"], r["kernel"])
                    == (hq, hkv, d, batch, ctxlen, bits, kernel)]
            tm, fm = statistics.median(r["t_us"] for r in rows), statistics.median(r["t_fp16_us"] for r in rows)
            print(f"{kernel:>7} {hq:>3}q/{hkv}kv d={d} B={batch:<3} ctx={ctxlen:<6} {bits}b: median of {len(rows)} repetitions "
                  f"{tm:9.1f} us (range {min(r['t_us'] for r in rows):.1f}-{max(r['t_us'] for r in rows):.1f})  fp16 {fm:9.1f} us  "
                  f"x{fm / tm:5.2f}", flush=True)
    del ks, vs, qs
    torch.cuda.empty_cache()
    return True


def run_prefill(hq, hkv, d, n_q, prefix, bits, results):
    scale = 1.0 / math.sqrt(d)
    k = torch.randn(1, hkv, prefix, d, device="cuda", dtype=torch.float16)
    v = torch.randn(1, hkv, prefix, d, device="cuda", dtype=torch.float16)
    q = torch.randn(1, hq, n_q, d, device="cuda", dtype=torch.float16)
    t_fp16, _ = graph_time(lambda i: sdpa(q, k, v, scale), 1)
    ref = sdpa(q, k, v, scale)
    ctx, kr, vr = context(hq, hkv, d, bits, 2048)
    kst = torch.empty(prefix, kr, dtype=torch.uint8, device="cuda")
    vst = torch.empty(prefix, vr, dtype=torch.uint8, device="cuda")
    slots = torch.arange(prefix, device="cuda", dtype=torch.int64)
    st_in = Strides(d * 2, prefix * d * 2)
    check(lib.tq_append_kv(ctx, 0, vp(kst.data_ptr()), vp(vst.data_ptr()), prefix, i64p(slots), prefix,
                           vp(k.data_ptr()), ctypes.byref(st_in), vp(v.data_ptr()), ctypes.byref(st_in), stream()), "append")
    qt = q[0].transpose(0, 1).contiguous()  # [n_q][hq][d]
    out = torch.empty(n_q, hq, d, dtype=torch.float16, device="cuda")

    def ours(i):
        check(lib.tq_attend(ctx, 0, vp(qt.data_ptr()), n_q, None, vp(kst.data_ptr()), vp(vst.data_ptr()), prefix, None, 0, 0,
                            scale, vp(out.data_ptr()), None, stream()), "attend")
    ours(0)
    torch.cuda.synchronize()
    r = ref[0].transpose(0, 1).float()
    err = ((out.float() - r).norm() / r.norm()).item()
    t, _ = graph_time(ours, 1)
    flops = 4 * n_q * hq * prefix * d
    results.append(dict(kind="prefill", q_heads=hq, kv_heads=hkv, d=d, n_q=n_q, prefix=prefix, bits=bits, t_us=t * 1e6,
                        t_fp16_us=t_fp16 * 1e6, speedup=t_fp16 / t, tflops=flops / t / 1e12, rel_err_vs_fp16=err))
    print(f"prefill {n_q} queries over {prefix} ({hq}q/{hkv}kv d={d} {bits}b): {t*1e6:9.1f} us ({flops/t/1e12:.0f} TFLOP/s)"
          f"  fp16 SDPA {t_fp16*1e6:9.1f} us  x{t_fp16/t:.2f}  err-vs-fp16 {err:.3f}", flush=True)
    lib.tq_context_free(ctx)


torch.manual_seed(0)
if args.profile_one:
    hq, hkv, d, batch, ctxlen = 32, args.profile_kv, 128, args.profile_batch, 32768
    ctx, kr, vr = context(hq, hkv, d, 4, 2048, args.kernels.split(",")[0])
    k = torch.randn(batch, hkv, ctxlen, d, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.float16)
    kst = torch.empty(batch, ctxlen, kr, dtype=torch.uint8, device="cuda")
    vst = torch.empty(batch, ctxlen, vr, dtype=torch.uint8, device="cuda")
    slots = torch.arange(ctxlen, device="cuda", dtype=torch.int64)
    st_in = Strides(d * 2, ctxlen * d * 2)
    for b in range(batch):
        check(lib.tq_append_kv(ctx, 0, vp(kst[b].data_ptr()), vp(vst[b].data_ptr()), ctxlen, i64p(slots), ctxlen,
                               vp(k[b].data_ptr()), ctypes.byref(st_in), vp(v[b].data_ptr()), ctypes.byref(st_in), stream()), "append")
    kp = torch.tensor([kst[b].data_ptr() for b in range(batch)], dtype=torch.int64, device="cuda")
    vpp = torch.tensor([vst[b].data_ptr() for b in range(batch)], dtype=torch.int64, device="cuda")
    lens = torch.full((batch,), ctxlen, dtype=torch.int64, device="cuda")
    out = torch.empty(batch, hq, d, dtype=torch.float16, device="cuda")
    for _ in range(3):
        check(lib.tq_attend_batch(ctx, 0, batch, vp(q.data_ptr()), 1, None, hq * d * 2, vp(kp.data_ptr()), vp(vpp.data_ptr()),
                                  i64p(lens), ctxlen, None, 0, 0, 0, 1 / math.sqrt(d), vp(out.data_ptr()), None,
                                  hq * d * 2, stream()), "attend_batch")
    torch.cuda.synchronize()
    print("profiled decode calls done", flush=True)
    sys.exit(0)
dev = torch.cuda.get_device_name()
copy_bw = copy_bandwidth()
read_bw = read_bandwidth()
print(f"device {dev}; torch {torch.__version__}; device-to-device copy {copy_bw/1e9:.0f} GB/s (read+write); "
      f"streaming read (torch.sum) {read_bw/1e9:.0f} GB/s", flush=True)
results = []
if args.quick:
    decode = [(32, 8, 128, 16, 32768, [4]), (32, 8, 128, 1, 32768, [4]), (32, 4, 128, 1, 32768, [4]),
              (32, 4, 128, 64, 32768, [4]), (32, 8, 128, 64, 32768, [2])]
    prefill = [(32, 8, 128, 2048, 32768, 4)]
else:
    decode = [(32, 8, 128, 16, 32768, [4, 3, 2]), (32, 8, 128, 1, 32768, [4, 3, 2]),
              (32, 4, 128, 1, 32768, [4, 3, 2]), (32, 4, 128, 64, 32768, [4, 3, 2])]
    for b in (1, 4, 16, 64):
        for L in (1024, 8192, 32768, 131072):
            if (b, L) not in ((16, 32768), (1, 32768)):
                decode.append((32, 8, 128, b, L, [4, 3, 2]))
    prefill = [(32, 8, 128, 512, 32768, 4), (32, 8, 128, 2048, 32768, 4)]
if args.cases:
    decode = []
    for c in args.cases.split(";"):
        hq_, hkv_, d_, b_, L_, bits_ = (int(x) for x in c.split("/"))
        decode.append((hq_, hkv_, d_, b_, L_, [bits_]))
if args.prefill_cases:
    prefill = [tuple(int(x) for x in c.split("/")) for c in args.prefill_cases.split(";")]
if args.prefill_only:
    decode = []
for pf in [] if args.decode_only else prefill:
    run_prefill(*pf, results)
for case in decode:
    if not run_decode(*case, copy_bw, results):
        break
meta = dict(device=dev, torch=torch.__version__, copy_gbps=copy_bw / 1e9, read_gbps=read_bw / 1e9, date=time.strftime("%Y-%m-%d"),
            command="bench_decode.py " + " ".join(a.rsplit("/", 1)[-1] for a in sys.argv[1:]))
if args.out:
    json.dump(dict(meta=meta, results=results), open(args.out, "w"), indent=1)
print("done in %.0f s" % (time.monotonic() - T_START), flush=True)
