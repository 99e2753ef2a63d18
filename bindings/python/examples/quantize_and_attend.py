"""Quantize and dequantize vectors; build a compressed KV cache, append, attend.

    TURBOQUANT_LIB=target/release/libturboquant.so python bindings/python/examples/quantize_and_attend.py
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import turboquant as tq  # noqa: E402

rng = np.random.default_rng(0)

# 1. Vectors: 1000 of dimension 128 at 4 bits.
x = rng.standard_normal((1000, 128)).astype(np.float32)
with tq.Quantizer(dim=128, bits=4) as q:
    codes, scales = q.quantize(x)
    x_hat = q.dequantize(codes, scales)
    mse = (((x - x_hat) ** 2).sum(1) / (x ** 2).sum(1)).mean()
    print(f"quantizer: {q.code_bytes} code bytes + {2 * q.scale_count} scale bytes per vector "
          f"(float32: {4 * 128}); normalised MSE {mse:.5f}, expected {q.expected_mse:.5f}")

# 2. A KV cache: one layer, 8 query heads sharing 2 kv heads, head_dim 64.
n_heads, n_kv_heads, head_dim, n_tokens = 8, 2, 64, 500
with tq.Context(n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                bits_k=4, bits_v=4) as ctx, \
        tq.Cache(ctx, max_tokens=1024, residual_window=32) as cache:
    k = rng.standard_normal((n_tokens, n_kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((n_tokens, n_kv_heads, head_dim)).astype(np.float32)
    cache.append(0, 0, k, v)                       # layer 0, sequence 0
    query = rng.standard_normal((1, n_heads, head_dim)).astype(np.float32)
    out = cache.attend(0, 0, query)                # the query of the last position

    # Exact attention over the uncompressed K/V, for comparison.
    ref = np.empty_like(out)
    for h in range(n_heads):
        s = k[:, h // (n_heads // n_kv_heads)] @ query[0, h] / np.sqrt(head_dim)
        p = np.exp(s - s.max())
        ref[0, h] = (p / p.sum()) @ v[:, h // (n_heads // n_kv_heads)]
    mem = cache.memory_usage()
    print(f"cache: {mem.n_tokens} tokens, {mem.n_compressed} compressed, {mem.bytes_used} bytes "
          f"(fp16 would be {mem.bytes_fp16}); attention relative error vs uncompressed "
          f"{np.linalg.norm(out - ref) / np.linalg.norm(ref):.4f}")
