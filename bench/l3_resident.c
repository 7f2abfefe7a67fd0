/*
 * l3_resident.c - can part of decode's weights stay in the last-level cache from one
 * token to the next? Every pass reads 96 MB (the default model's size), more than the
 * 32 MB L3, so with plain loads each byte is evicted before its next use. Here the first
 * RES MB of each thread's half are read normally and the rest with PREFETCHNTA ahead of
 * the loads, in the hope that non-temporal lines are not kept and the RES part survives;
 * if it did, a pass would get faster by up to RES/48 of its DRAM traffic.
 *
 *   gcc -O2 -mavx2 -fopenmp bench/l3_resident.c -o /tmp/l3_resident && /tmp/l3_resident [ROUNDS=3]
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t sum_range(const uint8_t *p, size_t n, int nta) {
    __m256i a = _mm256_setzero_si256(), b = a;
    for (size_t i = 0; i < n; i += 64) {
        if (nta) _mm_prefetch((const char *)p + i + 2048, _MM_HINT_NTA);
        else _mm_prefetch((const char *)p + i + 2048, _MM_HINT_T0);
        a = _mm256_add_epi64(a, _mm256_load_si256((const __m256i *)(p + i)));
        b = _mm256_add_epi64(b, _mm256_load_si256((const __m256i *)(p + i + 32)));
    }
    a = _mm256_add_epi64(a, b);
    return (uint64_t)_mm256_extract_epi64(a, 0) + (uint64_t)_mm256_extract_epi64(a, 3);
}

int main(int argc, char **argv) {
    const size_t total = (size_t)96 << 20;
    uint8_t *buf = aligned_alloc(64, total);
    memset(buf, 1, total);
    const int reps = 40;
    for (int round = 0; round < (argc > 1 ? atoi(argv[1]) : 3); round++) {
        const size_t res_mb[] = {0, 8, 16, 24, 32};
        for (int v = 0; v < 5; v++) {
            for (int nta = 0; nta < 2; nta++) {
                if (v == 0 && nta) continue;
                const size_t res = res_mb[v] << 20; /* per thread */
                double best = 1e9, sum = 0;
                uint64_t sink = 0;
                for (int r = 0; r < reps; r++) {
                    double t0 = omp_get_wtime();
#pragma omp parallel num_threads(2) reduction(+ : sink)
                    {
                        const int id = omp_get_thread_num();
                        const uint8_t *p = buf + id * (total / 2);
                        sink += sum_range(p, res, 0);
                        sink += sum_range(p + res, total / 2 - res, nta);
                    }
                    double t = omp_get_wtime() - t0;
                    if (r >= 5) sum += t;
                    if (t < best) best = t;
                }
                printf("resident %2zu MB/thread, rest %s: best %.1f GB/s, mean %.1f GB/s  %s\n", res_mb[v],
                       nta ? "NTA" : "T0 ", total / best / 1e9, total / (sum / (reps - 5)) / 1e9, sink == 42 ? " " : "");
            }
        }
    }
}
