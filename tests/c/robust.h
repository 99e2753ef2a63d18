/* Helpers of the robustness tests (hardening.c, fuzz.c): small contexts and caches, CRC-32 and the
 * byte layout of a saved one-layer, one-kv-head cache (see src/cache/persist.rs). */
#ifndef TQ_TEST_ROBUST_H
#define TQ_TEST_ROBUST_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "turboquant.h"

/* One layer, one head of dimension 16, F32, MSE keys. */
static inline tq_context *small_context(int centering, uint32_t n_threads) {
    tq_context_params p = tq_context_default_params();
    p.n_layers = 1; p.n_heads = 1; p.n_kv_heads = 1; p.head_dim = 16;
    p.centering = centering; p.n_threads = n_threads;
    tq_context *ctx = NULL;
    if (tq_context_new(&p, &ctx) != TQ_STATUS_OK) return NULL;
    return ctx;
}

/* A cache (residual window 2, max_tokens 64) holding `n` tokens of sequence 0. */
static inline tq_cache *filled_cache(tq_context *ctx, int n) {
    tq_cache_params cp = tq_cache_default_params();
    cp.max_tokens = 64; cp.residual_window = 2;
    tq_cache *cache = NULL;
    if (tq_cache_new(ctx, &cp, &cache) != TQ_STATUS_OK) return NULL;
    for (int t = 0; t < n; t++) {
        float k[16], v[16];
        for (int i = 0; i < 16; i++) { k[i] = (float)((t * 7 + i * 3) % 11) / 5.0f - 1.0f; v[i] = (float)((t + i) % 5) / 4.0f; }
        tq_cache_append(cache, 0, 0, 1, k, v, NULL);
    }
    return cache;
}

static inline uint32_t crc32_ieee(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int b = 0; b < 8; b++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

/* Recompute the trailing CRC-32 of a saved cache. */
static inline void fix_crc(uint8_t *b, size_t size) {
    uint32_t c = crc32_ieee(b, size - 4);
    memcpy(b + size - 4, &c, 4);
}

/* Offsets in a saved one-layer, one-sequence, uncentered cache of one kv head of dimension 16. */
typedef struct { uint32_t nc, nf; size_t comp_pos, comp_k, comp_v, full_pos, full_k, full_v; } cache_layout;

static inline cache_layout layout_of(const uint8_t *b, size_t kr, size_t vr) {
    cache_layout L;
    size_t o = 8 + 4 + 8 + 9 * 4 + 1; /* magic, version, fingerprint, header, centering flag 0 */
    memcpy(&L.nc, b + o, 4); o += 4;
    L.comp_pos = o; o += 8 * (size_t)L.nc;
    L.comp_k = o; o += kr * L.nc;
    L.comp_v = o; o += vr * L.nc;
    memcpy(&L.nf, b + o, 4); o += 4;
    L.full_pos = o; o += 8 * (size_t)L.nf;
    L.full_k = o; o += 16 * 4 * (size_t)L.nf;
    L.full_v = o;
    return L;
}

#endif
