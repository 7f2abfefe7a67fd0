/*
 * thread_balance.c - does an uneven row split help decode's two threads? Two threads
 * stream 96 MB of Q4_1R rows (n=576, the default model's QKV/Wo/gate/up width) in
 * bursts of BURST rows, three ways, and report GB/s of weights and each thread's busy
 * share of the wall time:
 *   barrier   - each thread takes half of every burst, a barrier after each (decode today)
 *   none      - the same halves with no barrier (what the barriers cost)
 *   adaptive  - a barrier after each burst, thread 0 taking a fraction f of every burst,
 *               f moved after each pass towards the split that would have made both
 *               threads' busy times equal
 * Each line starts with the round trip of a cache line between the two threads, which
 * tells the host's placement of this VM's two vCPUs: ~85-135 ns (close) or ~430 ns (far).
 *
 *   cc -std=gnu11 -O2 -fopenmp -Icsrc bench/thread_balance.c csrc/kernels_scalar.c csrc/kernels_avx2.c \
 *      csrc/kernels_avx512.c csrc/kquants_avx2.c csrc/kquants_avx512.c csrc/kquants_repack.c csrc/quants.c csrc/util.c -lm -o /tmp/thread_balance
 *   /tmp/thread_balance [BURST=1536] [ROUNDS=20]      (x86-64 with AVX-512 VNNI)
 */
#define _GNU_SOURCE
#include <omp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kernels.h"

static _Atomic int flag __attribute__((aligned(128)));

/* ns for one cache line to go from one thread to the other and back */
static double roundtrip_ns(void) {
    const int N = 20000;
    atomic_store(&flag, 0);
    const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(2)
    {
        const int me = omp_get_thread_num();
        for (int i = 0; i < N; i++) {
            while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + me) {
            }
            atomic_store_explicit(&flag, 2 * i + me + 1, memory_order_release);
        }
    }
    return (omp_get_wtime() - t0) / N * 1e9;
}

int main(int argc, char **argv) {
    int team = 0;
#pragma omp parallel num_threads(2)
    if (omp_get_thread_num() == 0) team = omp_get_num_threads();
    if (team != 2) { /* the round trip would wait forever for a partner that never runs */
        fprintf(stderr, "thread_balance: needs a team of 2 threads, OpenMP gives %d (OMP_THREAD_LIMIT?)\n", team);
        return 2;
    }
    const pl_kernel_set *k = pl_kernels_avx512();
    const int n = 576, burst = argc > 1 ? atoi(argv[1]) : 1536, rounds = argc > 2 ? atoi(argv[2]) : 20;
    const int type = PL_TYPE_Q4_1R;
    const size_t rb = pl_type_nbytes(type, n);
    int rows = (int)(((size_t)96 << 20) / rb);
    rows -= rows % burst;
    unsigned char *w = aligned_alloc(64, rb * rows);
    for (size_t i = 0; i < rb * rows; i++) w[i] = (unsigned char)((i * 2654435761u) >> 13);
    const uint16_t h = 0x2000; /* block scale and minimum: a plain small half */
    for (size_t r = 0; r < (size_t)rows; r++)
        for (int b = 0; b < n / QK; b++) {
            memcpy(w + r * rb + b * (rb / (n / QK)), &h, 2);
            memcpy(w + r * rb + b * (rb / (n / QK)) + 2, &h, 2);
        }
    void *tmp = malloc(rb);
    for (size_t r = 0; r < (size_t)rows; r++) q4_repack_row(PL_TYPE_Q4_1, w + r * rb, n / QK, tmp);
    float *x = malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) x[i] = (float)(i % 13) * 0.1f - 0.6f;
    block_q8x *a = malloc(n / QK * sizeof(block_q8x));
    k->quantize_q8x(x, a, n);
    float *y = malloc(rows * sizeof(float));
    double f = 0.5;
    for (int round = 0; round < rounds; round++) {
        const double rt = roundtrip_ns();
        double gbs[3], busy[3][2];
        for (int mode = 0; mode < 3; mode++) {
            double best = 1e9;
            for (int it = 0; it < 5; it++) {
                double tb[2] = {0, 0};
                const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(2)
                {
                    const int id = omp_get_thread_num();
                    const int split = mode == 2 ? ((int)(burst * f) & ~7) : burst / 2;
                    double b = 0;
                    for (int c = 0; c < rows; c += burst) {
                        const int r0 = id ? c + split : c, r1 = id ? c + burst : c + split;
                        const double s = omp_get_wtime();
                        k->rows[type](w, rb, a, y, r0, r1, n);
                        b += omp_get_wtime() - s;
                        if (mode != 1) {
#pragma omp barrier
                        }
                    }
                    tb[id] = b;
                }
                const double t = omp_get_wtime() - t0;
                if (t < best) best = t, busy[mode][0] = tb[0] / t, busy[mode][1] = tb[1] / t;
                if (mode == 2) { /* rows per busy second of each thread -> the split that evens them */
                    const double s0 = f / tb[0], s1 = (1 - f) / tb[1];
                    f = 0.5 * f + 0.5 * s0 / (s0 + s1);
                }
            }
            gbs[mode] = (double)rb * rows / best / 1e9;
        }
        printf("round trip %4.0f ns | barrier %5.1f GB/s busy %3.0f%% %3.0f%% | none %5.1f GB/s busy %3.0f%% %3.0f%% | "
               "adaptive %5.1f GB/s f=%.3f busy %3.0f%% %3.0f%%\n",
               rt, gbs[0], 100 * busy[0][0], 100 * busy[0][1], gbs[1], 100 * busy[1][0], 100 * busy[1][1], gbs[2], f,
               100 * busy[2][0], 100 * busy[2][1]);
        fflush(stdout);
    }
    return 0;
}
