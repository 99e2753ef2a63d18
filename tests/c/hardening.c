/* Regression tests of the hardening issue's eleven cases: each call below once crashed, hung,
 * exhausted memory or returned garbage with status OK; each must now fail cleanly or succeed with
 * correct results. Cases are numbered as in the issue. Shared byte-level helpers (CRC-32, the cache
 * file layout of a one-layer, one-head cache) are in tests/c/robust.h. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "check.h"
#include "robust.h"

static void case1_n_tokens_before_allocation(void) {
    tq_context *ctx = small_context(0, 1);
    uint8_t ks[4096], vs[4096];
    int64_t slots[1] = {0};
    float kv[16] = {0};
    CHECK_FAILS(tq_append_kv(ctx, 0, ks, vs, 16, slots, (size_t)1 << 32, kv, NULL, kv, NULL, NULL),
                TQ_STATUS_INVALID_ARGUMENT, "n_tokens");
    tq_context_free(ctx);
}

static void case2_cache_new_is_lazy(void) {
    tq_context_params p = tq_context_default_params();
    p.n_layers = 4096; p.n_heads = 1; p.n_kv_heads = 1; p.head_dim = 16;
    p.rotation = TQ_ROTATION_HADAMARD; p.n_threads = 1;
    tq_context *ctx = NULL;
    CHECK_STATUS(tq_context_new(&p, &ctx), TQ_STATUS_OK);
    tq_cache_params cp = tq_cache_default_params();
    cp.max_seqs = 65536; cp.max_tokens = 8;
    tq_cache *cache = NULL;
    CHECK_STATUS(tq_cache_new(ctx, &cp, &cache), TQ_STATUS_OK);
    float k[16], q[16], out[16];
    for (int i = 0; i < 16; i++) { k[i] = (float)(i - 8) / 8.0f; q[i] = 0.5f; }
    CHECK_STATUS(tq_cache_append(cache, 4095, 65535, 1, k, k, NULL), TQ_STATUS_OK);
    CHECK_STATUS(tq_cache_attend(cache, 4095, 65535, q, 1, 0.25f, out, NULL), TQ_STATUS_OK);
    /* One token: attention returns its V (kept in full precision by the residual window). */
    for (int i = 0; i < 16; i++) CHECK(fabsf(out[i] - k[i]) < 1e-5f);
    size_t len = 1;
    CHECK_STATUS(tq_cache_seq_len(cache, 65534, &len), TQ_STATUS_OK);
    CHECK(len == 0);
    tq_cache_free(cache);
    tq_context_free(ctx);
}

static void case3_dense_cost_bounded(void) {
    tq_context_params p = tq_context_default_params();
    p.n_layers = 4096; p.head_dim = 1024; p.n_heads = 1; p.n_kv_heads = 1;
    p.rotation = TQ_ROTATION_DENSE;
    tq_context *ctx = NULL;
    CHECK_FAILS(tq_context_new(&p, &ctx), TQ_STATUS_UNSUPPORTED, "dense rotations");
    CHECK(ctx == NULL);
    /* HADAMARD heads with key outliers: the 1008-channel part of each key head is not a power of
     * two, so it rotates densely; 4096 such layers are refused the same way, naming the parts. */
    p.rotation = TQ_ROTATION_HADAMARD; p.key_outliers = 16; p.bits_k = 4;
    CHECK_FAILS(tq_context_new(&p, &ctx), TQ_STATUS_UNSUPPORTED, "key parts of 16 and 1008");
    CHECK(ctx == NULL);
}

/* A saved cache of 4 tokens with residual window 2: 2 compressed, 2 full rows. */
static size_t saved_cache(tq_context *ctx, uint8_t **bytes) {
    tq_cache *cache = filled_cache(ctx, 4);
    size_t size = 0;
    tq_cache_save(cache, NULL, 0, &size);
    *bytes = malloc(size);
    CHECK_STATUS(tq_cache_save(cache, *bytes, size, &size), TQ_STATUS_OK);
    tq_cache_free(cache);
    return size;
}

static void case4_semantic_load_checks(void) {
    tq_context *ctx = small_context(0, 1);
    size_t kr, vr;
    tq_context_row_bytes(ctx, &kr, &vr);
    uint8_t *bytes;
    size_t size = saved_cache(ctx, &bytes);
    tq_cache *cache = filled_cache(ctx, 0);
    cache_layout L = layout_of(bytes, kr, vr);
    CHECK(L.nc == 2 && L.nf == 2);
    uint8_t *b = malloc(size);
    /* NaN and +inf bf16 norm scale of compressed K row 0, CRC recomputed. */
    uint16_t bad[3] = {0x7FC0, 0x7F80, 0xFF80};
    for (int i = 0; i < 3; i++) {
        memcpy(b, bytes, size);
        memcpy(b + L.comp_k + kr - 2, &bad[i], 2);
        fix_crc(b, size);
        CHECK_FAILS(tq_cache_load(cache, b, size), TQ_STATUS_CORRUPT_DATA, "scale");
    }
    /* A huge finite full-precision value and a huge finite V value. */
    float huge = 1e30f;
    size_t offs[2] = {L.full_k, L.full_v + 4};
    for (int i = 0; i < 2; i++) {
        memcpy(b, bytes, size);
        memcpy(b + offs[i], &huge, 4);
        fix_crc(b, size);
        CHECK_FAILS(tq_cache_load(cache, b, size), TQ_STATUS_CORRUPT_DATA, "2^64");
    }
    CHECK_STATUS(tq_cache_load(cache, bytes, size), TQ_STATUS_OK);
    free(b); free(bytes);
    /* The scale checks accept what appends write, for PROD keys (norm and residual scales) too. */
    tq_context_params pp = tq_context_default_params();
    pp.n_layers = 2; pp.n_heads = 4; pp.n_kv_heads = 2; pp.head_dim = 32; pp.key_mode = TQ_KEY_MODE_PROD;
    pp.bits_k = 3; pp.n_threads = 1;
    tq_context *prod = NULL;
    CHECK_STATUS(tq_context_new(&pp, &prod), TQ_STATUS_OK);
    tq_cache_params cp = tq_cache_default_params();
    cp.max_seqs = 2; cp.residual_window = 1;
    tq_cache *pc = NULL, *pc2 = NULL;
    CHECK_STATUS(tq_cache_new(prod, &cp, &pc), TQ_STATUS_OK);
    CHECK_STATUS(tq_cache_new(prod, &cp, &pc2), TQ_STATUS_OK);
    float kv[6 * 64];
    for (int i = 0; i < 6 * 64; i++) kv[i] = (float)((i * 37) % 23) / 7.0f - 1.5f;
    for (uint32_t l = 0; l < 2; l++)
        for (uint32_t sq = 0; sq < 2; sq++) CHECK_STATUS(tq_cache_append(pc, l, sq, 6, kv, kv, NULL), TQ_STATUS_OK);
    size_t psize = 0;
    tq_cache_save(pc, NULL, 0, &psize);
    uint8_t *pb = malloc(psize), *pb2 = malloc(psize);
    CHECK_STATUS(tq_cache_save(pc, pb, psize, &psize), TQ_STATUS_OK);
    CHECK_STATUS(tq_cache_load(pc2, pb, psize), TQ_STATUS_OK);
    CHECK_STATUS(tq_cache_save(pc2, pb2, psize, &psize), TQ_STATUS_OK);
    CHECK(memcmp(pb, pb2, psize) == 0);
    free(pb); free(pb2);
    tq_cache_free(pc); tq_cache_free(pc2);
    tq_context_free(prod);
    tq_cache_free(cache);
    tq_context_free(ctx);
}

static void case5_position_range(void) {
    tq_context *ctx = small_context(0, 1);
    size_t kr, vr;
    tq_context_row_bytes(ctx, &kr, &vr);
    uint8_t *bytes;
    size_t size = saved_cache(ctx, &bytes);
    cache_layout L = layout_of(bytes, kr, vr);
    int64_t big = INT64_MAX;
    memcpy(bytes + L.full_pos + 8, &big, 8);
    fix_crc(bytes, size);
    tq_cache *cache = filled_cache(ctx, 0);
    CHECK_FAILS(tq_cache_load(cache, bytes, size), TQ_STATUS_CORRUPT_DATA, "positions");
    size_t len = 1;
    CHECK_STATUS(tq_cache_seq_len(cache, 0, &len), TQ_STATUS_OK);
    CHECK(len == 0);
    free(bytes);
    tq_cache_free(cache);
    tq_context_free(ctx);
}

static void case6_state_checksum(void) {
    tq_context *ctx = small_context(1, 1);
    tq_cache *cache = filled_cache(ctx, 4); /* freezes the centering means of layer 0 */
    size_t n = 0;
    CHECK_STATUS(tq_context_state_size(ctx, &n), TQ_STATUS_OK);
    uint8_t *st = malloc(n), *b = malloc(n);
    CHECK_STATUS(tq_context_state_save(ctx, st, n), TQ_STATUS_OK);
    tq_context *other = small_context(1, 1);
    int accepted = 0;
    for (size_t bit = 0; bit < n * 8; bit += 7) {
        memcpy(b, st, n);
        b[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        if (tq_context_state_load(other, b, n) == TQ_STATUS_OK) accepted++;
    }
    CHECK(accepted == 0);
    CHECK_STATUS(tq_context_state_load(other, st, n), TQ_STATUS_OK);
    free(st); free(b);
    tq_cache_free(cache);
    tq_context_free(other);
    tq_context_free(ctx);
}

static int leftover_temporaries(const char *dir) {
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp") != NULL) n++;
    if (d) closedir(d);
    return n;
}

static void case7_save_file(void) {
    char dir[] = "/tmp/tq_hardening_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256], victim[256], link_path[256], sub[256], inner[300];
    snprintf(path, sizeof path, "%s/cache.tq", dir);
    snprintf(victim, sizeof victim, "%s/victim", dir);
    snprintf(link_path, sizeof link_path, "%s/cache.tq.tmp", dir);
    FILE *f = fopen(victim, "w");
    fputs("victim", f);
    fclose(f);
    CHECK(symlink(victim, link_path) == 0);
    tq_context *ctx = small_context(0, 1);
    tq_cache *cache = filled_cache(ctx, 4);
    CHECK_STATUS(tq_cache_save_file(cache, path), TQ_STATUS_OK);
    char text[16] = {0};
    f = fopen(victim, "r");
    CHECK(fread(text, 1, sizeof text - 1, f) == 6 && strcmp(text, "victim") == 0);
    fclose(f);
    unlink(link_path);
    CHECK_STATUS(tq_cache_load_file(cache, path), TQ_STATUS_OK);
    /* A failed rename (the target is a non-empty folder) leaves no temporary behind. */
    snprintf(sub, sizeof sub, "%s/folder", dir);
    snprintf(inner, sizeof inner, "%s/x", sub);
    CHECK(mkdir(sub, 0700) == 0);
    f = fopen(inner, "w");
    fclose(f);
    CHECK_STATUS(tq_cache_save_file(cache, sub), TQ_STATUS_IO_ERROR);
    CHECK(leftover_temporaries(dir) == 0);
    CHECK_FAILS(tq_cache_save_file(cache, ""), TQ_STATUS_INVALID_ARGUMENT, "path");
    CHECK(leftover_temporaries(".") == 0);
    unlink(inner); rmdir(sub); unlink(path); unlink(victim); rmdir(dir);
    tq_cache_free(cache);
    tq_context_free(ctx);
}

static void case8_fifo(void) {
    char dir[] = "/tmp/tq_hardening_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char fifo[256];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    CHECK(mkfifo(fifo, 0600) == 0);
    tq_context *ctx = small_context(0, 1);
    tq_cache *cache = filled_cache(ctx, 0);
    alarm(20); /* a blocking load kills the program (and fails the test) instead of hanging */
    CHECK_FAILS(tq_cache_load_file(cache, fifo), TQ_STATUS_IO_ERROR, "regular file");
    CHECK_FAILS(tq_cache_load_file(cache, dir), TQ_STATUS_IO_ERROR, "regular file");
    alarm(0);
    unlink(fifo); rmdir(dir);
    tq_cache_free(cache);
    tq_context_free(ctx);
}

static void case9_size_arithmetic(void) {
    tq_context *ctx = small_context(0, 1);
    size_t kr, vr;
    tq_context_row_bytes(ctx, &kr, &vr);
    uint8_t *ks = calloc(4, kr), *vs = calloc(4, vr);
    float kv[16], q[16], out[16], mask[4] = {0};
    for (int i = 0; i < 16; i++) kv[i] = q[i] = 0.1f * (float)i;
    int64_t slot = (int64_t)1 << 59;
    CHECK_FAILS(tq_append_kv(ctx, 0, ks, vs, (size_t)1 << 60, &slot, 1, kv, NULL, kv, NULL, NULL),
                TQ_STATUS_INVALID_ARGUMENT, "n_cells");
    int64_t s0 = 0;
    tq_strides wrapped = {(size_t)0 - 64, 64};
    int64_t s01[2] = {0, 1};
    CHECK_FAILS(tq_append_kv(ctx, 0, ks, vs, 4, s01, 2, kv, &wrapped, kv, NULL, NULL), TQ_STATUS_INVALID_ARGUMENT, "k_strides");
    float q2[32] = {0}, out2[32];
    CHECK_FAILS(tq_attend(ctx, 0, q2, 2, &wrapped, ks, vs, 1, NULL, 0, 0, 0.25f, out2, NULL, NULL),
                TQ_STATUS_INVALID_ARGUMENT, "q_strides");
    CHECK_STATUS(tq_append_kv(ctx, 0, ks, vs, 4, &s0, 1, kv, NULL, kv, NULL, NULL), TQ_STATUS_OK);
    CHECK_FAILS(tq_attend(ctx, 0, q2, 2, NULL, ks, vs, 1, mask, TQ_DTYPE_F32, SIZE_MAX, 0.25f, out2, NULL, NULL),
                TQ_STATUS_INVALID_ARGUMENT, "mask_row_stride");
    tq_strides far = {(size_t)1 << 62, 64};
    float q3[48] = {0};
    CHECK_FAILS(tq_attend(ctx, 0, q3, 3, NULL, ks, vs, 1, NULL, 0, 0, 0.25f, out, &far, NULL),
                TQ_STATUS_INVALID_ARGUMENT, "out_strides");
    free(ks); free(vs);
    tq_context_free(ctx);
}

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) if (!isfinite(x[i])) return 0;
    return 1;
}

static void case10_finite_in_finite_out(void) {
    tq_context *ctx = small_context(0, 1);
    size_t kr, vr;
    tq_context_row_bytes(ctx, &kr, &vr);
    uint8_t *ks = calloc(2, kr), *vs = calloc(2, vr);
    float k[32], q[16], out[16];
    for (int i = 0; i < 32; i++) k[i] = 0.1f * (float)(i % 7);
    for (int i = 0; i < 16; i++) q[i] = 0.2f;
    int64_t slots[2] = {0, 1};
    k[3] = 3e38f;
    tq_status s = tq_append_kv(ctx, 0, ks, vs, 2, slots, 2, k, NULL, k, NULL, NULL);
    if (s == TQ_STATUS_OK) {
        s = tq_attend(ctx, 0, q, 1, NULL, ks, vs, 2, NULL, 0, 0, 1.0f, out, NULL, NULL);
        CHECK(s != TQ_STATUS_OK || all_finite(out, 16));
    }
    CHECK(s != TQ_STATUS_OK);
    k[3] = 0.5f;
    CHECK_STATUS(tq_append_kv(ctx, 0, ks, vs, 2, slots, 2, k, NULL, k, NULL, NULL), TQ_STATUS_OK);
    for (int i = 0; i < 16; i++) q[i] = (float)(i % 2 ? 1 : -1);
    s = tq_attend(ctx, 0, q, 1, NULL, ks, vs, 2, NULL, 0, 0, 3e38f, out, NULL, NULL);
    CHECK(s == TQ_STATUS_NON_FINITE || (s == TQ_STATUS_OK && all_finite(out, 16)));
    /* The _part variant: each share checks the vectors it wrote, so the shares together refuse what
       the whole call refuses, and a share that returns OK wrote only finite values. */
    tq_status whole = s;
    int refused = 0;
    for (uint32_t ith = 0; ith < 2; ith++) {
        for (int i = 0; i < 16; i++) out[i] = 0.0f;
        s = tq_attend_part(ctx, 0, q, 1, NULL, ks, vs, 2, NULL, 0, 0, 3e38f, out, NULL, ith, 2);
        CHECK(s == TQ_STATUS_NON_FINITE || (s == TQ_STATUS_OK && all_finite(out, 16)));
        refused += s == TQ_STATUS_NON_FINITE;
    }
    CHECK((whole == TQ_STATUS_NON_FINITE) == (refused > 0));
    CHECK_STATUS(tq_attend(ctx, 0, q, 1, NULL, ks, vs, 2, NULL, 0, 0, 0.25f, out, NULL, NULL), TQ_STATUS_OK);
    CHECK(all_finite(out, 16));
    /* The owned cache: huge finite K is refused at append. */
    tq_cache *cache = filled_cache(ctx, 0);
    k[3] = 3e38f;
    CHECK_FAILS(tq_cache_append(cache, 0, 0, 1, k, k, NULL), TQ_STATUS_NON_FINITE, "2^64");
    free(ks); free(vs);
    tq_cache_free(cache);
    tq_context_free(ctx);
}

static void case11_threads_capped(void) {
    tq_context *one = small_context(0, 1);
    tq_context *many = small_context(0, 0xFFFFFFFFu);
    CHECK(many != NULL);
    enum { N = 512 };
    size_t kr, vr;
    tq_context_row_bytes(one, &kr, &vr);
    uint8_t *ks1 = calloc(N, kr), *vs1 = calloc(N, vr), *ks2 = calloc(N, kr), *vs2 = calloc(N, vr);
    float *k = malloc(sizeof(float) * 16 * N), q[16 * 8], o1[16 * 8], o2[16 * 8];
    int64_t slots[N];
    uint32_t r = 12345;
    for (int i = 0; i < 16 * N; i++) { r = r * 1664525u + 1013904223u; k[i] = (float)(r >> 8) / 16777216.0f - 0.5f; }
    for (int i = 0; i < 16 * 8; i++) q[i] = k[i * 3];
    for (int i = 0; i < N; i++) slots[i] = i;
    CHECK_STATUS(tq_append_kv(one, 0, ks1, vs1, N, slots, N, k, NULL, k, NULL, NULL), TQ_STATUS_OK);
    CHECK_STATUS(tq_append_kv(many, 0, ks2, vs2, N, slots, N, k, NULL, k, NULL, NULL), TQ_STATUS_OK);
    CHECK(memcmp(ks1, ks2, N * kr) == 0 && memcmp(vs1, vs2, N * vr) == 0);
    CHECK_STATUS(tq_attend(one, 0, q, 8, NULL, ks1, vs1, N, NULL, 0, 0, 0.25f, o1, NULL, NULL), TQ_STATUS_OK);
    CHECK_STATUS(tq_attend(many, 0, q, 8, NULL, ks2, vs2, N, NULL, 0, 0, 0.25f, o2, NULL, NULL), TQ_STATUS_OK);
    /* The outputs average values in [-0.5, 0.5]; the two contexts may split the cells differently
     * (one thread against the capped count), so the same f32 terms are summed in another order: a
     * few ulps of 0.5 (6e-8 each), 1e-6 absolute. An uncapped thread count would fail or crash. */
    float worst = 0;
    for (int i = 0; i < 16 * 8; i++) worst = fmaxf(worst, fabsf(o1[i] - o2[i]));
    CHECK(worst <= 1e-6f);
    free(ks1); free(vs1); free(ks2); free(vs2); free(k);
    tq_context_free(one);
    tq_context_free(many);
}

/* Outputs whose vectors overlap and K/V stores that share bytes would be written by several threads
 * at once: refused, naming the argument, with nothing written. Non-overlapping strided outputs (a
 * head-major layout, a padded row) are accepted and agree with the packed output. */
static void case12_overlapping_outputs_and_stores(void) {
    tq_context *ctx = small_context(0, 2);
    enum { N = 8 };
    size_t kr, vr;
    tq_context_row_bytes(ctx, &kr, &vr);
    uint8_t *store = calloc(N, kr + vr), *vs = calloc(N, vr);
    float k[16 * N], q[16 * 2], out[16 * 4], packed[16 * 2];
    int64_t slots[N];
    for (int i = 0; i < 16 * N; i++) k[i] = (float)((i * 7) % 13) / 6.0f - 1.0f;
    for (int i = 0; i < 32; i++) q[i] = (float)(i % 5) - 2.0f;
    for (int i = 0; i < N; i++) slots[i] = i;
    /* The same buffer for K and V, and V starting inside K. */
    CHECK_FAILS(tq_append_kv(ctx, 0, store, store, N, slots, N, k, NULL, k, NULL, NULL), TQ_STATUS_INVALID_ARGUMENT, "overlap");
    CHECK_FAILS(tq_append_kv(ctx, 0, store, store + kr, N, slots, N, k, NULL, k, NULL, NULL), TQ_STATUS_INVALID_ARGUMENT, "overlap");
    int untouched = 1;
    for (size_t i = 0; i < N * (kr + vr); i++) untouched &= store[i] == 0;
    CHECK(untouched);
    /* Adjacent stores are fine. */
    CHECK_STATUS(tq_append_kv(ctx, 0, store, store + N * kr, N, slots, N, k, NULL, k, NULL, NULL), TQ_STATUS_OK);
    uint8_t *ks = store, *vs2 = store + N * kr;
    CHECK_STATUS(tq_attend(ctx, 0, q, 2, NULL, ks, vs2, N, NULL, 0, 0, 0.25f, packed, NULL, NULL), TQ_STATUS_OK);
    /* Token stride 0 for two query tokens: both rows at the same bytes. */
    tq_strides zero = {0, 16 * sizeof(float)};
    for (int i = 0; i < 64; i++) out[i] = -7.0f;
    CHECK_FAILS(tq_attend(ctx, 0, q, 2, NULL, ks, vs2, N, NULL, 0, 0, 0.25f, out, &zero, NULL), TQ_STATUS_INVALID_ARGUMENT, "out_strides");
    CHECK(out[0] == -7.0f && out[16] == -7.0f);
    /* A token stride of 12 floats for 16-float vectors overlaps too. */
    tq_strides short_stride = {12 * sizeof(float), 16 * sizeof(float)};
    CHECK_FAILS(tq_attend(ctx, 0, q, 2, NULL, ks, vs2, N, NULL, 0, 0, 0.25f, out, &short_stride, NULL), TQ_STATUS_INVALID_ARGUMENT, "token stride");
    /* A padded token stride of 32 floats: rows 0 and 32 of `out`, equal to the packed rows. */
    tq_strides padded = {32 * sizeof(float), 16 * sizeof(float)};
    CHECK_STATUS(tq_attend(ctx, 0, q, 2, NULL, ks, vs2, N, NULL, 0, 0, 0.25f, out, &padded, NULL), TQ_STATUS_OK);
    CHECK(memcmp(out, packed, 16 * sizeof(float)) == 0 && memcmp(out + 32, packed + 16, 16 * sizeof(float)) == 0);
    /* tq_dequantize_rows: two cells' vectors at the same place. */
    float rows[16 * N];
    tq_strides rows_zero = {0, 16 * sizeof(float)};
    CHECK_FAILS(tq_dequantize_rows(ctx, 0, TQ_KV_KEYS, ks, N, rows, TQ_DTYPE_F32, &rows_zero, NULL), TQ_STATUS_INVALID_ARGUMENT, "out_strides");
    free(store); free(vs);
    tq_context_free(ctx);
}

/* With an argument N, only case N runs (to show each case failing against an older library). */
int main(int argc, char **argv) {
    void (*cases[12])(void) = {
        case1_n_tokens_before_allocation, case2_cache_new_is_lazy, case3_dense_cost_bounded,
        case4_semantic_load_checks, case5_position_range, case6_state_checksum, case7_save_file,
        case8_fifo, case9_size_arithmetic, case10_finite_in_finite_out, case11_threads_capped,
        case12_overlapping_outputs_and_stores,
    };
    int only = argc > 1 ? atoi(argv[1]) : 0;
    for (int i = 0; i < 12; i++)
        if (only == 0 || only == i + 1) cases[i]();
    return check_summary("hardening");
}
