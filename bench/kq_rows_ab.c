/*
 * kq_rows_ab.c - the AVX2 and AVX-512 decode rows of the 5-bit, K-quant and IQ4 types
 * side by side in one process (one thread, interleaved rounds, best of each), on a matrix
 * that fits in L2 and on one that comes from memory. Build and run: bench/kq_rows_ab.sh
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

/* random bytes with every fp16 field (offsets in the block) set to a small normal scale */
static void fill(int type, uint8_t *w, size_t bytes) {
    static const struct { int type, bb, off[2]; } f[] = {
        {PL_TYPE_Q5_0, 22, {0, -1}},   {PL_TYPE_Q5_1, 24, {0, 2}},   {PL_TYPE_IQ4_NL, 18, {0, -1}},
        {PL_TYPE_Q2_K, 84, {80, 82}},  {PL_TYPE_Q3_K, 110, {108, -1}}, {PL_TYPE_Q4_K, 144, {0, 2}},
        {PL_TYPE_Q5_K, 176, {0, 2}},   {PL_TYPE_Q6_K, 210, {208, -1}}, {PL_TYPE_IQ4_XS, 136, {0, -1}}};
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)(rand() >> 7);
    for (size_t k = 0; k < sizeof f / sizeof f[0]; k++)
        if (f[k].type == type)
            for (size_t b = 0; b + f[k].bb <= bytes; b += f[k].bb)
                for (int j = 0; j < 2; j++)
                    if (f[k].off[j] >= 0) w[b + f[k].off[j]] = 0x00, w[b + f[k].off[j] + 1] = 0x1c;
}

int main(void) {
    static const int types[] = {PL_TYPE_Q5_K, PL_TYPE_Q3_K, PL_TYPE_Q2_K, PL_TYPE_Q5_1, PL_TYPE_IQ4_NL,
                                PL_TYPE_IQ4_XS, PL_TYPE_Q4_K, PL_TYPE_Q6_K, PL_TYPE_Q5_0};
    const pl_kernel_set *sets[2] = {&pl_kernels_avx2, pl_kernels_avx512()};
    const int n = 2048;
    float *x = malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
    block_q8x *act = malloc(n / QK * sizeof(block_q8x));
    pl_kernels_scalar.quantize_q8x(x, act, n);
    printf("%-7s %22s %22s\n", "type", "L2 (256 KiB) avx2/512", "DRAM (128 MiB) avx2/512");
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int T = types[ti];
        const size_t rb = (size_t)pl_type_nbytes(T, n);
        printf("%-7s", pl_type_name(T));
        for (int big = 0; big < 2; big++) {
            const int rows = (int)((big ? (size_t)128 << 20 : (size_t)256 << 10) / rb);
            uint8_t *w = malloc(rb * rows);
            float *y = malloc(rows * sizeof(float));
            fill(T, w, rb * rows);
            double best[2] = {1e9, 1e9};
            for (int round = 0; round < (big ? 6 : 40); round++)
                for (int s = 0; s < 2; s++) {
                    const double t0 = now();
                    const int reps = big ? 1 : 20;
                    for (int k = 0; k < reps; k++) sets[s]->rows[T](w, rb, act, y, 0, rows, n);
                    const double dt = (now() - t0) / reps;
                    if (dt < best[s]) best[s] = dt;
                }
            printf("   %6.1f / %6.1f GB/s", rb * rows / best[0] * 1e-9, rb * rows / best[1] * 1e-9);
            free(w);
            free(y);
        }
        printf("\n");
    }
    return 0;
}
