/* Concurrency check (built with -fsanitize=thread by `make tsan`, also run plainly by tests/c_api.rs):
 * 4 threads quantize, dequantize and take inner products with ONE shared quantizer (documented as
 * safe concurrently with distinct outputs), and 4 threads each append to and attend over their own
 * context and owned cache. Every thread's results must equal the same work done single-threaded
 * beforehand (bit-identical: the work is deterministic). ThreadSanitizer sees the C side and every
 * libc/pthread call the library makes; the Rust code itself is not instrumented (that needs a
 * nightly toolchain's -Zsanitizer=thread), so races purely inside the library's memory are caught
 * only through the comparison with the single-threaded results. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "robust.h"

enum { THREADS = 4, N = 64, DIM = 64 };

static tq_quantizer *shared_q;
static size_t code_bytes, scale_count;
static float input[N * DIM];

typedef struct {
    uint8_t *codes; uint16_t *scales; float *deq; float ip[N];
    float attn[16]; size_t saved; uint8_t *save;
    int ok;
} result;

static void quantizer_work(result *r) {
    r->codes = malloc(N * code_bytes);
    r->scales = malloc(N * scale_count * sizeof(uint16_t));
    r->deq = malloc(N * DIM * sizeof(float));
    r->ok = tq_quantize(shared_q, input, N, r->codes, r->scales) == TQ_STATUS_OK &&
            tq_dequantize(shared_q, r->codes, r->scales, N, r->deq) == TQ_STATUS_OK &&
            tq_inner_product(shared_q, input, r->codes, r->scales, N, r->ip) == TQ_STATUS_OK;
}

static void context_work(result *r) {
    tq_context *ctx = small_context(1, 2);
    tq_cache *c = filled_cache(ctx, 40);
    float q[16];
    for (int i = 0; i < 16; i++) q[i] = input[i];
    r->ok = ctx && c && tq_cache_attend(c, 0, 0, q, 1, 0.25f, r->attn, NULL) == TQ_STATUS_OK;
    r->saved = 0;
    tq_cache_save(c, NULL, 0, &r->saved);
    r->save = malloc(r->saved);
    r->ok = r->ok && tq_cache_save(c, r->save, r->saved, &r->saved) == TQ_STATUS_OK;
    tq_cache_free(c);
    tq_context_free(ctx);
}

static void *worker(void *arg) {
    result *r = arg;
    quantizer_work(r);
    int ok = r->ok;
    context_work(r);
    r->ok = r->ok && ok;
    return NULL;
}

static int same(const result *a, const result *b) {
    return a->ok && b->ok && memcmp(a->codes, b->codes, N * code_bytes) == 0 &&
           memcmp(a->scales, b->scales, N * scale_count * 2) == 0 && memcmp(a->deq, b->deq, N * DIM * 4) == 0 &&
           memcmp(a->ip, b->ip, sizeof a->ip) == 0 && memcmp(a->attn, b->attn, sizeof a->attn) == 0 &&
           a->saved == b->saved && memcmp(a->save, b->save, a->saved) == 0;
}

static void release(result *r) { free(r->codes); free(r->scales); free(r->deq); free(r->save); }

int main(void) {
    tq_quantizer_params p = tq_quantizer_default_params();
    p.dim = DIM; p.bits = 3; p.n_threads = 2;
    CHECK_STATUS(tq_quantizer_new(&p, &shared_q), TQ_STATUS_OK);
    CHECK_STATUS(tq_quantizer_code_bytes(shared_q, &code_bytes), TQ_STATUS_OK);
    CHECK_STATUS(tq_quantizer_scale_count(shared_q, &scale_count), TQ_STATUS_OK);
    uint32_t s = 7;
    for (int i = 0; i < N * DIM; i++) { s = s * 1664525u + 1013904223u; input[i] = (float)(s >> 8) / 8388608.0f - 1.0f; }
    result ref;
    worker(&ref);
    CHECK(ref.ok);
    for (int round = 0; round < 3; round++) {
        pthread_t t[THREADS];
        result r[THREADS];
        for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, &r[i]);
        for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
        for (int i = 0; i < THREADS; i++) { CHECK(same(&r[i], &ref)); release(&r[i]); }
    }
    release(&ref);
    tq_quantizer_free(shared_q);
    return check_summary("tsan");
}
