/*
 * rows_stream.c - decode's matrix products as the forward pass runs them, without
 * the model: two threads stream 96 MB of weight rows from DRAM in bursts of BURST
 * rows (one "matrix"), each taking half of every burst, with a barrier after each,
 * and report GB/s of weights read. Unlike bench/kernel_speed.sh (one thread) this
 * shows what a kernel gets when both cores share the memory bus.
 *
 * The first line reads the same bytes in the same bursts with no kernel (a sum of
 * 64-bit words): the ceiling this burst structure allows, to compare the kernels with.
 *
 *   bench/rows_stream.sh [avx2|avx512] [N (row length, 576)] [BURST (rows, 1536)]
 *   TOTAL_MB=512 bench/rows_stream.sh ...   512 MB of weights instead of 96 (larger than L3)
 *   HUGE=1 bench/rows_stream.sh ...   the weights on transparent 2 MB pages
 *   PER_THREAD=1 bench/rows_stream.sh ...   each thread's halves of successive bursts adjacent in
 *                                         memory (one address stream per thread across the barriers)
 *                                         instead of matrix after matrix
 */
#define _GNU_SOURCE
#include <omp.h>
#include <stdio.h>
#include <sys/mman.h>
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

/* what a kernel-less pass over bytes [a, b) costs: their sum as 64-bit words, with the
 * kernels' software prefetch (4 KB ahead, csrc/simd_x86.h) */
static uint64_t read_range(const unsigned char *p, size_t a, size_t b) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, w[4];
    size_t i = a;
    for (; i + 64 <= b; i += 64) {
        if (i + 4096 < b) __builtin_prefetch(p + i + 4096);
        memcpy(w, p + i, 32);
        s0 += w[0], s1 += w[1], s2 += w[2], s3 += w[3];
        memcpy(w, p + i + 32, 32);
        s0 += w[0], s1 += w[1], s2 += w[2], s3 += w[3];
    }
    for (; i < b; i++) s0 += p[i];
    return s0 + s1 + s2 + s3;
}

int main(int argc, char **argv) {
    const pl_kernel_set *k = argc > 1 && !strcmp(argv[1], "avx512") ? pl_kernels_avx512() : &pl_kernels_avx2;
    const int n = argc > 2 ? atoi(argv[2]) : 576, burst = argc > 3 ? atoi(argv[3]) : 1536;
    static const int types[] = {PL_TYPE_Q4_0, PL_TYPE_Q4_0R, PL_TYPE_Q4_1, PL_TYPE_Q4_1R, PL_TYPE_Q8_0, PL_TYPE_F16,
                                PL_TYPE_F32,  PL_TYPE_Q4_K,  PL_TYPE_Q6_K, PL_TYPE_Q5_0,  PL_TYPE_Q5_K, PL_TYPE_Q3_K,
                                PL_TYPE_Q2_K, PL_TYPE_Q5_1,  PL_TYPE_IQ4_NL, PL_TYPE_IQ4_XS};
    const char *only = getenv("TYPES"); /* e.g. TYPES=Q4_0R,Q4_K: just these (and the kernel-less read) */
    const size_t total = (size_t)(getenv("TOTAL_MB") ? atoi(getenv("TOTAL_MB")) : 96) << 20;
    float *x = malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++) x[i] = (float)(i % 13) * 0.1f - 0.6f;
    block_q8x *a = malloc((size_t)n / QK * sizeof(block_q8x));
    k->quantize_q8x(x, a, n);
    for (int ti = -1; ti < (int)(sizeof types / sizeof types[0]); ti++) {
        const int type = ti < 0 ? PL_TYPE_Q4_0 : types[ti]; /* -1: no kernel, Q4_0's bytes */
        if (ti >= 0 && only && !strstr(only, pl_type_name(type))) continue;
        if (pl_type_nbytes(type, n) < 0) continue; /* n not a whole number of its blocks */
        const size_t rb = pl_type_nbytes(type, n);
        int rows = (int)(total / rb);
        rows -= rows % burst;
        /* HUGE=1: the weights on 2 MB pages (transparent huge pages), as a file mapping never is */
        const int huge = getenv("HUGE") && atoi(getenv("HUGE"));
        const int per_thread = getenv("PER_THREAD") && atoi(getenv("PER_THREAD"));
        const size_t alloc = (rb * rows + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1);
        unsigned char *w = aligned_alloc((size_t)2 << 20, alloc);
        if (huge) madvise(w, rb * rows, MADV_HUGEPAGE);
        for (size_t i = 0; i < rb * rows; i++) w[i] = (unsigned char)((i * 2654435761u) >> 13);
        if (type == PL_TYPE_F16)
            for (size_t i = 0; i < rb * rows / 2; i++) ((uint16_t *)w)[i] = (uint16_t)(0x3c00 ^ (i & 0x3ff));
        else if (type == PL_TYPE_F32)
            for (size_t i = 0; i < rb * rows / 4; i++) ((float *)w)[i] = (float)(i & 0x3ff) * 1e-3f;
        else if (type == PL_TYPE_Q8_0 || q4_base(type) == PL_TYPE_Q4_0 || q4_base(type) == PL_TYPE_Q4_1)
            /* block scales: a plain small half, never NaN or subnormal (the other types keep
             * random ones: as floats none is subnormal, and NaN costs x86 nothing) */
            for (size_t r = 0; r < (size_t)rows; r++)
                for (int b = 0; b < n / QK; b++) {
                    const uint16_t h = 0x2000;
                    memcpy(w + r * rb + b * (rb / (n / QK)), &h, 2);
                }
        if (q4_repacked(type)) { /* the same rows, regrouped as the loader does (quants.h) */
            void *tmp = malloc(rb);
            for (size_t r = 0; r < (size_t)rows; r++) q4_repack_row(q4_base(type), w + r * rb, n / QK, tmp);
            free(tmp);
        }
        float *y = malloc((size_t)rows * sizeof(float));
        const void *act = type == PL_TYPE_F16 || type == PL_TYPE_F32 ? (const void *)x : (const void *)a;
        double best = 1e9;
        uint64_t sink = 0;
        for (int it = 0; it < 30; it++) {
            const double t0 = now();
#pragma omp parallel num_threads(2) reduction(+ : sink)
            {
                const int id = omp_get_thread_num(), half = burst / 2;
                for (int c = 0; c < rows; c += burst) {
                    const int r0 = per_thread ? id * (rows / 2) + c / 2 : c + id * half;
                    const int r1 = per_thread ? r0 + half : id ? c + burst : r0 + half;
                    if (ti < 0) sink += read_range(w, rb * r0, rb * r1);
                    else k->rows[type](w, rb, act, y, r0, r1, n);
#pragma omp barrier
                }
            }
            const double t = now() - t0;
            if (t < best) best = t;
        }
        if (sink == 42) printf(" "); /* keeps the reads */
        printf("%s %-5s n=%d burst=%d%s%s rows: %.1f GB/s\n", ti < 0 ? "no kernel" : k->name,
               ti < 0 ? "read" : pl_type_name(type), n, burst, huge ? " 2MB pages" : "",
               per_thread ? " per-thread" : "",
               (double)rb * rows / best / 1e9);
        free(w);
        free(y);
    }
    free(x);
    free(a);
    return 0;
}
