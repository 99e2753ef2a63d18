/* C test of the KV codec and owned-cache API: every function, its NULL / invalid arguments (status
 * and a message naming the argument), and _free(NULL). Built with -Wall -Wextra -Werror -pedantic
 * against include/turboquant.h and the built libturboquant.so. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "turboquant.h"

static int passed = 0, failed = 0;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (cond) {                                                       \
            passed++;                                                     \
        } else {                                                          \
            failed++;                                                     \
            fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                 \
            fprintf(stderr, "\n");                                        \
        }                                                                 \
    } while (0)

/* A call must fail with `want` and a message mentioning `needle`. */
#define EXPECT_ERR(call, want, needle)                                                     \
    do {                                                                                   \
        tq_status st_ = (call);                                                            \
        CHECK(st_ == (want) && strstr(tq_last_error_message(), (needle)) != NULL,          \
              "%s -> %s, message \"%s\" (want %s mentioning \"%s\")", #call,               \
              tq_status_to_string(st_), tq_last_error_message(), #want, needle);           \
    } while (0)

#define EXPECT_OK(call) \
    do { tq_status st_ = (call); CHECK(st_ == TQ_STATUS_OK, "%s -> %s: %s", #call, tq_status_to_string(st_), tq_last_error_message()); } while (0)

enum { NH = 4, NKV = 2, D = 32, CELLS = 16 };

static void fill(float *x, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) x[i] = (float)sin(0.37 * (double)(i + 1) * (double)(seed + 1));
}

static void test_context(void) {
    tq_context_params p = tq_context_default_params();
    CHECK(p.struct_size == sizeof(tq_context_params), "struct_size %zu", p.struct_size);
    CHECK(tq_context_params_size() == sizeof(tq_context_params), "params size");
    CHECK(p.abi_version == TQ_ABI_VERSION && p.bits_k == 4 && p.bits_v == 4 && p.centering && !p.center_values && p.n_layer_bits == 0 && p.key_outliers == 0, "defaults (key centering on, values uncentered, uniform bits, no key outliers)");

    tq_context *ctx = NULL;
    EXPECT_ERR(tq_context_new(NULL, &ctx), TQ_STATUS_NULL_POINTER, "params");
    EXPECT_ERR(tq_context_new(&p, NULL), TQ_STATUS_NULL_POINTER, "out");
    tq_context_params bad = p;
    bad.struct_size = sizeof(bad) - 4; /* no release had this size (the previous ones end at 80 and 104 bytes) */
    EXPECT_ERR(tq_context_new(&bad, &ctx), TQ_STATUS_ABI_MISMATCH, "struct_size");
    bad = p; bad.abi_version = 99;
    EXPECT_ERR(tq_context_new(&bad, &ctx), TQ_STATUS_ABI_MISMATCH, "abi_version");
    bad = p; bad.bits_k = 0;
    EXPECT_ERR(tq_context_new(&bad, &ctx), TQ_STATUS_INVALID_ARGUMENT, "bits_k");
    bad = p; bad.bits_v = 9;
    EXPECT_ERR(tq_context_new(&bad, &ctx), TQ_STATUS_INVALID_ARGUMENT, "bits_v");
    bad = p; bad.key_mode = TQ_KEY_MODE_PROD; bad.bits_k = 1;
    EXPECT_ERR(tq_context_new(&bad, &ctx), TQ_STATUS_INVALID_ARGUMENT, "bits_k");
    bad = p; bad.n_heads = 6; bad.n_kv_heads = 4;
    EXPECT_ERR(tq_context_new(&bad, &ctx), TQ_STATUS_INVALID_ARGUMENT, "n_heads");
    bad = p; bad.head_dim = 96; bad.rotation = TQ_ROTATION_HADAMARD;
    EXPECT_ERR(tq_context_new(&bad, &ctx), TQ_STATUS_UNSUPPORTED, "power of two");
    bad = p; bad.dtype = 7;
    EXPECT_ERR(tq_context_new(&bad, &ctx), TQ_STATUS_INVALID_ARGUMENT, "dtype");
    bad = p; bad.rotation = 5;
    EXPECT_ERR(tq_context_new(&bad, &ctx), TQ_STATUS_INVALID_ARGUMENT, "rotation");
    bad = p; bad.key_mode = 3;
    EXPECT_ERR(tq_context_new(&bad, &ctx), TQ_STATUS_INVALID_ARGUMENT, "key_mode");
    bad = p; bad.backend = 9;
    EXPECT_ERR(tq_context_new(&bad, &ctx), TQ_STATUS_INVALID_ARGUMENT, "backend");
    CHECK(ctx == NULL, "out untouched on failure");
    tq_context_free(NULL);

    p.n_layers = 2; p.n_heads = NH; p.n_kv_heads = NKV; p.head_dim = D; p.centering = true; p.n_threads = 2;
    EXPECT_OK(tq_context_new(&p, &ctx));
    size_t kr = 0, vr = 0;
    EXPECT_OK(tq_context_row_bytes(ctx, &kr, &vr));
    CHECK(kr == NKV * (D / 2 + 2) && vr == kr, "row bytes %zu %zu", kr, vr);
    EXPECT_OK(tq_context_row_bytes(ctx, NULL, &vr));
    EXPECT_ERR(tq_context_row_bytes(NULL, &kr, &vr), TQ_STATUS_NULL_POINTER, "ctx");
    EXPECT_ERR(tq_context_row_bytes(ctx, NULL, NULL), TQ_STATUS_NULL_POINTER, "k_row_bytes");

    /* Slot mode: append, attend, parts. */
    unsigned char *ks = calloc(CELLS, kr), *vs = calloc(CELLS, vr);
    float k[CELLS * NKV * D], v[CELLS * NKV * D], q[2 * NH * D], out[2 * NH * D], out2[2 * NH * D];
    fill(k, CELLS * NKV * D, 1); fill(v, CELLS * NKV * D, 2); fill(q, 2 * NH * D, 3);
    int64_t slots[CELLS];
    for (int i = 0; i < CELLS; i++) slots[i] = (i * 5) % CELLS;
    EXPECT_ERR(tq_append_kv(ctx, 2, ks, vs, CELLS, slots, CELLS, k, NULL, v, NULL, NULL), TQ_STATUS_INVALID_ARGUMENT, "layer");
    EXPECT_ERR(tq_append_kv(ctx, 0, NULL, vs, CELLS, slots, CELLS, k, NULL, v, NULL, NULL), TQ_STATUS_NULL_POINTER, "k_store");
    EXPECT_ERR(tq_append_kv(ctx, 0, ks, vs, CELLS, NULL, CELLS, k, NULL, v, NULL, NULL), TQ_STATUS_NULL_POINTER, "slots");
    EXPECT_ERR(tq_append_kv(ctx, 0, ks, vs, CELLS, slots, CELLS, k, NULL, NULL, NULL, NULL), TQ_STATUS_NULL_POINTER, "v");
    int64_t bad_slots[2] = {3, CELLS};
    EXPECT_ERR(tq_append_kv(ctx, 0, ks, vs, CELLS, bad_slots, 2, k, NULL, v, NULL, NULL), TQ_STATUS_INVALID_ARGUMENT, "slots[1]");
    int64_t dup_slots[2] = {3, 3};
    EXPECT_ERR(tq_append_kv(ctx, 0, ks, vs, CELLS, dup_slots, 2, k, NULL, v, NULL, NULL), TQ_STATUS_INVALID_ARGUMENT, "slots[1]");
    float saved = k[40];
    k[40] = NAN;
    EXPECT_ERR(tq_append_kv(ctx, 0, ks, vs, CELLS, slots, CELLS, k, NULL, v, NULL, NULL), TQ_STATUS_NON_FINITE, "k[token 0, head 1, element 8]");
    k[40] = saved;
    EXPECT_OK(tq_append_kv(ctx, 0, ks, vs, CELLS, slots, 0, NULL, NULL, NULL, NULL, NULL)); /* n = 0: no-op */
    /* ... but not for a layer the context lacks (as every other entry point). */
    EXPECT_ERR(tq_append_kv(ctx, 2, ks, vs, CELLS, slots, 0, NULL, NULL, NULL, NULL, NULL), TQ_STATUS_INVALID_ARGUMENT, "layer");
    EXPECT_ERR(tq_attend(ctx, 2, NULL, 0, NULL, ks, vs, CELLS, NULL, 0, 0, 1.0f, NULL, NULL, NULL), TQ_STATUS_INVALID_ARGUMENT, "layer");
    EXPECT_OK(tq_append_kv(ctx, 0, ks, vs, CELLS, slots, CELLS, k, NULL, v, NULL, NULL));

    float mask[2 * CELLS];
    for (int i = 0; i < 2 * CELLS; i++) mask[i] = (i % CELLS) > 10 + i / CELLS ? -INFINITY : 0.0f;
    float scale = 1.0f / sqrtf((float)D);
    EXPECT_ERR(tq_attend(ctx, 0, NULL, 2, NULL, ks, vs, CELLS, mask, TQ_DTYPE_F32, CELLS, scale, out, NULL, NULL), TQ_STATUS_NULL_POINTER, "q");
    EXPECT_ERR(tq_attend(ctx, 0, q, 2, NULL, ks, vs, CELLS, mask, TQ_DTYPE_F32, CELLS, scale, NULL, NULL, NULL), TQ_STATUS_NULL_POINTER, "out");
    EXPECT_ERR(tq_attend(ctx, 0, q, 2, NULL, ks, vs, CELLS, mask, 9, CELLS, scale, out, NULL, NULL), TQ_STATUS_INVALID_ARGUMENT, "mask_dtype");
    EXPECT_ERR(tq_attend(ctx, 0, q, 2, NULL, ks, vs, CELLS, mask, TQ_DTYPE_F32, CELLS - 1, scale, out, NULL, NULL), TQ_STATUS_INVALID_ARGUMENT, "mask_row_stride");
    EXPECT_ERR(tq_attend(ctx, 0, q, 2, NULL, ks, vs, CELLS, mask, TQ_DTYPE_F32, CELLS, INFINITY, out, NULL, NULL), TQ_STATUS_INVALID_ARGUMENT, "scale");
    EXPECT_OK(tq_attend(ctx, 0, q, 2, NULL, ks, vs, CELLS, mask, TQ_DTYPE_F32, CELLS, scale, out, NULL, NULL));
    /* Against exact attention in double over the uncompressed K/V (cell slots[t] holds token t): at 4
     * bits the value rows alone are ~0.1 off relative (sqrt of the 0.0093 MSE at d = 32 is ~0.1), so 0.3
     * bounds the output; an attend returning zeros or another cell's rows is ~1 off. */
    {
        double err = 0, norm = 0;
        for (int i = 0; i < 2; i++)
            for (int h = 0; h < NH; h++) {
                const int kvh = h / (NH / NKV);
                double w[CELLS], m = -INFINITY, sum = 0;
                for (int t = 0; t < CELLS; t++) {
                    const int c = (int)slots[t];
                    w[t] = -INFINITY;
                    if (mask[i * CELLS + c] != 0.0f) continue;
                    double dot = 0;
                    for (int e = 0; e < D; e++) dot += (double)q[(i * NH + h) * D + e] * k[(t * NKV + kvh) * D + e];
                    w[t] = dot * scale;
                    if (w[t] > m) m = w[t];
                }
                for (int t = 0; t < CELLS; t++) sum += w[t] == -INFINITY ? 0 : exp(w[t] - m);
                for (int e = 0; e < D; e++) {
                    double o = 0;
                    for (int t = 0; t < CELLS; t++)
                        if (w[t] != -INFINITY) o += exp(w[t] - m) / sum * v[(t * NKV + kvh) * D + e];
                    const double got = out[(i * NH + h) * D + e];
                    err += (got - o) * (got - o);
                    norm += o * o;
                }
            }
        CHECK(norm > 0 && sqrt(err / norm) < 0.3, "attend vs exact attention over the uncompressed rows: relative error %.4f", sqrt(err / norm));
    }
    /* The _part variants over 3 "threads" reproduce the plain call exactly. */
    for (uint32_t i = 0; i < 3; i++)
        EXPECT_OK(tq_attend_part(ctx, 0, q, 2, NULL, ks, vs, CELLS, mask, TQ_DTYPE_F32, CELLS, scale, out2, NULL, i, 3));
    CHECK(memcmp(out, out2, sizeof out) == 0, "attend_part differs from attend");
    EXPECT_ERR(tq_attend_part(ctx, 0, q, 2, NULL, ks, vs, CELLS, mask, TQ_DTYPE_F32, CELLS, scale, out2, NULL, 3, 3), TQ_STATUS_INVALID_ARGUMENT, "ith");
    EXPECT_ERR(tq_append_kv_part(ctx, 1, ks, vs, CELLS, slots, CELLS, k, NULL, v, NULL, 0, 0), TQ_STATUS_INVALID_ARGUMENT, "nth");
    unsigned char *ks2 = calloc(CELLS, kr), *vs2 = calloc(CELLS, vr);
    for (uint32_t i = 0; i < 2; i++)
        EXPECT_OK(tq_append_kv_part(ctx, 1, ks2, vs2, CELLS, slots, CELLS, k, NULL, v, NULL, i, 2));
    /* Layer 1 got the same inputs but its own rotation: rows differ from layer 0's. */
    CHECK(memcmp(ks, ks2, CELLS * kr) != 0, "layers must use distinct rotations");

    /* State: centering means of layers 0 and 1 are set now. */
    size_t ss = 0;
    EXPECT_OK(tq_context_state_size(ctx, &ss));
    unsigned char *state = malloc(ss);
    EXPECT_ERR(tq_context_state_save(ctx, state, ss - 1), TQ_STATUS_INVALID_ARGUMENT, "size");
    EXPECT_OK(tq_context_state_save(ctx, state, ss));
    tq_context *ctx2 = NULL;
    EXPECT_OK(tq_context_new(&p, &ctx2));
    EXPECT_ERR(tq_context_state_load(ctx2, state, ss - 3), TQ_STATUS_CORRUPT_DATA, "bytes");
    state[0] ^= 1;
    EXPECT_ERR(tq_context_state_load(ctx2, state, ss), TQ_STATUS_CORRUPT_DATA, "magic");
    state[0] ^= 1;
    EXPECT_OK(tq_context_state_load(ctx2, state, ss));
    /* The restored context attends identically over the same rows. */
    EXPECT_OK(tq_attend(ctx2, 0, q, 2, NULL, ks, vs, CELLS, mask, TQ_DTYPE_F32, CELLS, scale, out2, NULL, NULL));
    CHECK(memcmp(out, out2, sizeof out) == 0, "state load must restore the means");
    tq_context_params other = p;
    other.seed = 5;
    tq_context *ctx3 = NULL;
    EXPECT_OK(tq_context_new(&other, &ctx3));
    EXPECT_ERR(tq_context_state_load(ctx3, state, ss), TQ_STATUS_INCOMPATIBLE, "different parameters");
    tq_context_free(ctx3);
    tq_context_free(ctx2);
    free(state); free(ks); free(vs); free(ks2); free(vs2);
    tq_context_free(ctx);
}

static void test_cache(void) {
    tq_context_params p = tq_context_default_params();
    p.n_layers = 1; p.n_heads = NH; p.n_kv_heads = NKV; p.head_dim = D;
    tq_context *ctx = NULL;
    EXPECT_OK(tq_context_new(&p, &ctx));
    tq_cache_params cp = tq_cache_default_params();
    CHECK(cp.struct_size == sizeof cp && tq_cache_params_size() == sizeof cp && cp.residual_window == 128, "cache defaults");
    tq_cache *c = NULL;
    EXPECT_ERR(tq_cache_new(NULL, &cp, &c), TQ_STATUS_NULL_POINTER, "ctx");
    EXPECT_ERR(tq_cache_new(ctx, NULL, &c), TQ_STATUS_NULL_POINTER, "params");
    tq_cache_params bad = cp;
    bad.struct_size = 3;
    EXPECT_ERR(tq_cache_new(ctx, &bad, &c), TQ_STATUS_ABI_MISMATCH, "struct_size");
    bad = cp; bad.max_seqs = 0;
    EXPECT_ERR(tq_cache_new(ctx, &bad, &c), TQ_STATUS_INVALID_ARGUMENT, "max_seqs");
    tq_cache_free(NULL);
    cp.max_seqs = 2; cp.max_tokens = 64; cp.residual_window = 4; cp.n_sink = 1;
    EXPECT_OK(tq_cache_new(ctx, &cp, &c));

    float k[20 * NKV * D], v[20 * NKV * D], q[NH * D], out[NH * D], out2[NH * D];
    fill(k, 20 * NKV * D, 4); fill(v, 20 * NKV * D, 5); fill(q, NH * D, 6);
    EXPECT_ERR(tq_cache_append(NULL, 0, 0, 20, k, v, NULL), TQ_STATUS_NULL_POINTER, "cache");
    EXPECT_ERR(tq_cache_append(c, 1, 0, 20, k, v, NULL), TQ_STATUS_INVALID_ARGUMENT, "layer");
    EXPECT_ERR(tq_cache_append(c, 0, 2, 20, k, v, NULL), TQ_STATUS_INVALID_ARGUMENT, "seq");
    EXPECT_ERR(tq_cache_append(c, 0, 0, 20, NULL, v, NULL), TQ_STATUS_NULL_POINTER, "k");
    EXPECT_OK(tq_cache_append(c, 0, 0, 20, k, v, NULL));
    EXPECT_ERR(tq_cache_attend(c, 0, 0, NULL, 1, 0.1f, out, NULL), TQ_STATUS_NULL_POINTER, "q");
    EXPECT_ERR(tq_cache_attend(c, 0, 1, q, 1, 0.1f, out, NULL), TQ_STATUS_INVALID_ARGUMENT, "n_q");
    EXPECT_ERR(tq_cache_attend(c, 0, 0, q, 1, 0.1f, NULL, NULL), TQ_STATUS_NULL_POINTER, "out");
    EXPECT_OK(tq_cache_attend(c, 0, 0, q, 1, 0.1f, out, NULL));
    size_t len = 0;
    EXPECT_OK(tq_cache_seq_len(c, 0, &len));
    CHECK(len == 20, "seq_len %zu", len);
    EXPECT_ERR(tq_cache_seq_len(c, 0, NULL), TQ_STATUS_NULL_POINTER, "out");
    tq_cache_memory mem;
    EXPECT_OK(tq_cache_memory_usage(c, &mem));
    CHECK(mem.n_tokens == 20 && mem.n_compressed == 15 && mem.bytes_fp16 == 20 * 2 * NKV * D * 2, "memory %zu %zu %zu", mem.n_tokens, mem.n_compressed, mem.bytes_fp16);
    EXPECT_ERR(tq_cache_memory_usage(c, NULL), TQ_STATUS_NULL_POINTER, "out");

    EXPECT_OK(tq_cache_seq_cp(c, 0, 1, -1, -1));
    EXPECT_OK(tq_cache_attend(c, 0, 1, q, 1, 0.1f, out2, NULL));
    CHECK(memcmp(out, out2, sizeof out) == 0, "seq_cp must copy exactly");
    EXPECT_ERR(tq_cache_seq_cp(c, 0, 5, -1, -1), TQ_STATUS_INVALID_ARGUMENT, "seq");
    EXPECT_OK(tq_cache_seq_rm(c, 1, 10, -1));
    EXPECT_OK(tq_cache_seq_len(c, 1, &len));
    CHECK(len == 10, "seq_rm left %zu", len);

    size_t need = 0, written = 0;
    EXPECT_OK(tq_cache_save(c, NULL, 0, &need));
    unsigned char *buf = malloc(need);
    EXPECT_ERR(tq_cache_save(c, buf, need - 1, &written), TQ_STATUS_INVALID_ARGUMENT, "size");
    EXPECT_ERR(tq_cache_save(c, buf, need, NULL), TQ_STATUS_NULL_POINTER, "written");
    EXPECT_OK(tq_cache_save(c, buf, need, &written));
    EXPECT_OK(tq_cache_seq_keep(c, 1));
    EXPECT_OK(tq_cache_seq_len(c, 0, &len));
    CHECK(len == 0, "seq_keep left %zu in seq 0", len);
    EXPECT_OK(tq_cache_clear(c));
    EXPECT_ERR(tq_cache_load(c, buf, need - 1), TQ_STATUS_CORRUPT_DATA, "checksum");
    EXPECT_ERR(tq_cache_load(c, NULL, need), TQ_STATUS_NULL_POINTER, "buf");
    EXPECT_OK(tq_cache_load(c, buf, need));
    EXPECT_OK(tq_cache_attend(c, 0, 0, q, 1, 0.1f, out2, NULL));
    CHECK(memcmp(out, out2, sizeof out) == 0, "load must restore exactly");

    const char *path = "tq_kv_api_test.bin";
    EXPECT_OK(tq_cache_save_file(c, path));
    EXPECT_OK(tq_cache_clear(c));
    EXPECT_OK(tq_cache_load_file(c, path));
    EXPECT_OK(tq_cache_seq_len(c, 0, &len));
    CHECK(len == 20, "file round trip %zu", len);
    remove(path);
    EXPECT_ERR(tq_cache_load_file(c, path), TQ_STATUS_IO_ERROR, path);
    EXPECT_ERR(tq_cache_save_file(c, NULL), TQ_STATUS_NULL_POINTER, "path");
    free(buf);
    tq_cache_free(c);
    tq_context_free(ctx);
}

int main(void) {
    test_context();
    test_cache();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
