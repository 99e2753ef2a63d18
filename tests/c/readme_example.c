#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "turboquant.h"

int main(void) {
    enum { DIM = 128, N = 1000 };
    tq_quantizer_params params = tq_quantizer_default_params(); /* MSE, AUTO rotation, all cores */
    tq_quantizer *q = NULL;
    size_t code_bytes = 0, i;
    double expected = 0.0, err = 0.0, norm = 0.0;

    params.dim = DIM;
    params.bits = 4;
    if (tq_quantizer_new(&params, &q) != TQ_STATUS_OK) {
        fprintf(stderr, "tq_quantizer_new: %s\n", tq_last_error_message());
        return 1;
    }
    tq_quantizer_code_bytes(q, &code_bytes); /* 64: 128 codes of 4 bits; plus one bf16 scale */
    tq_quantizer_expected_mse(q, &expected);

    float *x = malloc(N * DIM * sizeof *x), *x_hat = malloc(N * DIM * sizeof *x_hat);
    uint8_t *codes = malloc(N * code_bytes);
    uint16_t *scales = malloc(N * sizeof *scales);
    for (i = 0; i < N * DIM; i++) x[i] = sinf(0.01f * (float)i) + cosf(0.37f * (float)(i % 997));

    if (tq_quantize(q, x, N, codes, scales) != TQ_STATUS_OK ||
        tq_dequantize(q, codes, scales, N, x_hat) != TQ_STATUS_OK) {
        fprintf(stderr, "turboquant: %s\n", tq_last_error_message());
        return 1;
    }
    for (i = 0; i < N * DIM; i++) {
        err += (x[i] - x_hat[i]) * (x[i] - x_hat[i]);
        norm += x[i] * x[i];
    }
    printf("%d vectors: %zu bytes each instead of %d (fp16)\n", N, code_bytes + 2, 2 * DIM);
    printf("ok: normalised MSE %.4f (Lloyd-Max expectation %.4f)\n", err / norm, expected);

    free(x);
    free(x_hat);
    free(codes);
    free(scales);
    tq_quantizer_free(q);
    return fabs(err / norm / expected - 1.0) < 0.1 ? 0 : 1;
}
