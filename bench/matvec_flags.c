/*
 * matvec_flags.c - how compiler flags change decode's streaming speed: pl_matvec over
 * an F16 matrix of the output layer's shape (49152 x 576, 56 MB) with 2 threads, the
 * caches flushed before each run so the weights come from DRAM, reported in GB/s of
 * weights read (best and mean of 7). bench/matvec_flags.sh builds the core as a shared
 * library once per set of flags and runs this against each: it is how the -fwrapv in
 * Python's CFLAGS was found to cost the F16 rows 13-16% (bench/RESULTS.md H).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "pyllama.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    const int cols = 576, rows = 49152, reps = 7;
    const size_t nb = (size_t)cols * rows * 2, huge = (size_t)2 << 20;
    const size_t flush_n = ((size_t)800 << 20) / sizeof(double); /* larger than any L3 here */
    double *flush = malloc(flush_n * sizeof(double));
    uint16_t *w = aligned_alloc(huge, (nb + huge - 1) & ~(huge - 1));
    float *x = malloc(cols * sizeof(float)), *y = malloc(rows * sizeof(float));
    if (!flush || !w || !x || !y) return 1;
    madvise(w, nb, MADV_HUGEPAGE);
    for (size_t i = 0; i < flush_n; i++) flush[i] = 1.0;
    for (size_t j = 0; j < nb / 2; j++) w[j] = (uint16_t)(0x2c00 ^ (j & 0x3ff)); /* normal halves near 1/16 */
    for (int i = 0; i < cols; i++) x[i] = 0.5f;
    if (pl_matvec(PL_TYPE_F16, w, x, y, rows, cols, 2)) return 1; /* warm-up: the OpenMP team starts */
    double best = 0, sum = 0;
    for (int it = 0; it < reps; it++) {
        double s = 0;
        for (size_t i = 0; i < flush_n; i++) s += flush[i];
        flush[it] = s;
        const double t0 = now();
        if (pl_matvec(PL_TYPE_F16, w, x, y, rows, cols, 2)) return 1;
        const double gbs = nb / (now() - t0) / 1e9;
        sum += gbs;
        best = gbs > best ? gbs : best;
    }
    printf("F16 matvec %d x %d from DRAM, 2 threads: best %.1f GB/s, mean %.1f\n", rows, cols, best, sum / reps);
    return 0;
}
