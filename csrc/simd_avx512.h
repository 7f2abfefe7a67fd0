/*
 * simd_avx512.h - what the AVX-512 kernel files (kernels_avx512.c, kquants_avx512.c,
 * kquants_repack.c) share: the target attribute their functions are compiled for, and the
 * cross-row reduction of the one-token kernels that hold 16 rows in the lanes.
 */
#ifndef PL_SIMD_AVX512_H
#define PL_SIMD_AVX512_H

#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define AVX512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

/* s[i] (row i): block b's partial sums in lanes 4b..4b+3 -> v[b] (lane i: row i's block-b sum) */
AVX512_INLINE void quad_sums_by_row(const __m512i s[16], __m512i v[4]) {
    __m512i t[8], u[4];
    for (int k = 0; k < 8; k++) /* per 128-bit lane: rows 2k, 2k+1, each two of its four partials */
        t[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(s[2 * k], s[2 * k + 1]),
                                _mm512_unpackhi_epi32(s[2 * k], s[2 * k + 1]));
    for (int j = 0; j < 4; j++) /* 128-bit lane b: the block-b sums of rows 4j..4j+3 */
        u[j] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * j], t[2 * j + 1]),
                                _mm512_unpackhi_epi64(t[2 * j], t[2 * j + 1]));
    const __m512i x0 = _mm512_shuffle_i32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512i x1 = _mm512_shuffle_i32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1));
    const __m512i x2 = _mm512_shuffle_i32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512i x3 = _mm512_shuffle_i32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1));
    v[0] = _mm512_shuffle_i32x4(x0, x2, _MM_SHUFFLE(2, 0, 2, 0));
    v[1] = _mm512_shuffle_i32x4(x1, x3, _MM_SHUFFLE(2, 0, 2, 0));
    v[2] = _mm512_shuffle_i32x4(x0, x2, _MM_SHUFFLE(3, 1, 3, 1));
    v[3] = _mm512_shuffle_i32x4(x1, x3, _MM_SHUFFLE(3, 1, 3, 1));
}

#endif
