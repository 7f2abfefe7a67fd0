/*
 * stream_read.c - how fast this machine reads memory: the denominator of the decode
 * targets' "reads the weights at >= N% of the measured stream-read bandwidth".
 *
 *   gcc -O2 -fopenmp -mavx2 bench/stream_read.c -o /tmp/stream_read      (-mavx2 on x86 only)
 *   /tmp/stream_read [MiB=1024] [threads=2] [reps=10]
 *
 * Each thread sums its contiguous slice of a buffer (touched once beforehand) with
 * 256-bit loads (x86) and four independent accumulators, so the loop is bound by
 * memory, not by the adds. bench/compare_llamacpp.py runs it after each decode test:
 * on a shared host the bandwidth left to a VM moves with the neighbours' load.
 * Prints the best and the median of `reps` passes in GB/s (1e9 B/s).
 */
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 1024;
    const int threads = argc > 2 ? atoi(argv[2]) : 2, reps = argc > 3 ? atoi(argv[3]) : 10;
    const size_t n = mib << 20;
    uint8_t *buf = aligned_alloc(64, n);
    if (!buf) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i += 4096) memset(buf + i, (int)(i >> 12), 4096); /* first touch per thread */
    double *gbs = malloc(sizeof(double) * reps);
    long long sink = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            const int nt = omp_get_num_threads(), it = omp_get_thread_num();
            const size_t lo = n / 128 * it / nt * 128, hi = n / 128 * (it + 1) / nt * 128;
#if defined(__AVX2__)
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            for (size_t i = lo; i < hi; i += 128) {
                a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(buf + i)));
                a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(buf + i + 32)));
                a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(buf + i + 64)));
                a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(buf + i + 96)));
            }
            __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
            long long v[4];
            _mm256_storeu_si256((__m256i *)v, s);
            sink += v[0] + v[1] + v[2] + v[3];
#else /* other CPUs: 64-bit loads, the compiler may vectorize */
            const uint64_t *p = (const uint64_t *)(buf + lo);
            uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            for (size_t i = 0; i < (hi - lo) / 8; i += 4) {
                a0 += p[i];
                a1 += p[i + 1];
                a2 += p[i + 2];
                a3 += p[i + 3];
            }
            sink += (long long)(a0 + a1 + a2 + a3);
#endif
        }
        gbs[r] = n / (omp_get_wtime() - t0) / 1e9;
    }
    qsort(gbs, reps, sizeof(double), cmp);
    printf("stream read %zu MiB, %d threads: best %.1f GB/s, median %.1f GB/s (checksum %lld)\n", mib, threads,
           gbs[reps - 1], gbs[reps / 2], sink & 0xff);
    return 0;
}
