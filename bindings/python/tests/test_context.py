"""KV codec through the bindings: slot mode and the owned cache, against float64 numpy references."""

import numpy as np
import pytest

import turboquant as tq

N_LAYERS, N_HEADS, N_KV, D = 2, 8, 2, 64
SEED = 11


def softmax_attention(q, k, v, mask, scale):
    """float64 reference: q [n_q][H][d], k/v [n][H_kv][d], additive mask [n_q][n] (None = none)."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    group = q.shape[1] // k.shape[1]
    out = np.zeros_like(q)
    for h in range(q.shape[1]):
        s = q[:, h] @ k[:, h // group].T * scale
        if mask is not None:
            s = s + mask
        s -= s.max(1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(1, keepdims=True)
        out[:, h] = p @ v[:, h // group]
    return out


def causal_mask(n_q, n):
    m = np.zeros((n_q, n), np.float32)
    for i in range(n_q):
        m[i, n - n_q + i + 1:] = -np.inf
    return m


def make_kv(rng, n, n_q):
    k = rng.standard_normal((n, N_KV, D)).astype(np.float32)
    v = rng.standard_normal((n, N_KV, D)).astype(np.float32)
    q = rng.standard_normal((n_q, N_HEADS, D)).astype(np.float32)
    return q, k, v


def rel_err(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture
def ctx():
    with tq.Context(N_LAYERS, N_HEADS, N_KV, D, bits_k=4, bits_v=4, seed=SEED) as c:
        yield c


def dequantized_keys(ctx, k_store, bits):
    """Layer 0's K rows decoded through tq_dequantize: the codec's layer-0 K quantizer is the
    quantizer of index 0 of the seed, i.e. tq_quantizer_new with the same seed (row format: codes
    of every head, padding to an even offset, one bf16 scale per head)."""
    code_bytes = (D * bits + 7) // 8
    scales_at = N_KV * code_bytes + (N_KV * code_bytes) % 2
    assert ctx.k_row_bytes == scales_at + 2 * N_KV
    with tq.Quantizer(dim=D, bits=bits, rotation="auto", seed=SEED) as q:
        heads = []
        for h in range(N_KV):
            codes = np.ascontiguousarray(k_store[:, h * code_bytes:(h + 1) * code_bytes])
            scales = np.ascontiguousarray(
                k_store[:, scales_at + 2 * h:scales_at + 2 * h + 2]).view(np.uint16)
            heads.append(q.dequantize(codes, scales))
    return np.stack(heads, axis=1)


def dequantized_values(ctx, layer, k_store, v_store):
    """V rows as the library reconstructs them: attention with a mask that leaves one cell visible
    returns exactly that cell's value row (softmax of a single score is 1)."""
    n = k_store.shape[0]
    q = np.zeros((n, N_HEADS, D), np.float32)
    mask = np.full((n, n), -np.inf, np.float32)
    np.fill_diagonal(mask, 0)
    out = ctx.attend(layer, q, k_store, v_store, mask=mask)
    group = N_HEADS // N_KV
    return out[:, ::group]


def test_row_bytes(ctx):
    # 4-bit codes of 64 coordinates are 32 bytes, plus one bf16 scale, per kv head.
    assert ctx.k_row_bytes == ctx.v_row_bytes == N_KV * (32 + 2)


def test_slot_attention_equals_reference_over_dequantized_rows(ctx):
    rng = np.random.default_rng(0)
    n, n_q = 96, 5
    q, k, v = make_kv(rng, n, n_q)
    k_store, v_store = ctx.new_stores(n)
    slots = rng.permutation(n).astype(np.int64)  # token i -> cell slots[i]
    ctx.append_kv(0, k_store, v_store, slots, k, v)
    mask = np.where(rng.random((n_q, n)) < 0.3, -np.inf, rng.standard_normal((n_q, n))).astype(np.float32)
    out = ctx.attend(0, q, k_store, v_store, mask=mask, scale=0.125)

    k_hat = dequantized_keys(ctx, k_store, 4)
    v_hat = dequantized_values(ctx, 0, k_store, v_store)
    ref = softmax_attention(q, k_hat, v_hat, mask, 0.125)
    # tq_attend is exact attention over the reconstructed cache: float32 rounding only.
    assert rel_err(out, ref) < 1e-5
    # The decoded keys are the compressed inputs at the codebook's accuracy (cells -> tokens). With
    # key centering (the default) the rows hold k - mean, the mean taken over tokens 1..n of the
    # layer's first append (token 0, an engine's BOS / sink row, left out) in float64.
    mean_k = k[1:].astype(np.float64).mean(axis=0).astype(np.float32)
    key_mse = ((k_hat[slots] + mean_k - k) ** 2).sum(-1) / (k ** 2).sum(-1)
    assert key_mse.mean() == pytest.approx(0.0093, rel=0.15)
    # The value rows (read back through attend, above) against the inputs, independently of attend:
    # uncentred 4-bit values at the codebook's accuracy, 0.00913 at d = 64 (the SciPy oracle; 192
    # vectors, whose mean has a standard error of ~1.5 %: ±15 %).
    value_mse = ((v_hat[slots] - v) ** 2).sum(-1) / (v ** 2).sum(-1)
    assert value_mse.mean() == pytest.approx(0.00913, rel=0.15)


def test_dequantize_rows_are_what_attend_attends(ctx):
    """tq_dequantize_rows: keys equal the quantizer API's decoding plus the key mean (float32
    rounding), values the one-visible-cell attention rows, attention over both the library's; the
    two-share form gives the same rows."""
    rng = np.random.default_rng(3)
    n, n_q = 80, 4
    q, k, v = make_kv(rng, n, n_q)
    k = k + 3.0  # an offset, so that the key mean matters
    k_store, v_store = ctx.new_stores(n)
    ctx.append_kv(0, k_store, v_store, np.arange(n, dtype=np.int64), k, v)
    kd = ctx.dequantize_rows(0, k_store)
    vd = ctx.dequantize_rows(0, v_store, values=True)
    assert kd.shape == (n, N_KV, D) and kd.dtype == np.float32
    mean_k = k[1:].astype(np.float64).mean(axis=0).astype(np.float32)
    assert np.abs(kd - (dequantized_keys(ctx, k_store, 4) + mean_k)).max() < 1e-5 * np.abs(kd).max()
    assert np.abs(vd - dequantized_values(ctx, 0, k_store, v_store)).max() < 1e-5 * np.abs(vd).max()
    out = ctx.attend(0, q, k_store, v_store, scale=0.125)
    assert rel_err(out, softmax_attention(q, kd, vd, None, 0.125)) < 1e-5
    halves = np.full((n, N_KV, D), np.nan, np.float32)
    for ith in range(2):
        ctx.dequantize_rows(0, v_store, values=True, out=halves, part=(ith, 2))
    assert np.array_equal(halves, vd)
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        ctx.dequantize_rows(5, k_store)


def test_slot_attention_against_uncompressed_kv(ctx):
    """Against exact attention over the original K/V. With Gaussian q, k, v and scale 1/√d the
    score errors have variance ε_k and the value errors relative variance ε_v (ε = the codebook's
    expected MSE), so to first order ‖Δout‖/‖out‖ ≈ √(ε_k + ε_v): ≈ 0.136 at 4 bits."""
    rng = np.random.default_rng(1)
    n, n_q = 200, 16
    q, k, v = make_kv(rng, n, n_q)
    k_store, v_store = ctx.new_stores(n)
    ctx.append_kv(1, k_store, v_store, np.arange(n), k, v)
    out = ctx.attend(1, q, k_store, v_store)
    ref = softmax_attention(q, k, v, None, 1 / np.sqrt(D))
    with tq.Quantizer(dim=D, bits=4) as qz:
        eps = qz.expected_mse
    predicted = np.sqrt(2 * eps)
    errs = [rel_err(out[i, h], ref[i, h]) for i in range(n_q) for h in range(N_HEADS)]
    assert 0.5 * predicted < np.mean(errs) < 1.5 * predicted, (np.mean(errs), predicted)


def test_parts_equal_whole(ctx):
    rng = np.random.default_rng(2)
    n, n_q, nth = 40, 3, 3
    q, k, v = make_kv(rng, n, n_q)
    ks1, vs1 = ctx.new_stores(n)
    ks2, vs2 = ctx.new_stores(n)
    ctx.append_kv(0, ks1, vs1, np.arange(n), k, v)
    for ith in range(nth):
        ctx.append_kv(0, ks2, vs2, np.arange(n), k, v, part=(ith, nth))
    assert np.array_equal(ks1, ks2) and np.array_equal(vs1, vs2)
    whole = ctx.attend(0, q, ks1, vs1)
    out = np.zeros_like(whole)
    for ith in range(nth):
        ctx.attend(0, q, ks1, vs1, out=out, part=(ith, nth))
    np.testing.assert_array_equal(out, whole)


def test_strided_inputs_and_torch_cpu_tensors(ctx):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    n, n_q = 30, 4
    q, k, v = make_kv(rng, n, n_q)
    ks, vs = ctx.new_stores(n)
    # K/V as [heads][tokens][d] transposed views: strides, not packed.
    k_t = np.ascontiguousarray(k.transpose(1, 0, 2)).transpose(1, 0, 2)
    assert not k_t.flags.c_contiguous
    ctx.append_kv(0, ks, vs, np.arange(n), k_t, v)
    ks2, vs2 = ctx.new_stores(n)
    ctx.append_kv(0, ks2, vs2, np.arange(n), torch.from_numpy(k), torch.from_numpy(v))
    assert np.array_equal(ks, ks2)
    out_np = ctx.attend(0, q, ks, vs)
    out_t = ctx.attend(0, torch.from_numpy(q), torch.from_numpy(ks), torch.from_numpy(vs))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_t.numpy(), out_np)


def test_slot_mode_errors(ctx):
    rng = np.random.default_rng(4)
    q, k, v = make_kv(rng, 4, 1)
    ks, vs = ctx.new_stores(4)
    with pytest.raises(tq.TurboQuantError) as e:
        ctx.append_kv(0, ks, vs, np.array([0, 1, 1, 2]), k, v)   # duplicate slot
    assert e.value.function == "tq_append_kv" and "slot" in e.value.message
    with pytest.raises(tq.TurboQuantError, match="4"):
        ctx.append_kv(0, ks, vs, np.array([0, 1, 2, 4]), k, v)   # cell out of range
    bad = k.copy()
    bad[1, 0, 3] = np.inf
    with pytest.raises(tq.NonFiniteError):
        ctx.append_kv(0, ks, vs, np.arange(4), bad, v)
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        ctx.append_kv(2, ks, vs, np.arange(4), k, v)
    with pytest.raises(TypeError, match="k must have dtype float32"):
        ctx.append_kv(0, ks, vs, np.arange(4), k.astype(np.float16), v)
    with pytest.raises(ValueError, match=r"q must have shape \(n, 8, 64\)"):
        ctx.attend(0, k, ks, vs)
    with pytest.raises(ValueError, match="attend_batch is for CUDA contexts"):
        ctx.attend_batch(0, q, None, None, None, max_cells=4)


def test_context_state_round_trip():
    rng = np.random.default_rng(5)
    q, k, v = make_kv(rng, 20, 2)
    k += 3.0  # a constant component that centering removes
    with tq.Context(1, N_HEADS, N_KV, D, seed=1, centering=True) as a, \
            tq.Context(1, N_HEADS, N_KV, D, seed=1, centering=True) as b:
        ks, vs = a.new_stores(20)
        a.append_kv(0, ks, vs, np.arange(20), k, v)
        state = a.state_save()
        b.state_load(state)
        np.testing.assert_array_equal(a.attend(0, q, ks, vs), b.attend(0, q, ks, vs))
        with pytest.raises(tq.TurboQuantError) as e:
            b.state_load(state[:-3])
        assert e.value.status in (11, 12) and e.value.message


# -- owned cache ----------------------------------------------------------------------------------

def test_cache_full_precision_window_is_exact(ctx):
    rng = np.random.default_rng(6)
    n, n_q = 50, 7
    q, k, v = make_kv(rng, n, n_q)
    with tq.Cache(ctx, max_tokens=256, residual_window=256) as cache:
        cache.append(0, 0, k, v)
        out = cache.attend(0, 0, q)
        assert cache.memory_usage().n_compressed == 0
    ref = softmax_attention(q, k, v, causal_mask(n_q, n), 1 / np.sqrt(D))
    assert rel_err(out, ref) < 1e-5


def test_cache_compressed_equals_slot_mode(ctx):
    """All tokens compressed: the owned cache attends over the same rows as slot mode with a causal
    mask, so both APIs agree to float32 rounding."""
    rng = np.random.default_rng(7)
    n, n_q = 64, 6
    q, k, v = make_kv(rng, n, n_q)
    with tq.Cache(ctx, max_tokens=n, residual_window=0) as cache:
        cache.append(1, 0, k[:40], v[:40])
        cache.append(1, 0, k[40:], v[40:])
        out = cache.attend(1, 0, q)
        mem = cache.memory_usage()
    assert mem.n_tokens == n and mem.n_compressed == n
    assert mem.bytes_used >= n * (ctx.k_row_bytes + ctx.v_row_bytes)
    assert mem.bytes_fp16 == n * 2 * N_KV * D * 2
    # The same two appends (the first one fixes the centering means in both APIs).
    ks, vs = ctx.new_stores(n)
    ctx.append_kv(1, ks, vs, np.arange(40), k[:40], v[:40])
    ctx.append_kv(1, ks, vs, np.arange(40, n), k[40:], v[40:])
    ref = ctx.attend(1, q, ks, vs, mask=causal_mask(n_q, n))
    assert rel_err(out, ref) < 1e-5


def test_cache_sequences_save_load(ctx, tmp_path):
    rng = np.random.default_rng(8)
    q, k, v = make_kv(rng, 30, 2)
    with tq.Cache(ctx, max_seqs=3, max_tokens=64, residual_window=8, n_sink=2) as cache:
        assert (cache.residual_window, cache.n_sink) == (8, 2)
        for layer in range(N_LAYERS):
            cache.append(layer, 0, k, v)
        cache.seq_cp(0, 2)
        assert [cache.seq_len(s) for s in range(3)] == [30, 0, 30]
        out = cache.attend(0, 2, q)
        np.testing.assert_array_equal(out, cache.attend(0, 0, q))
        cache.seq_rm(0, 20, -1)
        assert cache.seq_len(0) == 20
        data = cache.save()
        cache.save_file(tmp_path / "c.tq")
        with tq.Cache(ctx, max_seqs=3, max_tokens=64, residual_window=8, n_sink=2) as other:
            other.load(data)
            assert other.seq_len(0) == 20 and other.seq_len(2) == 30
            np.testing.assert_array_equal(other.attend(0, 2, q), out)
            other.clear()
            assert other.seq_len(2) == 0
            other.load_file(tmp_path / "c.tq")
            np.testing.assert_array_equal(other.attend(0, 2, q), out)
            corrupt = bytearray(data)
            corrupt[len(corrupt) // 2] ^= 0xFF
            with pytest.raises(tq.CorruptDataError) as e:
                other.load(bytes(corrupt))
            assert e.value.message
            with pytest.raises(tq.TurboQuantIOError):
                other.load_file(tmp_path / "missing.tq")
        cache.seq_keep(2)
        assert cache.seq_len(0) == 0 and cache.seq_len(2) == 30


def test_cache_errors(ctx):
    rng = np.random.default_rng(9)
    q, k, v = make_kv(rng, 10, 3)
    with tq.Cache(ctx, max_seqs=1, max_tokens=8) as cache:
        with pytest.raises(tq.CapacityExceededError) as e:
            cache.append(0, 0, k, v)
        assert "max_tokens" in e.value.message
        assert cache.seq_len(0) == 0
        with pytest.raises(tq.TurboQuantError) as e:
            cache.append(0, 1, k[:2], v[:2])
        assert "seq" in e.value.message
        with pytest.raises(tq.TurboQuantError) as e:
            cache.attend(0, 0, q)   # three queries, no tokens
        assert e.value.function == "tq_cache_attend" and e.value.message
        with pytest.raises(ValueError, match="must be contiguous"):
            cache.append(0, 0, k[::2], v[::2])


# -- per-layer bits ---------------------------------------------------------------------------------

def test_per_layer_bits_rows_equal_uniform_contexts():
    """A context with per-layer bits: each layer's rows have that layer's size, and its bytes and
    attention equal those of a uniform context built with that layer's (bits_k, bits_v) — every
    layer's quantizers derive from (seed, layer, bits) alone."""
    bits_k, bits_v = [6, 3], [4, 2]
    rng = np.random.default_rng(12)
    n, n_q = 40, 3
    q, k, v = make_kv(rng, n, n_q)
    mixed = tq.Context(N_LAYERS, N_HEADS, N_KV, D, seed=SEED, layer_bits_k=bits_k, layer_bits_v=bits_v)
    for layer in range(N_LAYERS):
        kb, vb = mixed.row_bytes(layer)
        # codes of bits × 64 coordinates plus one bf16 scale, per kv head
        assert (kb, vb) == (N_KV * (bits_k[layer] * D // 8 + 2), N_KV * (bits_v[layer] * D // 8 + 2))
        uniform = tq.Context(N_LAYERS, N_HEADS, N_KV, D, seed=SEED, bits_k=bits_k[layer], bits_v=bits_v[layer])
        ks, vs = mixed.new_stores(n, layer=layer)
        uk, uv = uniform.new_stores(n, layer=layer)
        mixed.append_kv(layer, ks, vs, np.arange(n), k, v)
        uniform.append_kv(layer, uk, uv, np.arange(n), k, v)
        assert np.array_equal(ks, uk) and np.array_equal(vs, uv)
        mask = causal_mask(n_q, n)
        assert np.array_equal(mixed.attend(layer, q, ks, vs, mask=mask), uniform.attend(layer, q, uk, uv, mask=mask))


def test_per_layer_bits_errors():
    with pytest.raises(ValueError, match="layer_bits_k has 1 values but the context has 2 layers"):
        tq.Context(N_LAYERS, N_HEADS, N_KV, D, layer_bits_k=[4])
    with pytest.raises(tq.TurboQuantError):
        tq.Context(N_LAYERS, N_HEADS, N_KV, D, layer_bits_k=[4, 9])


# -- key outlier channels ---------------------------------------------------------------------------

def test_key_outliers_rows_and_attention_error():
    """key_outliers=32: K rows hold 32 channels per head at bits_k + 1 and 32 at bits_k plus two bf16
    scales; on keys whose 8 loud channels per head carry most of the energy, attention is closer to the
    exact float64 attention than with unsplit keys of the same base width (and the values unchanged)."""
    rng = np.random.default_rng(31)
    n, n_q = 256, 8
    q, k, v = make_kv(rng, n, n_q)
    k[:, :, ::8] *= 6.0
    q *= 0.5
    mask = causal_mask(n_q, n)
    exact = softmax_attention(q, k, v, mask, 1 / np.sqrt(D))
    errs = {}
    for c in (0, 32):
        ctx = tq.Context(N_LAYERS, N_HEADS, N_KV, D, seed=SEED, bits_k=3, bits_v=8, key_outliers=c)
        kb, vb = ctx.row_bytes(1)
        want = N_KV * ((32 * 4 + 32 * 3) // 8 + 4) if c else N_KV * (3 * D // 8 + 2)
        assert (kb, vb) == (want, N_KV * (8 * D // 8 + 2))
        ks, vs = ctx.new_stores(n, layer=1)
        ctx.append_kv(1, ks, vs, np.arange(n), k, v)
        out = ctx.attend(1, q, ks, vs, mask=mask)
        errs[c] = float(np.linalg.norm(out - exact) / np.linalg.norm(exact))
    assert errs[32] < 0.7 * errs[0], errs


def test_key_outliers_errors():
    with pytest.raises(tq.TurboQuantError, match="key_outliers is 8"):
        tq.Context(N_LAYERS, N_HEADS, N_KV, D, key_outliers=8)
    with pytest.raises(tq.TurboQuantError, match="key_mode"):
        tq.Context(N_LAYERS, N_HEADS, N_KV, D, key_outliers=16, key_mode="prod")


def test_cache_after_its_context_is_closed_is_refused():
    """Closing a context closes the caches made from it: a later call raises instead of using freed
    memory (the `with Context` block ending while a cache is still referenced)."""
    with tq.Context(N_LAYERS, N_HEADS, N_KV, D, seed=SEED) as c:
        cache = tq.Cache(c, max_tokens=16)
        q, k, v = make_kv(np.random.default_rng(12), 4, 1)
        cache.append(0, 0, k, v)
        assert cache.seq_len(0) == 4
    with pytest.raises(ValueError, match="its context was closed"):
        cache.append(0, 0, k, v)
    with pytest.raises(ValueError, match="closed"):
        cache.attend(0, 0, q)
    cache.close()  # still idempotent


def test_cache_sequence_numbers_out_of_the_c_range_are_refused(ctx):
    """Sequence ids and positions are range-checked before ctypes narrows them: 2**32 is not
    sequence 0, and 2**31 is not "every sequence"."""
    q, k, v = make_kv(np.random.default_rng(13), 5, 1)
    with tq.Cache(ctx, max_seqs=2, max_tokens=16) as cache:
        cache.append(0, 0, k, v)
        for call in (lambda: cache.append(0, 2**32, k, v), lambda: cache.seq_len(-1),
                     lambda: cache.seq_rm(2**31), lambda: cache.seq_cp(0, 2**32 + 1),
                     lambda: cache.seq_keep(2**32), lambda: cache.seq_rm(0, 2**63)):
            with pytest.raises(ValueError, match="must be in"):
                call()
        assert cache.seq_len(0) == 5  # nothing was removed or appended
        with pytest.raises(tq.TurboQuantError, match="seq"):
            cache.append(0, 7, k, v)  # in the C range, past max_seqs: the library's own error


def test_masks_that_the_library_would_misread_are_refused(ctx):
    """A mask must be contiguous along its cells and its rows must not overlap (the library takes a
    row stride only): a strided or broadcast mask raises instead of being read as something else."""
    rng = np.random.default_rng(14)
    n, n_q = 12, 3
    q, k, v = make_kv(rng, n, n_q)
    ks, vs = ctx.new_stores(n)
    ctx.append_kv(0, ks, vs, np.arange(n), k, v)
    wide = np.zeros((n_q, 2 * n), np.float32)
    with pytest.raises(ValueError, match="contiguous along its cells"):
        ctx.attend(0, q, ks, vs, mask=wide[:, ::2])
    with pytest.raises(ValueError, match="must not overlap"):
        ctx.attend(0, q, ks, vs, mask=np.broadcast_to(np.zeros(n, np.float32), (n_q, n)))
    # A row stride wider than n_cells (a view of the first n columns) is fine, and equals a copy.
    np.testing.assert_array_equal(ctx.attend(0, q, ks, vs, mask=wide[:, :n]),
                                  ctx.attend(0, q, ks, vs, mask=np.zeros((n_q, n), np.float32)))
