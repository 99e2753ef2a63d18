/* The vector-quantizer C API: every exported function, its argument checks (status + a message naming
 * the argument), and its results against values computed here. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "check.h"

/* Deterministic standard normals (xorshift64* + Box–Muller). */
static uint64_t rng_state = 0x9E3779B97F4A7C15u;
static double uniform01(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return ((double)((rng_state * 2685821657736338717u) >> 11) + 0.5) / 9007199254740992.0;
}
static void gaussians(float *out, size_t n) {
    size_t i;
    for (i = 0; i < n; i += 2) {
        double r = sqrt(-2.0 * log(uniform01())), t = 6.283185307179586 * uniform01();
        out[i] = (float)(r * cos(t));
        if (i + 1 < n) out[i + 1] = (float)(r * sin(t));
    }
}

static tq_quantizer *make(uint32_t dim, uint32_t bits, uint32_t kind, uint32_t rotation, uint32_t threads) {
    tq_quantizer_params p = tq_quantizer_default_params();
    tq_quantizer *q = NULL;
    p.dim = dim;
    p.bits = bits;
    p.kind = kind;
    p.rotation = rotation;
    p.n_threads = threads;
    p.seed = 42;
    CHECK_STATUS(tq_quantizer_new(&p, &q), TQ_STATUS_OK);
    CHECK(q != NULL);
    return q;
}

static void test_version_and_status_strings(void) {
    char want[32];
    uint32_t s;
    snprintf(want, sizeof want, "%d.%d.%d", TQ_VERSION_MAJOR, TQ_VERSION_MINOR, TQ_VERSION_PATCH);
    CHECK(tq_version() != NULL && strcmp(tq_version(), want) == 0);
    CHECK(strcmp(tq_status_to_string(TQ_STATUS_OK), "TQ_STATUS_OK") == 0);
    CHECK(strcmp(tq_status_to_string(TQ_STATUS_NULL_POINTER), "TQ_STATUS_NULL_POINTER") == 0);
    CHECK(strcmp(tq_status_to_string(TQ_STATUS_INTERNAL_ERROR), "TQ_STATUS_INTERNAL_ERROR") == 0);
    for (s = 0; s <= TQ_STATUS_INTERNAL_ERROR; s++) {
        CHECK(strncmp(tq_status_to_string(s), "TQ_STATUS_", 10) == 0);
    }
    CHECK(tq_status_to_string(999) != NULL && strstr(tq_status_to_string(999), "unknown") != NULL);
    /* Nothing has failed on this thread yet. */
    CHECK(tq_last_error_message() != NULL && tq_last_error_message()[0] == '\0');
}

static void test_params(void) {
    tq_quantizer_params p = tq_quantizer_default_params();
    CHECK(p.struct_size == sizeof(tq_quantizer_params));
    CHECK(tq_quantizer_params_size() == sizeof(tq_quantizer_params));
    CHECK(p.abi_version == TQ_ABI_VERSION);
    CHECK(p.dim == 128 && p.bits == 4 && p.kind == TQ_QUANTIZER_MSE && p.rotation == TQ_ROTATION_AUTO);
    CHECK(p.n_threads == 0 && p.seed == 0);
}

static void test_new_rejects_bad_params(void) {
    tq_quantizer_params p;
    tq_quantizer *q = (tq_quantizer *)&p; /* sentinel: must stay unchanged on failure */
    tq_quantizer *const sentinel = q;

    CHECK_FAILS(tq_quantizer_new(NULL, &q), TQ_STATUS_NULL_POINTER, "params");
    p = tq_quantizer_default_params();
    CHECK_FAILS(tq_quantizer_new(&p, NULL), TQ_STATUS_NULL_POINTER, "out");

    p = tq_quantizer_default_params();
    p.struct_size = sizeof(p) - 8;
    CHECK_FAILS(tq_quantizer_new(&p, &q), TQ_STATUS_ABI_MISMATCH, "struct_size");
    p.struct_size = sizeof(p) + 8;
    CHECK_FAILS(tq_quantizer_new(&p, &q), TQ_STATUS_ABI_MISMATCH, "struct_size");
    p = tq_quantizer_default_params();
    p.abi_version = TQ_ABI_VERSION + 1;
    CHECK_FAILS(tq_quantizer_new(&p, &q), TQ_STATUS_ABI_MISMATCH, "abi_version");

    p = tq_quantizer_default_params();
    p.bits = 0;
    CHECK_FAILS(tq_quantizer_new(&p, &q), TQ_STATUS_INVALID_ARGUMENT, "bits");
    p.bits = 9;
    CHECK_FAILS(tq_quantizer_new(&p, &q), TQ_STATUS_INVALID_ARGUMENT, "bits");

    p = tq_quantizer_default_params();
    p.dim = 8;
    CHECK_FAILS(tq_quantizer_new(&p, &q), TQ_STATUS_INVALID_ARGUMENT, "dim");
    p.dim = 2048;
    CHECK_FAILS(tq_quantizer_new(&p, &q), TQ_STATUS_INVALID_ARGUMENT, "dim");

    p = tq_quantizer_default_params();
    p.kind = 7;
    CHECK_FAILS(tq_quantizer_new(&p, &q), TQ_STATUS_INVALID_ARGUMENT, "kind");
    p = tq_quantizer_default_params();
    p.rotation = 9;
    CHECK_FAILS(tq_quantizer_new(&p, &q), TQ_STATUS_INVALID_ARGUMENT, "rotation");

    p = tq_quantizer_default_params();
    p.dim = 100;
    p.rotation = TQ_ROTATION_HADAMARD;
    CHECK_FAILS(tq_quantizer_new(&p, &q), TQ_STATUS_UNSUPPORTED, "rotation");
    CHECK(strstr(tq_last_error_message(), "power of two") != NULL);
    CHECK(q == sentinel);

    /* dim 100 works with DENSE, and with AUTO (which picks DENSE). */
    p.rotation = TQ_ROTATION_DENSE;
    q = NULL;
    CHECK_STATUS(tq_quantizer_new(&p, &q), TQ_STATUS_OK);
    tq_quantizer_free(q);
    p.rotation = TQ_ROTATION_AUTO;
    q = NULL;
    CHECK_STATUS(tq_quantizer_new(&p, &q), TQ_STATUS_OK);
    tq_quantizer_free(q);

    tq_quantizer_free(NULL); /* NULL-safe */
}

static void test_sizes(void) {
    tq_quantizer *mse = make(128, 4, TQ_QUANTIZER_MSE, TQ_ROTATION_HADAMARD, 1);
    tq_quantizer *prod = make(128, 4, TQ_QUANTIZER_PROD, TQ_ROTATION_HADAMARD, 1);
    tq_quantizer *odd = make(100, 3, TQ_QUANTIZER_MSE, TQ_ROTATION_DENSE, 1);
    size_t n = 0;
    double e = 0.0;

    CHECK_STATUS(tq_quantizer_code_bytes(mse, &n), TQ_STATUS_OK);
    CHECK(n == 64);
    CHECK_STATUS(tq_quantizer_code_bytes(prod, &n), TQ_STATUS_OK);
    CHECK(n == 48 + 16); /* 3-bit MSE stage + 128 sign bits */
    CHECK_STATUS(tq_quantizer_code_bytes(odd, &n), TQ_STATUS_OK);
    CHECK(n == 38); /* ceil(100 * 3 / 8) */
    CHECK_STATUS(tq_quantizer_scale_count(mse, &n), TQ_STATUS_OK);
    CHECK(n == 1);
    CHECK_STATUS(tq_quantizer_scale_count(prod, &n), TQ_STATUS_OK);
    CHECK(n == 2);
    CHECK_STATUS(tq_quantizer_expected_mse(mse, &e), TQ_STATUS_OK);
    CHECK(fabs(e - 0.0093) < 0.0005);
    CHECK_STATUS(tq_quantizer_expected_mse(prod, &e), TQ_STATUS_OK);
    CHECK(fabs(e - 0.0340) < 0.0005);

    CHECK_FAILS(tq_quantizer_code_bytes(NULL, &n), TQ_STATUS_NULL_POINTER, "q");
    CHECK_FAILS(tq_quantizer_code_bytes(mse, NULL), TQ_STATUS_NULL_POINTER, "out");
    CHECK_FAILS(tq_quantizer_scale_count(NULL, &n), TQ_STATUS_NULL_POINTER, "q");
    CHECK_FAILS(tq_quantizer_scale_count(mse, NULL), TQ_STATUS_NULL_POINTER, "out");
    CHECK_FAILS(tq_quantizer_expected_mse(NULL, &e), TQ_STATUS_NULL_POINTER, "q");
    CHECK_FAILS(tq_quantizer_expected_mse(mse, NULL), TQ_STATUS_NULL_POINTER, "out");
    tq_quantizer_free(mse);
    tq_quantizer_free(prod);
    tq_quantizer_free(odd);
}

static void test_bf16_to_float(void) {
    const uint16_t in[4] = {0x3f80, 0xc000, 0x0000, 0x4049}; /* 1, -2, 0, 3.140625 */
    float out[4] = {0, 0, 0, 0};
    CHECK_STATUS(tq_bf16_to_float(in, 4, out), TQ_STATUS_OK);
    CHECK(out[0] == 1.0f && out[1] == -2.0f && out[2] == 0.0f && out[3] == 3.140625f);
    CHECK_STATUS(tq_bf16_to_float(NULL, 0, NULL), TQ_STATUS_OK);
    CHECK_FAILS(tq_bf16_to_float(NULL, 4, out), TQ_STATUS_NULL_POINTER, "bf16_in");
    CHECK_FAILS(tq_bf16_to_float(in, 4, NULL), TQ_STATUS_NULL_POINTER, "out");
    /* In place (the f32 writes would overwrite inputs not yet read): refused, nothing written. */
    union { uint16_t h[8]; float f[4]; } buf = {{0x3f80, 0xc000, 0x0000, 0x4049, 0, 0, 0, 0}};
    CHECK_FAILS(tq_bf16_to_float(buf.h, 4, buf.f), TQ_STATUS_INVALID_ARGUMENT, "overlap");
    CHECK(buf.h[0] == 0x3f80 && buf.h[3] == 0x4049);
}

/* Round trip at (dim, bits, rotation): the mean normalised error over n vectors is near the exact value. */
static void test_round_trip(uint32_t dim, uint32_t bits, uint32_t rotation) {
    const size_t n = 256;
    tq_quantizer *q = make(dim, bits, TQ_QUANTIZER_MSE, rotation, 2);
    size_t code_bytes = 0, i, j;
    double expected = 0.0, total = 0.0;
    float *x = malloc(n * dim * sizeof *x), *back = malloc(n * dim * sizeof *back);
    uint8_t *codes = NULL;
    uint16_t *scales = malloc(n * sizeof *scales);
    CHECK_STATUS(tq_quantizer_code_bytes(q, &code_bytes), TQ_STATUS_OK);
    CHECK_STATUS(tq_quantizer_expected_mse(q, &expected), TQ_STATUS_OK);
    codes = malloc(n * code_bytes);
    gaussians(x, n * dim);
    CHECK_STATUS(tq_quantize(q, x, n, codes, scales), TQ_STATUS_OK);
    CHECK_STATUS(tq_dequantize(q, codes, scales, n, back), TQ_STATUS_OK);
    for (i = 0; i < n; i++) {
        double err = 0.0, norm = 0.0;
        for (j = 0; j < dim; j++) {
            double dx = (double)x[i * dim + j] - (double)back[i * dim + j];
            err += dx * dx;
            norm += (double)x[i * dim + j] * (double)x[i * dim + j];
        }
        total += err / norm;
    }
    /* The bf16 scale adds E[ε²]·(1 − D) ≈ 2.5e-6 (ε its relative rounding error): negligible up to
     * 4 bits, about 7 % of the 8-bit figure. 256 vectors: the mean is within ~10 % of the
     * expectation with a wide margin (relative standard error about 2 % at 1 bit, ~3 % at 8 bits). */
    /* The expectation itself against the SciPy oracle (tests/data/lloyd_max_reference.json), to 1e-6. */
    {
        static const double oracle128[4] = {0.36088859368690557, 0.11600007027511211, 0.033965925793901314, 0.009314787953795874};
        static const double oracle96[4] = {0.36005591020123473, 0.11550779308747532, 0.03377347682139963, 0.00925336999596622};
        if (bits <= 4 && (dim == 128 || dim == 96)) {
            const double want = (dim == 128 ? oracle128 : oracle96)[bits - 1];
            CHECK(fabs(expected / want - 1.0) < 1e-6);
        }
    }
    expected += 2.5e-6;
    CHECK(fabs(total / (double)n / expected - 1.0) < 0.10);
    if (fabs(total / (double)n / expected - 1.0) >= 0.10) {
        printf("     dim %u bits %u rotation %u: nmse %g vs %g\n", dim, bits, rotation, total / (double)n, expected);
    }
    free(x);
    free(back);
    free(codes);
    free(scales);
    tq_quantizer_free(q);
}

static void test_quantize_arguments(void) {
    enum { DIM = 128, N = 3 };
    tq_quantizer *q = make(DIM, 4, TQ_QUANTIZER_MSE, TQ_ROTATION_HADAMARD, 1);
    static float x[N * DIM + 1], back[N * DIM];
    static uint8_t codes[N * 64];
    static uint16_t scales[N + 1];
    size_t i;
    gaussians(x, N * DIM);

    CHECK_FAILS(tq_quantize(NULL, x, N, codes, scales), TQ_STATUS_NULL_POINTER, "q");
    CHECK_FAILS(tq_quantize(q, NULL, N, codes, scales), TQ_STATUS_NULL_POINTER, "x");
    CHECK_FAILS(tq_quantize(q, x, N, NULL, scales), TQ_STATUS_NULL_POINTER, "codes_out");
    CHECK_FAILS(tq_quantize(q, x, N, codes, NULL), TQ_STATUS_NULL_POINTER, "scales_out");
    /* Outputs inside the input, or inside each other: refused. */
    CHECK_FAILS(tq_quantize(q, x, N, (uint8_t *)x, scales), TQ_STATUS_INVALID_ARGUMENT, "overlap");
    CHECK_FAILS(tq_quantize(q, x, N, codes, (uint16_t *)(codes + 8)), TQ_STATUS_INVALID_ARGUMENT, "overlap");
    CHECK_FAILS(tq_dequantize(q, codes, scales, N, (float *)codes), TQ_STATUS_INVALID_ARGUMENT, "overlap");
    /* n = 0 is a no-op, whatever the buffers. */
    CHECK_STATUS(tq_quantize(q, NULL, 0, NULL, NULL), TQ_STATUS_OK);
    CHECK_STATUS(tq_dequantize(q, NULL, NULL, 0, NULL), TQ_STATUS_OK);
    CHECK_STATUS(tq_inner_product(q, x, NULL, NULL, 0, NULL), TQ_STATUS_OK);
    /* Misaligned float pointer. */
    CHECK_FAILS(tq_quantize(q, (const float *)((const char *)x + 1), 1, codes, scales), TQ_STATUS_INVALID_ARGUMENT, "x");

    /* NaN / ±inf input: rejected before anything is written, naming the vector and element. */
    memset(codes, 0xAB, sizeof codes);
    x[DIM + 5] = NAN;
    CHECK_FAILS(tq_quantize(q, x, N, codes, scales), TQ_STATUS_NON_FINITE, "x[vector 1, element 5]");
    x[DIM + 5] = INFINITY;
    CHECK_FAILS(tq_quantize(q, x, N, codes, scales), TQ_STATUS_NON_FINITE, "x[vector 1, element 5]");
    x[DIM + 5] = -INFINITY;
    CHECK_FAILS(tq_quantize(q, x, N, codes, scales), TQ_STATUS_NON_FINITE, "inf");
    for (i = 0; i < sizeof codes; i++) {
        if (codes[i] != 0xAB) break;
    }
    CHECK(i == sizeof codes);
    x[DIM + 5] = 1.0f;
    CHECK_STATUS(tq_quantize(q, x, N, codes, scales), TQ_STATUS_OK);

    CHECK_FAILS(tq_dequantize(NULL, codes, scales, N, back), TQ_STATUS_NULL_POINTER, "q");
    CHECK_FAILS(tq_dequantize(q, NULL, scales, N, back), TQ_STATUS_NULL_POINTER, "codes");
    CHECK_FAILS(tq_dequantize(q, codes, NULL, N, back), TQ_STATUS_NULL_POINTER, "scales");
    CHECK_FAILS(tq_dequantize(q, codes, scales, N, NULL), TQ_STATUS_NULL_POINTER, "x_out");
    scales[1] = 0x7f80; /* bf16 +inf */
    CHECK_FAILS(tq_dequantize(q, codes, scales, N, back), TQ_STATUS_NON_FINITE, "scales[1]");
    scales[1] = 0x7fc0; /* bf16 NaN */
    CHECK_FAILS(tq_dequantize(q, codes, scales, N, back), TQ_STATUS_NON_FINITE, "scales[1]");
    tq_quantizer_free(q);
}

/* A zero vector is stored as scale 0 and reconstructs as zeros; large and tiny norms stay finite. */
static void test_zero_and_extremes(void) {
    enum { DIM = 64 };
    uint32_t kind;
    for (kind = TQ_QUANTIZER_MSE; kind <= TQ_QUANTIZER_PROD; kind++) {
        tq_quantizer *q = make(DIM, 3, kind, TQ_ROTATION_HADAMARD, 1);
        float x[3 * DIM], back[3 * DIM];
        uint8_t codes[3 * DIM];
        uint16_t scales[6];
        float s[6];
        size_t i, sc = 0;
        int finite = 1, zero = 1;
        CHECK_STATUS(tq_quantizer_scale_count(q, &sc), TQ_STATUS_OK);
        gaussians(x, 3 * DIM);
        for (i = 0; i < DIM; i++) {
            x[i] = 0.0f;
            x[DIM + i] *= 1e6f;
            x[2 * DIM + i] *= 1e-31f;
        }
        CHECK_STATUS(tq_quantize(q, x, 3, codes, scales), TQ_STATUS_OK);
        CHECK_STATUS(tq_dequantize(q, codes, scales, 3, back), TQ_STATUS_OK);
        CHECK_STATUS(tq_bf16_to_float(scales, 3 * sc, s), TQ_STATUS_OK);
        CHECK(s[0] == 0.0f);
        for (i = 0; i < DIM; i++) zero &= back[i] == 0.0f;
        for (i = 0; i < 3 * DIM; i++) finite &= isfinite(back[i]) ? 1 : 0;
        CHECK(zero);
        CHECK(finite);
        CHECK(s[sc] > 1e6f && s[sc] < 1e8f);               /* ‖x‖ ≈ 1e6 · √64 */
        CHECK(s[2 * sc] > 1e-31f && s[2 * sc] < 1e-29f);   /* ‖x‖ ≈ 1e-31 · √64 */
        tq_quantizer_free(q);
    }
}

/* The PROD estimator against exact inner products: unbiased on average over many vectors. */
static void test_inner_product(void) {
    enum { DIM = 128, N = 2000 };
    tq_quantizer *q = make(DIM, 3, TQ_QUANTIZER_PROD, TQ_ROTATION_HADAMARD, 2);
    float *x = malloc(N * DIM * sizeof *x), y[DIM], *est = malloc(N * sizeof *est);
    uint8_t *codes = malloc(N * 64);
    uint16_t *scales = malloc(2 * N * sizeof *scales);
    double sum = 0.0, sum2 = 0.0, mean, se;
    size_t i, j;
    gaussians(x, N * DIM);
    gaussians(y, DIM);
    CHECK_STATUS(tq_quantize(q, x, N, codes, scales), TQ_STATUS_OK);
    CHECK_STATUS(tq_inner_product(q, y, codes, scales, N, est), TQ_STATUS_OK);
    for (i = 0; i < N; i++) {
        double exact = 0.0, e;
        for (j = 0; j < DIM; j++) exact += (double)y[j] * (double)x[i * DIM + j];
        e = (double)est[i] - exact;
        sum += e;
        sum2 += e * e;
    }
    mean = sum / N;
    se = sqrt((sum2 / N - mean * mean) / N);
    CHECK(fabs(mean) < 4.0 * se);
    /* Error variance ≈ (π/2)·D_mse(2 bits)·‖y‖²‖x‖²/d ≈ 1.5708 · 0.117 · 128: rms ≈ 4.9; allow 30 %. */
    CHECK(sqrt(sum2 / N) > 0.7 * 4.9 && sqrt(sum2 / N) < 1.3 * 4.9);

    CHECK_FAILS(tq_inner_product(NULL, y, codes, scales, N, est), TQ_STATUS_NULL_POINTER, "q");
    CHECK_FAILS(tq_inner_product(q, NULL, codes, scales, N, est), TQ_STATUS_NULL_POINTER, "y");
    CHECK_FAILS(tq_inner_product(q, y, NULL, scales, N, est), TQ_STATUS_NULL_POINTER, "codes");
    CHECK_FAILS(tq_inner_product(q, y, codes, NULL, N, est), TQ_STATUS_NULL_POINTER, "scales");
    CHECK_FAILS(tq_inner_product(q, y, codes, scales, N, NULL), TQ_STATUS_NULL_POINTER, "out");
    y[3] = NAN;
    CHECK_FAILS(tq_inner_product(q, y, codes, scales, N, est), TQ_STATUS_NON_FINITE, "y");
    free(x);
    free(est);
    free(codes);
    free(scales);
    tq_quantizer_free(q);
}

/* The thread count changes the speed, never the bytes. */
static void test_threads_give_identical_bytes(void) {
    enum { DIM = 128, N = 1500 };
    tq_quantizer *one = make(DIM, 4, TQ_QUANTIZER_MSE, TQ_ROTATION_HADAMARD, 1);
    tq_quantizer *many = make(DIM, 4, TQ_QUANTIZER_MSE, TQ_ROTATION_HADAMARD, 3);
    float *x = malloc(N * DIM * sizeof *x);
    uint8_t *c1 = malloc(N * 64), *c2 = malloc(N * 64);
    uint16_t *s1 = malloc(N * sizeof *s1), *s2 = malloc(N * sizeof *s2);
    gaussians(x, N * DIM);
    CHECK_STATUS(tq_quantize(one, x, N, c1, s1), TQ_STATUS_OK);
    CHECK_STATUS(tq_quantize(many, x, N, c2, s2), TQ_STATUS_OK);
    CHECK(memcmp(c1, c2, N * 64) == 0);
    CHECK(memcmp(s1, s2, N * sizeof *s1) == 0);
    free(x);
    free(c1);
    free(c2);
    free(s1);
    free(s2);
    tq_quantizer_free(one);
    tq_quantizer_free(many);
}

int main(void) {
    uint32_t bits;
    test_version_and_status_strings();
    test_params();
    test_new_rejects_bad_params();
    test_sizes();
    test_bf16_to_float();
    for (bits = 1; bits <= 4; bits++) {
        test_round_trip(128, bits, TQ_ROTATION_HADAMARD);
        test_round_trip(96, bits, TQ_ROTATION_DENSE);
    }
    test_round_trip(64, 8, TQ_ROTATION_HADAMARD);
    test_quantize_arguments();
    test_zero_and_extremes();
    test_inner_product();
    test_threads_give_identical_bytes();
    return check_summary("quantizer");
}
