"""Quantizer round trips against the library's exact expected MSE, and inner products against numpy."""

import numpy as np
import pytest

import turboquant as tq

N_VECTORS = 4000

# The exact normalised MSE d·E[(t − Q(t))²] of the Lloyd–Max codebooks, computed independently of the
# library with SciPy (tests/data/lloyd_max_reference.json, the oracle tests/codebook.rs reads).
ORACLE_NMSE = {
    (128, 1): 0.36088859368690557, (128, 2): 0.11600007027511211,
    (128, 3): 0.033965925793901314, (128, 4): 0.009314787953795874,
    (96, 1): 0.36005591020123473, (96, 2): 0.11550779308747532,
    (96, 3): 0.03377347682139963, (96, 4): 0.00925336999596622,
}


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("dim,rotation", [(128, "hadamard"), (96, "dense")])
def test_round_trip_mse_matches_expected(bits, dim, rotation):
    rng = np.random.default_rng(bits * 1000 + dim)
    # Arbitrary norms: the error is relative to ‖x‖, so scaling rows must not matter.
    x = (rng.standard_normal((N_VECTORS, dim)) * rng.uniform(0.1, 10, (N_VECTORS, 1))).astype(np.float32)
    with tq.Quantizer(dim=dim, bits=bits, rotation=rotation, seed=7) as q:
        codes, scales = q.quantize(x)
        assert codes.shape == (N_VECTORS, q.code_bytes) and q.code_bytes == (dim * bits + 7) // 8
        assert scales.shape == (N_VECTORS, 1)
        x_hat = q.dequantize(codes, scales)
        expected = q.expected_mse
    x64, xh64 = x.astype(np.float64), x_hat.astype(np.float64)
    per_vector = ((x64 - xh64) ** 2).sum(1) / (x64 ** 2).sum(1)
    measured = per_vector.mean()
    # Mean of N i.i.d. per-vector errors: 5 standard errors (plus 1e-3 relative for the bf16
    # scale rounding, whose squared relative error is ≤ 2^-18) cannot be exceeded by chance.
    tol = 5 * per_vector.std() / np.sqrt(N_VECTORS) + 1e-3 * expected
    assert abs(measured - expected) <= tol, (measured, expected, tol)
    # The library's expectation is the oracle's (both solve the same fixed point to ~1e-12; 1e-6).
    assert expected == pytest.approx(ORACLE_NMSE[(dim, bits)], rel=1e-6)
    # And the paper's bounds 4^-b ≤ MSE ≤ (√3·π/2)·4^-b.
    assert 4.0 ** -bits * 0.99 <= expected <= np.sqrt(3) * np.pi / 2 * 4.0 ** -bits


def test_scales_are_bf16_norms():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 64)).astype(np.float32)
    with tq.Quantizer(dim=64, bits=3) as q:
        _, scales = q.quantize(x)
    norms = tq.bf16_to_float(scales[:, 0])
    np.testing.assert_allclose(norms, np.linalg.norm(x.astype(np.float64), axis=1), rtol=2 ** -8)


def test_inner_product_mse_equals_reconstruction():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 128)).astype(np.float32)
    y = rng.standard_normal(128).astype(np.float32)
    with tq.Quantizer(dim=128, bits=4) as q:
        codes, scales = q.quantize(x)
        est = q.inner_product(y, codes, scales)
        ref = q.dequantize(codes, scales).astype(np.float64) @ y.astype(np.float64)
    np.testing.assert_allclose(est, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_inner_product_prod_is_unbiased():
    """TurboQuant_prod's estimator is unbiased over the random rotation and projection (one per
    seed): averaged over independent seeds the error vanishes, while the MSE quantizer at the same
    bits is biased (it shrinks inner products by about its expected MSE)."""
    rng = np.random.default_rng(3)
    d, n, seeds = 64, 16, 300
    y = rng.standard_normal(d).astype(np.float32)
    x = (y / np.linalg.norm(y) + 0.3 * rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32)
    true = x.astype(np.float64) @ y.astype(np.float64)

    def per_seed_mean_error(kind):
        errs = []
        for seed in range(seeds):
            with tq.Quantizer(dim=d, bits=2, kind=kind, seed=seed) as q:
                codes, scales = q.quantize(x)
                errs.append((q.inner_product(y, codes, scales) - true).mean())
        return np.array(errs)

    prod = per_seed_mean_error("prod")
    mse = per_seed_mean_error("mse")
    # Seeds are independent: 5 standard errors of the mean.
    assert abs(prod.mean()) <= 5 * prod.std() / np.sqrt(seeds), (prod.mean(), prod.std())
    assert abs(mse.mean()) > 5 * mse.std() / np.sqrt(seeds), (mse.mean(), mse.std())


def test_dequantize_checks_shapes():
    with tq.Quantizer(dim=64, bits=4) as q:
        codes, scales = q.quantize(np.ones((3, 64), np.float32))
        with pytest.raises(ValueError, match=r"scales must have shape \(3, 1\)"):
            q.dequantize(codes, scales[:2])
        with pytest.raises(TypeError, match="codes must have dtype uint8"):
            q.dequantize(codes.astype(np.int8), scales)
