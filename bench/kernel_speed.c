/*
 * kernel_speed.c - single-thread speed of each kernel form, straight from C
 * (no Python, no threads): prefill tile() in GMAC/s and decode rows() in GB/s
 * of weights streamed. Build and run: bench/kernel_speed.sh
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "kernels.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
#if defined(__x86_64__)
    const pl_kernel_set *k = argc > 1 && !strcmp(argv[1], "scalar") ? &pl_kernels_scalar
                             : argc > 1 && !strcmp(argv[1], "avx512") ? pl_kernels_avx512()
                                                                      : &pl_kernels_avx2;
#else
    const pl_kernel_set *k = argc > 1 && !strcmp(argv[1], "scalar") ? &pl_kernels_scalar : &pl_kernels_neon;
#endif
    static const int types[] = {PL_TYPE_Q4_0, PL_TYPE_Q4_0R, PL_TYPE_Q4_1, PL_TYPE_Q4_1R, PL_TYPE_Q8_0,
                                PL_TYPE_F16,  PL_TYPE_BF16,  PL_TYPE_F32,  PL_TYPE_Q4_K,  PL_TYPE_Q6_K,
                                PL_TYPE_Q5_0, PL_TYPE_Q5_K,  PL_TYPE_Q3_K, PL_TYPE_Q2_K,  PL_TYPE_Q5_1,
                                PL_TYPE_IQ4_NL, PL_TYPE_IQ4_XS};
    const char *only = getenv("TYPES"); /* e.g. TYPES=Q4_K,Q6_K: just these */
    const int rows = 1536, nt = 64; /* an FFN-up sized matrix (N=576 columns by default), 64-token batch */
    const int n = getenv("N") ? atoi(getenv("N")) : 576;
    const int big_rows = getenv("BIG_ROWS") ? atoi(getenv("BIG_ROWS")) : 32768; /* decode: beyond the caches */
    float *x = malloc((size_t)nt * n * sizeof(float));
    for (int i = 0; i < nt * n; i++) x[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
    block_q8x *a = malloc((size_t)nt * n / QK * sizeof(block_q8x));
    k->quantize_q8x(x, a, nt * n);
    float *y = malloc((size_t)nt * big_rows * sizeof(float));
    printf("kernels %s, one thread\n%-6s %14s %14s\n", k->name, "type", "tile GMAC/s", "rows GB/s");
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        int type = types[ti];
        if (only && !strstr(only, pl_type_name(type))) continue;
        if (pl_type_nbytes(type, n) < 0) continue; /* n not a whole number of its blocks (N=1536 fits all) */
        size_t rb = (size_t)pl_type_nbytes(type, n);
        int q8 = type != PL_TYPE_F32 && type != PL_TYPE_F16 && type != PL_TYPE_BF16;
        const void *act = q8 ? (const void *)a : (const void *)x;
        size_t as = q8 ? (size_t)n / QK * sizeof(block_q8x) : (size_t)n * sizeof(float);
        unsigned char *w = malloc(rb * big_rows);
        for (size_t i = 0; i < rb * big_rows; i++) w[i] = (unsigned char)(i * 2654435761u >> 13);
        if (type == PL_TYPE_F32) for (size_t i = 0; i < rb * big_rows / 4; i++) ((float *)w)[i] = 0.001f * (i % 100);
        if (type == PL_TYPE_F16 || type == PL_TYPE_BF16) for (size_t i = 0; i < rb * big_rows / 2; i++) ((uint16_t *)w)[i] = 0x3c00 ^ (i & 0x3ff);
        if (q4_repacked(type)) { /* the same random rows, regrouped as the loader does */
            void *tmp = malloc(rb);
            for (int r = 0; r < big_rows; r++) q4_repack_row(q4_base(type), w + (size_t)r * rb, n / QK, tmp);
            free(tmp);
        }
        double gmac = 0, gbs = 0;
        /* the fastest of many calls: on a shared machine the minimum is the run nobody interrupted */
        {
            double best = 1e9, t0 = now(), t1 = t0;
            while (t1 - t0 < 0.5) {
                double a = now();
                if (k->tile[type]) k->tile[type](w, rb, act, as, y, rows, 0, rows, nt, n);
                else for (int t = 0; t < nt; t++) k->rows[type](w, rb, (const char *)act + t * as, y + t * rows, 0, rows, n);
                t1 = now();
                if (t1 - a < best) best = t1 - a;
            }
            gmac = (double)rows * n * nt / best / 1e9;
        }
        {
            double best = 1e9, t0 = now(), t1 = t0;
            while (t1 - t0 < 0.5) {
                double a = now();
                k->rows[type](w, rb, act, y, 0, big_rows, n);
                t1 = now();
                if (t1 - a < best) best = t1 - a;
            }
            gbs = (double)rb * big_rows / best / 1e9;
        }
        printf("%-6s %14.1f %14.1f\n", pl_type_name(type), gmac, gbs);
        free(w);
    }
    return 0;
}
