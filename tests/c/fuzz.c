/* Robustness suite: every export with NULL and invalid arguments, and bounded random mutation of
 * saved caches and context states (truncations, bit flips, byte overwrites, and CRC-recomputed
 * semantic corruption). Every case must return an error, or load and then behave correctly:
 *   - a load that fails leaves the cache bit-identical (its save is unchanged);
 *   - a mutated buffer whose CRC was not recomputed never loads (that would be silent corruption);
 *   - a load that succeeds gives a cache whose attention is finite and whose own save loads again.
 * Runs `TQ_FUZZ_ITERS` mutations (default 300) from seed `TQ_FUZZ_SEED` (default 1): `make fuzz`
 * builds it with ASan/UBSan (mk/fuzz.mk); tests/c_api.rs runs the default, un-instrumented. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "robust.h"

static uint64_t rng_state;
static uint32_t rnd(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static unsigned long env_or(const char *name, unsigned long fallback) {
    const char *s = getenv(name);
    return s && *s ? strtoul(s, NULL, 10) : fallback;
}

static void null_arguments(void) {
    tq_context *ctx = small_context(1, 1);
    tq_cache *cache = filled_cache(ctx, 3);
    float x[64] = {0};
    uint8_t b[64] = {0};
    size_t n = 0;
    int64_t slot = 0;
    tq_cache_params cp = tq_cache_default_params();
    tq_context_params p = tq_context_default_params();
    CHECK(tq_version() != NULL && tq_status_to_string(99) != NULL && tq_last_error_message() != NULL);
    CHECK(tq_cache_params_size() == sizeof(tq_cache_params) && tq_context_params_size() == sizeof(tq_context_params));
    CHECK(tq_cache_new(NULL, &cp, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_new(ctx, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_new(ctx, &cp, NULL) != TQ_STATUS_OK);
    tq_cache_free(NULL);
    CHECK(tq_cache_append(NULL, 0, 0, 1, x, x, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_append(cache, 0, 0, 1, NULL, x, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_append(cache, 0, 0, 1, x, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_append(cache, 9, 0, 1, x, x, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_append(cache, 0, 9, 1, x, x, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_attend(NULL, 0, 0, x, 1, 1.0f, x, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_attend(cache, 0, 0, NULL, 1, 1.0f, x, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_attend(cache, 0, 0, x, 1, 1.0f, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_attend(cache, 0, 0, x, 1, NAN, x, NULL) != TQ_STATUS_OK);
    float *big = calloc(99 * 16, sizeof(float));
    CHECK(tq_cache_attend(cache, 0, 0, big, 99, 1.0f, big, NULL) != TQ_STATUS_OK);
    free(big);
    CHECK(tq_cache_seq_rm(NULL, 0, 0, 1) != TQ_STATUS_OK);
    CHECK(tq_cache_seq_rm(cache, 5, 0, 1) != TQ_STATUS_OK);
    CHECK(tq_cache_seq_cp(NULL, 0, 0, 0, 1) != TQ_STATUS_OK);
    CHECK(tq_cache_seq_cp(cache, 0, 7, 0, 1) != TQ_STATUS_OK);
    CHECK(tq_cache_seq_keep(NULL, 0) != TQ_STATUS_OK);
    CHECK(tq_cache_seq_keep(cache, 7) != TQ_STATUS_OK);
    CHECK(tq_cache_clear(NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_seq_len(NULL, 0, &n) != TQ_STATUS_OK);
    CHECK(tq_cache_seq_len(cache, 0, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_memory_usage(NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_memory_usage(cache, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_save(NULL, b, 64, &n) != TQ_STATUS_OK);
    CHECK(tq_cache_save(cache, b, 1, &n) != TQ_STATUS_OK);
    CHECK(tq_cache_load(NULL, b, 64) != TQ_STATUS_OK);
    CHECK(tq_cache_load(cache, NULL, 64) != TQ_STATUS_OK);
    CHECK(tq_cache_load(cache, b, 0) != TQ_STATUS_OK);
    CHECK(tq_cache_save_file(NULL, "x") != TQ_STATUS_OK);
    CHECK(tq_cache_save_file(cache, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_save_file(cache, "/nonexistent-folder/x") != TQ_STATUS_OK);
    CHECK(tq_cache_load_file(NULL, "x") != TQ_STATUS_OK);
    CHECK(tq_cache_load_file(cache, NULL) != TQ_STATUS_OK);
    CHECK(tq_cache_load_file(cache, "/nonexistent-folder/x") != TQ_STATUS_OK);
    CHECK(tq_context_new(NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_context_new(&p, NULL) != TQ_STATUS_OK);
    tq_context_free(NULL);
    CHECK(tq_context_row_bytes(NULL, &n, &n) != TQ_STATUS_OK);
    CHECK(tq_context_row_bytes(ctx, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_context_state_size(NULL, &n) != TQ_STATUS_OK);
    CHECK(tq_context_state_size(ctx, NULL) != TQ_STATUS_OK);
    CHECK(tq_context_state_save(NULL, b, 64) != TQ_STATUS_OK);
    CHECK(tq_context_state_save(ctx, NULL, 64) != TQ_STATUS_OK);
    CHECK(tq_context_state_load(NULL, b, 64) != TQ_STATUS_OK);
    CHECK(tq_context_state_load(ctx, NULL, 64) != TQ_STATUS_OK);
    CHECK(tq_append_kv(NULL, 0, b, b, 1, &slot, 1, x, NULL, x, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_append_kv(ctx, 0, NULL, b, 1, &slot, 1, x, NULL, x, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_append_kv(ctx, 0, b, b, 1, NULL, 1, x, NULL, x, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_append_kv(ctx, 0, b, b, 1, &slot, 1, NULL, NULL, x, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_append_kv_part(ctx, 0, b, b, 1, &slot, 1, x, NULL, x, NULL, 1, 1) != TQ_STATUS_OK);
    CHECK(tq_append_kv_part(ctx, 0, b, b, 1, &slot, 1, x, NULL, x, NULL, 0, 0) != TQ_STATUS_OK);
    CHECK(tq_attend(NULL, 0, x, 1, NULL, b, b, 1, NULL, 0, 0, 1.0f, x, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_attend(ctx, 0, NULL, 1, NULL, b, b, 1, NULL, 0, 0, 1.0f, x, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_attend(ctx, 0, x, 1, NULL, NULL, b, 1, NULL, 0, 0, 1.0f, x, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_attend(ctx, 0, x, 1, NULL, b, b, 1, NULL, 0, 0, 1.0f, NULL, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_attend(ctx, 0, x, 1, NULL, b, b, 1, x, 77, 1, 1.0f, x, NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_attend_part(ctx, 0, x, 1, NULL, b, b, 1, NULL, 0, 0, 1.0f, x, NULL, 3, 2) != TQ_STATUS_OK);
    CHECK(tq_attend_batch(ctx, 0, 1, x, 1, NULL, 0, NULL, NULL, NULL, 1, NULL, 0, 0, 0, 1.0f, x, NULL, 0, NULL) != TQ_STATUS_OK);
    CHECK(tq_quantizer_new(NULL, NULL) != TQ_STATUS_OK);
    tq_quantizer_free(NULL);
    CHECK(tq_quantizer_code_bytes(NULL, &n) != TQ_STATUS_OK);
    CHECK(tq_quantizer_scale_count(NULL, &n) != TQ_STATUS_OK);
    CHECK(tq_quantizer_expected_mse(NULL, NULL) != TQ_STATUS_OK);
    CHECK(tq_bf16_to_float(NULL, 1, x) != TQ_STATUS_OK);
    CHECK(tq_quantize(NULL, x, 1, b, NULL) != TQ_STATUS_OK);
    CHECK(tq_dequantize(NULL, b, NULL, 1, x) != TQ_STATUS_OK);
    CHECK(tq_inner_product(NULL, x, b, NULL, 1, x) != TQ_STATUS_OK);
    tq_cache_free(cache);
    tq_context_free(ctx);
}

static uint8_t *save_of(tq_cache *c, size_t *size) {
    *size = 0;
    tq_cache_save(c, NULL, 0, size);
    uint8_t *b = malloc(*size);
    if (tq_cache_save(c, b, *size, size) != TQ_STATUS_OK) { free(b); return NULL; }
    return b;
}

/* Mutate `b` (size *n) in place; returns 1 if the CRC was recomputed. */
static int mutate(uint8_t *b, size_t *n, size_t header) {
    switch (rnd() % 5) {
    case 0: *n = rnd() % *n; return 0;                                  /* truncation */
    case 1: { int k = 1 + (int)(rnd() % 8);                              /* bit flips */
              while (k--) { size_t i = rnd() % *n; b[i] ^= (uint8_t)(1u << (rnd() % 8)); } return 0; }
    case 2: b[rnd() % *n] = (uint8_t)rnd(); return 0;                   /* byte overwrite */
    default: {                                                           /* semantic, CRC fixed */
        int k = 1 + (int)(rnd() % 4);
        while (k--) {
            size_t i = header + rnd() % (*n - 4 - header);
            uint8_t special[] = {0x00, 0xFF, 0x7F, 0x80, 0x7F, 0xC0};
            b[i] = rnd() % 2 ? special[rnd() % sizeof special] : (uint8_t)(b[i] ^ (1u << (rnd() % 8)));
        }
        fix_crc(b, *n);
        return 1;
    }
    }
}

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) if (!isfinite(x[i])) return 0;
    return 1;
}

static unsigned long cases, loaded, refused, corrupt_ok, bad_behaviour;

static void fuzz_cache(int centering, unsigned long iters) {
    tq_context *ctx = small_context(centering, 1);
    tq_cache *src = filled_cache(ctx, 9);
    size_t size;
    uint8_t *orig = save_of(src, &size);
    uint8_t *b = malloc(size);
    tq_cache *dst = filled_cache(ctx, 5);
    for (unsigned long it = 0; it < iters; it++) {
        size_t before_n, n = size;
        uint8_t *before = save_of(dst, &before_n);
        memcpy(b, orig, size);
        int crc_fixed = mutate(b, &n, 12);
        int same = n == size && memcmp(b, orig, size) == 0;
        cases++;
        if (tq_cache_load(dst, b, n) == TQ_STATUS_OK) {
            loaded++;
            if (!crc_fixed && !same) corrupt_ok++;
            float q[16], out[16];
            for (int i = 0; i < 16; i++) q[i] = (float)(i % 3) - 1.0f;
            size_t len = 0;
            tq_cache_seq_len(dst, 0, &len);
            if (len > 0) {
                /* A cache that loaded is usable: its attend succeeds with finite output. */
                tq_status s = tq_cache_attend(dst, 0, 0, q, 1, 0.25f, out, NULL);
                if (s != TQ_STATUS_OK || !all_finite(out, 16)) bad_behaviour++;
            }
            float k[16] = {0.5f};
            tq_cache_append(dst, 0, 0, 1, k, k, NULL);
            size_t again_n;
            uint8_t *again = save_of(dst, &again_n);
            tq_cache *fresh = filled_cache(ctx, 0);
            if (!again || tq_cache_load(fresh, again, again_n) != TQ_STATUS_OK) bad_behaviour++;
            tq_cache_free(fresh);
            free(again);
            tq_cache_load(dst, before, before_n);
        } else {
            refused++;
            size_t after_n;
            uint8_t *after = save_of(dst, &after_n);
            if (!after || after_n != before_n || memcmp(after, before, before_n) != 0) bad_behaviour++;
            free(after);
        }
        free(before);
    }
    free(b); free(orig);
    tq_cache_free(src); tq_cache_free(dst);
    tq_context_free(ctx);
}

static void fuzz_state(unsigned long iters) {
    tq_context *ctx = small_context(1, 1);
    tq_cache *c = filled_cache(ctx, 4);
    size_t size = 0;
    tq_context_state_size(ctx, &size);
    uint8_t *orig = malloc(size), *b = malloc(size), *cur = malloc(size);
    tq_context_state_save(ctx, orig, size);
    for (unsigned long it = 0; it < iters; it++) {
        tq_context *other = small_context(1, 1);
        size_t n = size;
        memcpy(b, orig, size);
        int crc_fixed = mutate(b, &n, 20);
        int same = n == size && memcmp(b, orig, size) == 0;
        cases++;
        if (tq_context_state_load(other, b, n) == TQ_STATUS_OK) {
            loaded++;
            if (!crc_fixed && !same) corrupt_ok++;
            uint8_t ks[64], vs[64];
            float k[16], q[16], out[16];
            for (int i = 0; i < 16; i++) k[i] = q[i] = (float)(i % 5) * 0.25f;
            int64_t slot = 0;
            /* A state that loaded is usable: append and attend succeed with finite output. */
            if (tq_append_kv(other, 0, ks, vs, 1, &slot, 1, k, NULL, k, NULL, NULL) != TQ_STATUS_OK ||
                tq_attend(other, 0, q, 1, NULL, ks, vs, 1, NULL, 0, 0, 0.25f, out, NULL, NULL) != TQ_STATUS_OK ||
                !all_finite(out, 16))
                bad_behaviour++;
        } else {
            refused++;
            /* A refused load leaves the context's (empty) state as it was. */
            tq_context *fresh = small_context(1, 1);
            uint8_t *want = malloc(size);
            tq_context_state_save(fresh, want, size);
            tq_context_state_save(other, cur, size);
            if (memcmp(cur, want, size) != 0) bad_behaviour++;
            free(want);
            tq_context_free(fresh);
        }
        tq_context_free(other);
    }
    free(orig); free(b); free(cur);
    tq_cache_free(c);
    tq_context_free(ctx);
}

int main(void) {
    rng_state = env_or("TQ_FUZZ_SEED", 1);
    unsigned long iters = env_or("TQ_FUZZ_ITERS", 300);
    null_arguments();
    fuzz_cache(0, iters);
    fuzz_cache(1, iters);
    fuzz_state(iters);
    printf("fuzz: seed %lu, %lu cases: %lu loaded, %lu refused, %lu silent corruptions, %lu misbehaviours\n",
           env_or("TQ_FUZZ_SEED", 1), cases, loaded, refused, corrupt_ok, bad_behaviour);
    CHECK(corrupt_ok == 0);
    CHECK(bad_behaviour == 0);
    /* Both outcomes occurred, so both branches' checks ran. */
    CHECK(loaded > 0);
    CHECK(refused > 0);
    return check_summary("fuzz");
}
