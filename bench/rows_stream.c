/*
 * rows_stream.c - decode's matrix products as the forward pass runs them, without
 * the model: two threads stream 96 MB of weight rows from DRAM in bursts of BURST
 * rows (one "matrix"), each taking half of every burst, with a barrier after each,
 * and report GB/s of weights read. Unlike bench/kernel_speed.sh (one thread) this
 * shows what a kernel gets when both cores share the memory bus.
 *
 *   bench/rows_stream.sh [avx2|avx512] [N (row length, 576)] [BURST (rows, 1536)]
 */
#define _POSIX_C_SOURCE 200809L
#include <omp.h>
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
    const pl_kernel_set *k = argc > 1 && !strcmp(argv[1], "avx512") ? pl_kernels_avx512() : &pl_kernels_avx2;
    const int n = argc > 2 ? atoi(argv[2]) : 576, burst = argc > 3 ? atoi(argv[3]) : 1536;
    static const int types[] = {PL_TYPE_Q4_0, PL_TYPE_Q4_1, PL_TYPE_Q8_0, PL_TYPE_F16};
    const size_t total = (size_t)96 << 20;
    float *x = malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++) x[i] = (float)(i % 13) * 0.1f - 0.6f;
    block_q8x *a = malloc((size_t)n / QK * sizeof(block_q8x));
    k->quantize_q8x(x, a, n);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int type = types[ti];
        const size_t rb = pl_type_nbytes(type, n);
        int rows = (int)(total / rb);
        rows -= rows % burst;
        unsigned char *w = malloc(rb * rows);
        for (size_t i = 0; i < rb * rows; i++) w[i] = (unsigned char)((i * 2654435761u) >> 13);
        if (type == PL_TYPE_F16)
            for (size_t i = 0; i < rb * rows / 2; i++) ((uint16_t *)w)[i] = (uint16_t)(0x3c00 ^ (i & 0x3ff));
        else /* block scales: a plain small half, never NaN or subnormal */
            for (size_t r = 0; r < (size_t)rows; r++)
                for (int b = 0; b < n / QK; b++) {
                    const uint16_t h = 0x2000;
                    memcpy(w + r * rb + b * (rb / (n / QK)), &h, 2);
                }
        float *y = malloc((size_t)rows * sizeof(float));
        const void *act = type == PL_TYPE_F16 ? (const void *)x : (const void *)a;
        double best = 1e9;
        for (int it = 0; it < 30; it++) {
            const double t0 = now();
#pragma omp parallel num_threads(2)
            {
                const int id = omp_get_thread_num(), half = burst / 2;
                for (int c = 0; c < rows; c += burst) {
                    const int r0 = c + id * half, r1 = id ? c + burst : r0 + half;
                    k->rows[type](w, rb, act, y, r0, r1, n);
#pragma omp barrier
                }
            }
            const double t = now() - t0;
            if (t < best) best = t;
        }
        printf("%s %-5s n=%d burst=%d rows: %.1f GB/s\n", k->name, pl_type_name(type), n, burst,
               (double)rb * rows / best / 1e9);
        free(w);
        free(y);
    }
    free(x);
    free(a);
    return 0;
}
