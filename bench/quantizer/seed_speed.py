#!/usr/bin/env python3
"""Times the seed package's quantizer (PyPI turboquant==0.2.0, TurboQuantMSE on the torch CPU backend) for
bench/quantizer/seed_vs_ours.sh, with the protocol of examples/quantizer_speed.rs: n Gaussian float32 vectors
of one dimension (torch seed 0), one warm-up call, then `reps` timed calls of quantize and of dequantize; the
median wall time gives vectors/s. Writes {"rows": [one row]} as JSON to --json.

Usage: seed_speed.py --n N --dim D --bits B --reps R --threads T --json OUT
"""
import argparse
import json
import statistics
import time

import torch
from turboquant import TurboQuantMSE


def busy_fraction(seconds=1.0):
    """Share of all CPUs busy over `seconds` (from /proc/stat): how loaded the machine was before timing."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)
    idle0, all0 = sample()
    time.sleep(seconds)
    idle1, all1 = sample()
    return 1.0 - (idle1 - idle0) / max(all1 - all0, 1)


def median_time(fn, reps):
    fn()
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser()
    for name, default in (("--n", 65536), ("--dim", 128), ("--bits", 4), ("--reps", 5), ("--threads", 2)):
        ap.add_argument(name, type=int, default=default)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.randn(a.n, a.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    q = TurboQuantMSE(dim=a.dim, bits=a.bits, device="cpu")
    busy = busy_fraction()
    tq, (idx, norms) = median_time(lambda: q.quantize(x), a.reps)
    td, _ = median_time(lambda: q.dequantize(idx, norms), a.reps)
    row = {
        "algo": "MSE", "dim": a.dim, "bits": a.bits, "threads": a.threads,
        "quant_vec_per_s": a.n / tq, "dequant_vec_per_s": a.n / td,
        # what the seed keeps per vector: its index tensor (one element per coordinate) and its norm
        "bytes_per_vector_stored": idx.element_size() * a.dim + norms.element_size() * (norms.numel() // a.n),
        "cpu_busy_before": busy,
    }
    with open(a.json, "w") as f:
        json.dump({"rows": [row]}, f)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
