/*
 * q4_layout_stream.c - an experiment: does Q4_0 stream from DRAM better (two threads, decode's
 * bursts of BURST rows with a barrier after each, as bench/rows_stream.c) when a row holds all
 * its fp16 scales first and then the nibbles of all its blocks contiguous, instead of GGUF's
 * 2-byte scale before every 16 bytes of nibbles? Same bytes per row (SBALIGN=2, the default;
 * SBALIGN=64 pads the scales to a cache line). The repacked kernel is a minimal AVX-512 VNNI
 * one (4 blocks per 64-byte load); the GGUF one is pyllama's AVX-512 set's rows kernel.
 * N must be a multiple of 128 (whole groups of 4 blocks).
 *
 *   cc -std=gnu11 -O2 -fopenmp -Icsrc bench/q4_layout_stream.c csrc/kernels_scalar.c \
 *      csrc/kernels_avx2.c csrc/kernels_avx512.c csrc/kquants_avx2.c csrc/kquants_avx512.c csrc/kquants_repack.c csrc/quants.c csrc/util.c -lm -o /tmp/q4ls
 *   /tmp/q4ls [N (512)] [BURST (1536)]
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "internal.h"
#include "kernels.h"
#define T __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
static double now(void){struct timespec ts;clock_gettime(CLOCK_MONOTONIC,&ts);return ts.tv_sec+ts.tv_nsec*1e-9;}
typedef struct { __m512i lo, hi, negc; __m512 da; } grp;
T static void prep(const block_q8x *a, int nb, grp *p) {
  for (int g = 0; g * 4 < nb; g++) { float da[16]; int8_t lo[64], hi[64];
    for (int b = 0; b < 4; b++) { memcpy(lo+16*b, a[4*g+b].qs, 16); memcpy(hi+16*b, a[4*g+b].qs+16, 16); for(int i=0;i<4;i++) da[4*b+i]=a[4*g+b].d; }
    p[g].lo=_mm512_loadu_si512(lo); p[g].hi=_mm512_loadu_si512(hi);
    __m512i e=_mm512_set1_epi8(8); p[g].negc=_mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(),e,p[g].lo),e,p[g].hi));
    p[g].da=_mm512_loadu_ps(da); }
}
/* row layout: SB bytes of fp16 scales (nb*2 rounded up to SBALIGN), then nb*16 nibble bytes */
#ifndef SBALIGN
#define SBALIGN 2
#endif
T static void rows_repacked(const char *w, size_t rb, const grp *p, float *y, int r0, int r1, int nb) {
  const size_t sb = ((size_t)nb * 2 + SBALIGN - 1) / SBALIGN * SBALIGN;
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  for (int r = r0; r < r1; r++) {
    const char *row = w + (size_t)r * rb;
    for (int o = 0; o < (int)rb; o += 64) _mm_prefetch(row + 4096 + o, _MM_HINT_T0);
    __m512 acc = _mm512_setzero_ps();
    const char *q = row + sb;
    for (int g = 0; g < nb / 4; g++) {
      __m512i x = _mm512_loadu_si512(q + 64 * g);
      __m128 d4 = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(row + 8 * g)));
      __m512 dw = _mm512_permutexvar_ps(_mm512_setr_epi32(0,0,0,0,1,1,1,1,2,2,2,2,3,3,3,3), _mm512_castps128_ps512(d4));
      __m512i wl = _mm512_and_si512(x, m4), wh = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
      __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(p[g].negc, wl, p[g].lo), wh, p[g].hi);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, p[g].da), acc);
    }
    y[r] = _mm512_reduce_add_ps(acc);
  }
}
int main(int argc, char **argv) {
  const int n = argc > 1 ? atoi(argv[1]) : 512, burst = argc > 2 ? atoi(argv[2]) : 1536, nb = n / 32;
  if (n <= 0 || n % 128 || burst < 2) { fprintf(stderr, "N must be a positive multiple of 128, BURST >= 2\n"); return 1; }
  const size_t total = (size_t)96 << 20;
  float *x = malloc(n * 4); for (int i = 0; i < n; i++) x[i] = (i % 13) * 0.1f - 0.6f;
  block_q8x *a = malloc(nb * sizeof(block_q8x)); pl_kernels_avx512()->quantize_q8x(x, a, n);
  grp *p = aligned_alloc(64, sizeof(grp) * (nb / 4 + 1)); prep(a, nb, p);
  for (int kind = 0; kind < 2; kind++) {
    size_t rb = kind ? ((size_t)nb * 2 + SBALIGN - 1) / SBALIGN * SBALIGN + nb * 16 : (size_t)pl_type_nbytes(PL_TYPE_Q4_0, n);
    int rows = total / rb; rows -= rows % burst;
    unsigned char *w = aligned_alloc(64, rb * rows + 4096);
    for (size_t i = 0; i < rb * rows; i++) w[i] = (unsigned char)((i * 2654435761u) >> 13);
    if (!kind) for (int r = 0; r < rows; r++) for (int b = 0; b < nb; b++) { uint16_t h = 0x2000; memcpy(w + r * rb + b * 18, &h, 2); }
    else for (int r = 0; r < rows; r++) for (int b = 0; b < nb; b++) { uint16_t h = 0x2000; memcpy(w + r * rb + b * 2, &h, 2); }
    float *y = malloc(rows * 4); double best = 1e9;
    for (int it = 0; it < 30; it++) { double t0 = now();
#pragma omp parallel num_threads(2)
      { int id = omp_get_thread_num(), half = burst / 2;
        for (int c = 0; c < rows; c += burst) { int r0 = c + id * half, r1 = r0 + half;
          if (kind) rows_repacked((const char *)w, rb, p, y, r0, r1, nb);
          else pl_kernels_avx512()->rows[PL_TYPE_Q4_0](w, rb, a, y, r0, r1, n);
#pragma omp barrier
        } }
      double t = now() - t0; if (t < best) best = t; }
    printf("%s n=%d row %zu bytes: %.1f GB/s (%.1f Gweights/s)\n", kind ? "repacked Q4_0" : "GGUF Q4_0   ", n, rb, rb * (double)rows / best / 1e9, (double)n * rows / best / 1e9);
    free(w); free(y); }
}
