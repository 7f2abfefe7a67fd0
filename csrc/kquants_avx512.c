/*
 * kquants_avx512.c - AVX-512 (F, BW, VL, VNNI) decode rows and prefill tiles for the
 * 5-bit, K-quant and IQ4 weight types, put into the AVX-512 set by pl_kq_fill_avx512
 * (kernels_avx512.c).
 *
 * Decode: rows for every type. vpdpbusd multiplies unsigned weight bytes by signed
 * activation bytes and adds each 4 products into an int32 lane, with no 16-bit step
 * to overflow; the activation is rearranged once per call so that its bytes meet the
 * weight bytes where one 64-byte load of the block puts them, and one convert and one
 * multiply-add per 16 lanes apply each lane's scale (weight scale x activation scale).
 *
 * Prefill: 16 rows at a time are unpacked (kq_unpack) and transposed so that each 32-bit
 * lane holds 4 values of one row: one vpdpbusd multiplies 16 rows by 4 activation bytes,
 * integer sums per half block, one float scale per row and half (as kernels_avx512.c's
 * Q4 tiles).
 *
 * Like every x86 kernel file, each function carries its target attribute; dispatch.c
 * uses this set only after cpuid reports the features.
 */
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kq_blocks_x86.h"
#include "kquants_x86.h"
#include "simd_avx512.h"
#include "simd_x86.h"


/* ------------------------------------------------------- the activation, per call */

/* Up to this many values the per-call buffers live on the stack (KQ512_STACK bytes). */
#define KQ512_STACK_N 12288
#define KQ512_STACK (3 * KQ512_STACK_N + 64)

/*
 * Q4_K: per super-block i, 4 vectors matching the two 64-byte loads of its nibbles
 * (chunks of 32 bytes: low nibbles of chunk c are sub-block 2c, high nibbles 2c+1):
 * [a0 | a2], [a1 | a3], [a4 | a6], [a5 | a7] (a_k: the 32 bytes of activation block k);
 * then 16 floats per super-block: da of its 8 blocks, then their s.
 */
AVX512_INLINE void q4k_prep(const block_q8x *a, int nsb, __m512i *q, float *f) {
    for (int i = 0; i < nsb; i++) {
        const block_q8x *ab = a + 8 * i;
        for (int v = 0; v < 4; v++) {
            const int k0 = 4 * (v / 2) + (v & 1); /* blocks k0 and k0 + 2 */
            const __m256i lo = _mm256_loadu_si256((const __m256i *)ab[k0].qs);
            const __m256i hi = _mm256_loadu_si256((const __m256i *)ab[k0 + 2].qs);
            q[4 * i + v] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        }
        for (int k = 0; k < 8; k++) f[16 * i + k] = ab[k].d, f[16 * i + 8 + k] = ab[k].s;
    }
}

/* the 64 bytes of two consecutive activation blocks in one vector */
AVX512_INLINE __m512i q8x_pair(const block_q8x *ab) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)ab[0].qs)),
                              _mm256_loadu_si256((const __m256i *)ab[1].qs), 1);
}

/* Q6_K: the bytes back to back (q), -32 x the sum of each lane's 4 bytes (c), and per
 * super-block da of each 16-value sub-block's activation block (f). */
AVX512_INLINE void q6k_prep(const block_q8x *a, int nsb, __m512i *q, __m512i *c, float *f) {
    for (int i = 0; i < nsb; i++)
        for (int v = 0; v < 4; v++) {
            const block_q8x *ab = a + 8 * i + 2 * v;
            const __m512i x = q8x_pair(ab);
            q[4 * i + v] = x;
            c[4 * i + v] = _mm512_sub_epi32(_mm512_setzero_si512(),
                                            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(32), x));
            for (int k = 0; k < 4; k++) f[16 * i + 4 * v + k] = ab[k / 2].d;
        }
}

/* ------------------------------------------------------------------ Q4_K rows */

/* The 16 floats of the comment below from a Q4_K or Q5_K super-block's first 16 bytes (the
 * two types share that header) and its 16 activation terms af */
AVX512_INLINE __m512 k4_header_terms(const uint8_t *blk, const float *af) {
    const __m512i idm = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m128i hdr = _mm_loadu_si128((const __m128i *)blk);
    const __m512 f16 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(kq_scales_k4(hdr)));
    const __m512 dm = _mm512_permutexvar_ps(idm, _mm512_castps128_ps512(_mm_cvtph_ps(hdr)));
    return _mm512_mul_ps(_mm512_mul_ps(f16, dm), _mm512_loadu_ps(af));
}

/*
 * Per super-block: its first 16 bytes (d, dmin, the 12 scale bytes) become 16 floats,
 * [d sc_k da_k | dmin m_k s_k]: the first 8 scale the sub-block sums (lanes permuted to
 * where each sub-block's lanes are), the last 8 are the minimums' terms, summed apart.
 */
AVX512_INLINE float q4k_row512(const uint8_t *row, int nsb, const __m512i *aq, const float *af) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i i02 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    const __m512i i13 = _mm512_add_epi32(i02, _mm512_set1_epi32(1));
    const __m512i i46 = _mm512_add_epi32(i02, _mm512_set1_epi32(4));
    const __m512i i57 = _mm512_add_epi32(i02, _mm512_set1_epi32(5));
    const __m512 hi16 = _mm512_setr_ps(1, 0.0625f, 1, 0.0625f, 1, 0.0625f, 1, 0.0625f, 1, 1, 1, 1, 1, 1, 1, 1);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), macc = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const uint8_t *blk = row + (size_t)i * sizeof(block_q4_k);
        const __m512 g = k4_header_terms(blk, af + 16 * i);
        /* the odd sub-blocks' sums come from the high nibbles in place (x 16): scaled by 1/16 */
        const __m512 gs = _mm512_mul_ps(g, hi16);
        macc = _mm512_mask_add_ps(macc, 0xff00, macc, g);
        const __m512i x0 = _mm512_loadu_si512(blk + 16), x1 = _mm512_loadu_si512(blk + 80);
        const __m512i *a = aq + 4 * i;
        const __m512i r0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(x0, m4), a[0]);
        const __m512i r1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_andnot_si512(m4, x0), a[1]);
        const __m512i r2 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(x1, m4), a[2]);
        const __m512i r3 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_andnot_si512(m4, x1), a[3]);
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r0), _mm512_permutexvar_ps(i02, gs), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r1), _mm512_permutexvar_ps(i13, gs), acc1);
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r2), _mm512_permutexvar_ps(i46, gs), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r3), _mm512_permutexvar_ps(i57, gs), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - _mm512_reduce_add_ps(macc);
}

/* ------------------------------------------------------------------ Q6_K rows */

/*
 * Per half super-block: ql's 64 bytes hold the low 4 bits (low nibbles: values 0..63,
 * high nibbles: 64..127), qh's 32 bytes, read twice (one copy per 256-bit half), the 2
 * high bits of each quarter at bits 0-1, 2-3, 4-5, 6-7: shifted per 64-bit lane into
 * bits 4-5. The values are 0..63; the zero (32) comes off in the integers (c starts
 * each sum). Lane l of a sum belongs to sub-block 8h + l/4 (low) or 8h + 4 + l/4 (high).
 */
AVX512_INLINE float q6k_row512(const uint8_t *row, int nsb, const __m512i *aq, const __m512i *ac, const float *af) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
    const __m512i shl = _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2), shr = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
    const __m512i quarter = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const uint8_t *blk = row + (size_t)i * sizeof(block_q6_k);
        const __m512 scf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 192))));
        const __m512 g = _mm512_mul_ps(_mm512_mul_ps(scf, _mm512_set1_ps(half(*(const uint16_t *)(blk + 208)))),
                                       _mm512_loadu_ps(af + 16 * i));
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m512i x = _mm512_loadu_si512(blk + 64 * h);
            const __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h)));
            const __m512i lo = _mm512_ternarylogic_epi32(x, m4, _mm512_and_si512(_mm512_sllv_epi64(hb, shl), m30), 0xEA);
            const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(x, 4), m4,
                                                         _mm512_and_si512(_mm512_srlv_epi64(hb, shr), m30), 0xEA);
            const __m512i rl = _mm512_dpbusd_epi32(ac[4 * i + 2 * h], lo, aq[4 * i + 2 * h]);
            const __m512i rh = _mm512_dpbusd_epi32(ac[4 * i + 2 * h + 1], hi, aq[4 * i + 2 * h + 1]);
            const __m512i il = _mm512_add_epi32(quarter, _mm512_set1_epi32(8 * h));
            const __m512i ih = _mm512_add_epi32(il, _mm512_set1_epi32(4));
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(rl), _mm512_permutexvar_ps(il, g), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(rh), _mm512_permutexvar_ps(ih, g), acc1);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* ------------------------------------------------------------------ Q5_K rows */

/* 64 bytes: lo in the low 32, hi in the high 32 */
AVX512_INLINE __m512i bytes2(char lo, char hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(lo)), _mm256_set1_epi8(hi), 1);
}

/*
 * As Q4_K's rows (same activation, same scale vector g) with the high nibbles shifted down,
 * since the fifth bit of sub-block k (bit k of qh byte l, value l) must land on bit 4: a
 * byte mask from qh (read once per 256-bit half) adds 16 where it is set.
 */
AVX512_INLINE float q5k_row512(const uint8_t *row, int nsb, const __m512i *aq, const float *af) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), b16 = _mm512_set1_epi8(0x10);
    const __m512i i02 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    const __m512i i13 = _mm512_add_epi32(i02, _mm512_set1_epi32(1));
    const __m512i i46 = _mm512_add_epi32(i02, _mm512_set1_epi32(4));
    const __m512i i57 = _mm512_add_epi32(i02, _mm512_set1_epi32(5));
    const __m512i k02 = bytes2(1, 4), k13 = bytes2(2, 8), k46 = bytes2(16, 64), k57 = bytes2(32, (char)128);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), macc = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const uint8_t *blk = row + (size_t)i * sizeof(block_q5_k);
        const __m512 g = k4_header_terms(blk, af + 16 * i);
        macc = _mm512_mask_add_ps(macc, 0xff00, macc, g);
        const __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16)));
        const __m512i x0 = _mm512_loadu_si512(blk + 48), x1 = _mm512_loadu_si512(blk + 112);
        __m512i w0 = _mm512_and_si512(x0, m4), w1 = _mm512_and_si512(_mm512_srli_epi16(x0, 4), m4);
        __m512i w2 = _mm512_and_si512(x1, m4), w3 = _mm512_and_si512(_mm512_srli_epi16(x1, 4), m4);
        w0 = _mm512_mask_add_epi8(w0, _mm512_test_epi8_mask(hb, k02), w0, b16);
        w1 = _mm512_mask_add_epi8(w1, _mm512_test_epi8_mask(hb, k13), w1, b16);
        w2 = _mm512_mask_add_epi8(w2, _mm512_test_epi8_mask(hb, k46), w2, b16);
        w3 = _mm512_mask_add_epi8(w3, _mm512_test_epi8_mask(hb, k57), w3, b16);
        const __m512i *a = aq + 4 * i;
        const __m512i r0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, a[0]);
        const __m512i r1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, a[1]);
        const __m512i r2 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w2, a[2]);
        const __m512i r3 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w3, a[3]);
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r0), _mm512_permutexvar_ps(i02, g), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r1), _mm512_permutexvar_ps(i13, g), acc1);
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r2), _mm512_permutexvar_ps(i46, g), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r3), _mm512_permutexvar_ps(i57, g), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - _mm512_reduce_add_ps(macc);
}

/* -------------------------------------------------------------- Q3_K, Q2_K rows */

/*
 * The activation for Q3_K and Q2_K: its bytes back to back (q: vector v of super-block i
 * is blocks 8i + 2v, 8i + 2v + 1); -Z x the sum of each lane's 4 bytes (c, Q3_K's zero);
 * per 16-value sub-block k, da of its block (f) and da x the sum of its 16 bytes (sa, for
 * Q2_K's minimums).
 */
AVX512_INLINE void k16_prep(int Z, const block_q8x *a, int nsb, __m512i *q, __m512i *c, float *f, float *sa) {
    for (int i = 0; i < nsb; i++)
        for (int v = 0; v < 4; v++) {
            const block_q8x *ab = a + 8 * i + 2 * v;
            const __m512i x = q8x_pair(ab);
            q[4 * i + v] = x;
            const __m512i lane = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), x);
            c[4 * i + v] = _mm512_mullo_epi32(lane, _mm512_set1_epi32(-Z));
            int32_t l[16];
            _mm512_storeu_si512(l, lane);
            for (int k = 0; k < 4; k++) {
                f[16 * i + 4 * v + k] = ab[k / 2].d;
                sa[16 * i + 4 * v + k] = ab[k / 2].d * (float)(l[4 * k] + l[4 * k + 1] + l[4 * k + 2] + l[4 * k + 3]);
            }
        }
}

/*
 * Q3_K (T) or Q2_K. Vector v of a super-block (blocks 2v and 2v + 1 in its two 256-bit
 * halves) is qs's 32 bytes n = v / 2, read once per half, shifted per 64-bit lane by the
 * block's 2-bit position; Q3_K's third bit (bit b of hmask byte l for block b) adds 4
 * through a byte mask. Lane l of vector v belongs to sub-block 4v + l / 4, whose scale
 * (d x sc x da) one permute picks from the super-block's 16.
 */
AVX512_INLINE float k16_row512(int T, const uint8_t *row, int nsb, const __m512i *aq, const __m512i *ac,
                               const float *af, const float *asa) {
    const __m512i m3 = _mm512_set1_epi8(3), b4 = _mm512_set1_epi8(4);
    const __m512i sh0 = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2), sh1 = _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6);
    const __m512i quarter = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), macc = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const uint8_t *blk = row + (size_t)i * KQ_BLOCK_BYTES(T);
        __m512 g;
        __m512i hm = _mm512_setzero_si512();
        if (T == PL_TYPE_Q3_K) {
            const __m512i sc = _mm512_sub_epi32(_mm512_cvtepu8_epi32(kq_scales_k3(blk + 96)), _mm512_set1_epi32(32));
            g = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sc), _mm512_set1_ps(half(*(const uint16_t *)(blk + 108)))),
                              _mm512_loadu_ps(af + 16 * i));
            hm = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)blk));
        } else {
            const __m512i s = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk));
            const __m512 sc = _mm512_cvtepi32_ps(_mm512_and_si512(s, _mm512_set1_epi32(15)));
            const __m512 mn = _mm512_cvtepi32_ps(_mm512_srli_epi32(s, 4));
            g = _mm512_mul_ps(_mm512_mul_ps(sc, _mm512_set1_ps(half(*(const uint16_t *)(blk + 80)))),
                              _mm512_loadu_ps(af + 16 * i));
            macc = _mm512_fmadd_ps(_mm512_mul_ps(mn, _mm512_set1_ps(half(*(const uint16_t *)(blk + 82)))),
                                   _mm512_loadu_ps(asa + 16 * i), macc);
        }
        const uint8_t *qs = blk + (T == PL_TYPE_Q3_K ? 32 : 16);
#pragma GCC unroll 2
        for (int n = 0; n < 2; n++) {
            const __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * n)));
            __m512i u0 = _mm512_and_si512(_mm512_srlv_epi64(x, sh0), m3);
            __m512i u1 = _mm512_and_si512(_mm512_srlv_epi64(x, sh1), m3);
            if (T == PL_TYPE_Q3_K) { /* blocks 4n .. 4n + 3: bits 4n .. 4n + 3 of hmask */
                const char b = (char)(1 << (4 * n));
                u0 = _mm512_mask_add_epi8(u0, _mm512_test_epi8_mask(hm, bytes2(b, (char)(b << 1))), u0, b4);
                u1 = _mm512_mask_add_epi8(u1, _mm512_test_epi8_mask(hm, bytes2((char)(b << 2), (char)(b << 3))), u1, b4);
            }
            const int v = 2 * n;
            const __m512i c0 = T == PL_TYPE_Q3_K ? ac[4 * i + v] : _mm512_setzero_si512();
            const __m512i c1 = T == PL_TYPE_Q3_K ? ac[4 * i + v + 1] : _mm512_setzero_si512();
            const __m512i r0 = _mm512_dpbusd_epi32(c0, u0, aq[4 * i + v]);
            const __m512i r1 = _mm512_dpbusd_epi32(c1, u1, aq[4 * i + v + 1]);
            const __m512i i0 = _mm512_add_epi32(quarter, _mm512_set1_epi32(4 * v));
            const __m512i i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(4));
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r0), _mm512_permutexvar_ps(i0, g), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r1), _mm512_permutexvar_ps(i1, g), acc1);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - _mm512_reduce_add_ps(macc);
}

/* ------------------------------------------------------ Q5_0, Q5_1, IQ4_NL, IQ4_XS rows */

/*
 * Four 32-value blocks per step, as kernels_avx512.c's Q4_0 rows: the activation in groups
 * of 4 blocks, lo = the first 16 bytes of each (block b in 128-bit lane b, they meet the
 * low nibbles), hi = the last 16; c = -Z x each lane's 4 bytes of lo and hi together (the
 * type's zero: 16 for Q5_0, 128 for the IQ4 types, whose table lookups are made unsigned
 * by adding 128), da per lane. The fifth bits of Q5_0 / Q5_1 become byte masks (bits 0..15
 * of each block's qh for the low nibbles, 16..31 for the high ones) that add 16. IQ4_XS's
 * 16 nibble bytes per block sit as IQ4_NL's, 4 blocks to a 64-byte load.
 */
typedef struct {
    __m512i lo, hi, c;
    __m512 da;
} q5quad;

AVX512_INLINE void q5quad_prep(int Z, const block_q8x *a, int nb, q5quad *p) {
    for (int g = 0; g * 4 < nb; g++) {
        int8_t lob[64] = {0}, hib[64] = {0};
        float da[16] = {0};
        for (int b = 0; b < 4 && 4 * g + b < nb; b++) {
            const block_q8x *ab = a + 4 * g + b;
            memcpy(lob + 16 * b, ab->qs, 16);
            memcpy(hib + 16 * b, ab->qs + 16, 16);
            for (int i = 0; i < 4; i++) da[4 * b + i] = ab->d;
        }
        const __m512i lo = _mm512_loadu_si512(lob), hi = _mm512_loadu_si512(hib);
        const __m512i cz = _mm512_set1_epi8((char)Z);
        p[g].lo = lo;
        p[g].hi = hi;
        p[g].c = _mm512_sub_epi32(_mm512_setzero_si512(),
                                  _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), cz, lo), cz, hi));
        p[g].da = _mm512_loadu_ps(da);
    }
}

/* the IQ4 table + 128 in every 128-bit lane */
AVX512_INLINE __m512i iq4_table512(void) { return _mm512_broadcast_i32x4(_mm256_castsi256_si128(kq_iq4_table())); }

/* the integer sums of 4 blocks' nibble bytes x (as loaded) with the fifth bits mlo, mhi (Q5_0, Q5_1) */
AVX512_INLINE __m512i quad_dot(int T, __m512i x, uint64_t mlo, uint64_t mhi, const q5quad *p) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i wl = _mm512_and_si512(x, m4), wh = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
    if (T == PL_TYPE_Q5_0 || T == PL_TYPE_Q5_1) {
        const __m512i b5 = _mm512_set1_epi8(0x10);
        wl = _mm512_mask_add_epi8(wl, (__mmask64)mlo, wl, b5);
        wh = _mm512_mask_add_epi8(wh, (__mmask64)mhi, wh, b5);
    } else {
        wl = _mm512_shuffle_epi8(iq4_table512(), wl);
        wh = _mm512_shuffle_epi8(iq4_table512(), wh);
    }
    const __m512i c = KQ_ZERO(T) ? p->c : _mm512_setzero_si512();
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c, wl, p->lo), wh, p->hi);
}

/* the integer sums of blocks 4g.. of a row of type T (Q5_0, Q5_1, IQ4_NL; nq of them, 1..4:
 * the lanes of missing ones stay zero), block b's in lanes 4b..4b+3 */
AVX512_INLINE __m512i quad_isums(int T, const uint8_t *wp, int nq, const q5quad *p) {
    const size_t bb = KQ_BLOCK_BYTES(T);
    const int qs = T == PL_TYPE_Q5_0 ? 6 : T == PL_TYPE_Q5_1 ? 8 : 2, qh = T == PL_TYPE_Q5_0 ? 2 : 4;
    __m512i x = _mm512_setzero_si512();
    uint32_t h[4] = {0, 0, 0, 0};
#pragma GCC unroll 4
    for (int b = 0; b < 4; b++)
        if (b < nq && T != PL_TYPE_IQ4_NL) memcpy(&h[b], wp + b * bb + qh, 4);
    x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(wp + qs)), 0);
    if (nq > 1) x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(wp + bb + qs)), 1);
    if (nq > 2) x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(wp + 2 * bb + qs)), 2);
    if (nq > 3) x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(wp + 3 * bb + qs)), 3);
    const uint64_t mlo = (uint64_t)(h[0] & 0xffff) | (uint64_t)(h[1] & 0xffff) << 16 | (uint64_t)(h[2] & 0xffff) << 32 |
                         (uint64_t)(h[3] & 0xffff) << 48;
    const uint64_t mhi = (uint64_t)(h[0] >> 16) | (uint64_t)(h[1] >> 16) << 16 | (uint64_t)(h[2] >> 16) << 32 |
                         (uint64_t)(h[3] >> 16) << 48;
    return quad_dot(T, x, mlo, mhi, p);
}

/* 16 rows' chains over blocks 4g.. (nq of them), given their exact block sums v (block b's in v[b],
 * a row per lane) and the first 4 bytes of each row's block, dm[b]: d (Q5_1: then m) */
AVX512_INLINE __m512 quad_chain(int T, __m512 acc, const __m512i v[4], const __m512i dm[4], int nq, const block_q8x *a) {
    for (int b = 0; b < nq; b++) {
        const __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm[b]));
        acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v[b]), dw), _mm512_set1_ps(a[b].d), acc);
        if (T == PL_TYPE_Q5_1)
            acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm[b], 16))),
                                  _mm512_set1_ps(a[b].s), acc);
    }
    return acc;
}

/*
 * Q5_0, Q5_1 and IQ4_NL the tile's way round (kq_panel16): 16 rows at once, one per lane, each
 * row's chain over its blocks acc = fma(isum x d_w, d_a, acc) (Q5_1: then acc = fma(m_w, s_a, acc)),
 * so a token gets the same bits alone as in any batch. Per quad of blocks each row's integer
 * sums come out as 16 int32 partial sums (block b in lanes 4b..4b+3); adds with unpacks and
 * shuffles across the 16 rows' vectors turn them into one vector per block holding every row's
 * exact block sum, and one gather per block fetches the 16 rows' d (and m).
 */
#define QUAD_AHEAD 16 /* rows: the panel this far on is asked for as this one is read */

/* On AMD CPUs (into_l2: rows longer than quad_rows16_stream takes) the panel ahead is asked into
 * L2 only: from DRAM on Zen 4 its 16 rows' requests into L1 streamed Q5_0 at 6.3-6.7 GB/s on one
 * thread, into L2 at 7.5-8.1 (Q5_1: 6.1-6.5 and 6.8-8.3; `sh bench/kq_rows_ab.sh`, rows of 2048
 * before the stream took them), and a Qwen2.5 0.5B token (mostly Q5_0) took 0.85x as long; from
 * L2 the same. Elsewhere as measured before: into L1. */
AVX512_INLINE void quad_rows16(int T, int into_l2, const void *w, size_t rb, const block_q8x *a, const q5quad *p, float *y,
                               int r, int r1, int nb) {
    const size_t bb = KQ_BLOCK_BYTES(T);
    const int nr = r1 - r < 16 ? r1 - r : 16;
    const __mmask16 keep = nr == 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    const uint8_t *wr[16];
    int32_t offs[16];
    for (int i = 0; i < 16; i++) {
        wr[i] = (const uint8_t *)ROW(w, rb, r + (i < nr ? i : nr - 1)); /* missing lanes: the last row */
        offs[i] = (int32_t)(wr[i] - wr[0]);
    }
    const __m512i off = _mm512_loadu_si512(offs);
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; 4 * g < nb; g++) {
        const int nq = nb - 4 * g < 4 ? nb - 4 * g : 4;
        __m512i sv[16], v[4];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            const uint8_t *wp = wr[i] + (size_t)(4 * g) * bb;
            if (into_l2) _mm_prefetch((const char *)wp + QUAD_AHEAD * rb, _MM_HINT_T1);
            else _mm_prefetch((const char *)wp + QUAD_AHEAD * rb, _MM_HINT_T0);
            sv[i] = quad_isums(T, wp, nq, p + g);
        }
        quad_sums_by_row(sv, v);
        __m512i dm[4];
        for (int b = 0; b < nq; b++) dm[b] = _mm512_i32gather_epi32(off, wr[0] + (size_t)(4 * g + b) * bb, 1);
        acc = quad_chain(T, acc, v, dm, nq, a + 4 * g);
    }
    _mm512_mask_storeu_ps(y + r, keep, acc);
}

/*
 * The same 16 rows and the same arithmetic as quad_rows16, read in the order the file lays them
 * out: each row whole, front to back, its quads' integer sums kept and its blocks' scales picked
 * up on the way; then the sums per block and each row's chain as there. Integer sums are exact
 * in any order and the chain is unchanged, so every row gets the same bits. For rows of up to
 * STREAM_QUADS quads (2048 values), on AMD CPUs. On Zen 4 quad_rows16's 16 interleaved reads
 * and its gather per block (whose result each chain step waits for) held Q5_0 to 8.4 GB/s in L2;
 * this reads 15.9 (`sh bench/kq_rows_ab.sh`), and a Qwen2.5 0.5B token (mostly Q5_0, rows of 896)
 * takes 0.7x as long (bench/RESULTS.md, "Zen 4"). Longer rows, whose sums would not stay in L1,
 * read no faster this way.
 */
#define STREAM_QUADS 16 /* 16 rows x 16 quads of sums: 16 KiB */

/* one row's quads: integer sums into sv[g][i], scale (Q5_1: and minimum) of block k into d[k][i] */
AVX512_INLINE void stream_row(int T, const uint8_t *wr, int i, int nb, const q5quad *p, __m512i sv[][16],
                              uint32_t d[][16]) {
    const size_t bb = KQ_BLOCK_BYTES(T);
    const int full = nb / 4; /* whole quads: nq a constant 4 */
    for (int g = 0; g < full; g++) sv[g][i] = quad_isums(T, wr + (size_t)(4 * g) * bb, 4, p + g);
    if (nb % 4) sv[full][i] = quad_isums(T, wr + (size_t)(4 * full) * bb, nb % 4, p + full);
    for (int k = 0; k < nb; k++) memcpy(&d[k][i], wr + (size_t)k * bb, 4); /* Q5_0: d and 2 bytes of qh */
}

AVX512_INLINE void quad_rows16_stream(int T, const void *w, size_t rb, const block_q8x *a, const q5quad *p,
                                      float *y, int r, int r1, int nb) {
    const int nr = r1 - r < 16 ? r1 - r : 16, nquads = (nb + 3) / 4;
    const __mmask16 keep = nr == 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    __m512i sv[STREAM_QUADS][16], v[4];
    uint32_t d[4 * STREAM_QUADS][16] __attribute__((aligned(64)));
    for (int i = 0; i < nr; i++) stream_row(T, (const uint8_t *)ROW(w, rb, r + i), i, nb, p, sv, d);
    for (int i = nr; i < 16; i++) { /* lanes past the last row: dropped at the store */
        for (int g = 0; g < nquads; g++) sv[g][i] = _mm512_setzero_si512();
        for (int k = 0; k < nb; k++) d[k][i] = 0;
    }
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < nquads; g++) {
        const int nq = nb - 4 * g < 4 ? nb - 4 * g : 4;
        quad_sums_by_row(sv[g], v);
        __m512i dm[4];
        for (int b = 0; b < nq; b++) dm[b] = _mm512_load_si512(d[4 * g + b]);
        acc = quad_chain(T, acc, v, dm, nq, a + 4 * g);
    }
    _mm512_mask_storeu_ps(y + r, keep, acc);
}

/* One IQ4_XS row: per super-block two groups of 4 blocks (qs's two 64-byte halves),
 * scaled per block by d x (ls - 32), picked for each group's lanes. */
AVX512_INLINE float iq4xs_row512(const uint8_t *row, int nsb, const q5quad *p) {
    const __m512i hi4 = _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const block_iq4_xs *x = (const block_iq4_xs *)(row + (size_t)i * sizeof(block_iq4_xs));
        const __m256i ls = kq_scales_iq4xs(x);
        const __m512 f = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_cvtepi32_ps(ls), _mm256_set1_ps(half(x->d))));
        const q5quad *pq = p + 2 * i;
        const __m512i s0 = quad_dot(PL_TYPE_IQ4_XS, _mm512_loadu_si512(x->qs), 0, 0, pq);
        const __m512i s1 = quad_dot(PL_TYPE_IQ4_XS, _mm512_loadu_si512(x->qs + 64), 0, 0, pq + 1);
        const __m512i lo4 = _mm512_sub_epi32(hi4, _mm512_set1_epi32(4));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(_mm512_permutexvar_ps(lo4, f), pq[0].da), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(_mm512_permutexvar_ps(hi4, f), pq[1].da), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* ------------------------------------------------------------------ rows */

/* bytes of per-call activation buffer a row of n values of type T needs */
static size_t rows_buffer_bytes(int T, int n) {
    const int nb = n / QK, nsb = n / QK_K;
    switch (T) {
    case PL_TYPE_Q4_K:
    case PL_TYPE_Q5_K: return (size_t)nsb * (4 * 64 + 64);
    case PL_TYPE_Q6_K: return (size_t)nsb * (8 * 64 + 64);
    case PL_TYPE_Q3_K:
    case PL_TYPE_Q2_K: return (size_t)nsb * (8 * 64 + 2 * 64);
    default: return (size_t)(nb + 3) / 4 * sizeof(q5quad);
    }
}

AVX512_INLINE void kq_rows512(int T, const void *w, size_t rb, const block_q8x *a, float *y, int r0, int r1, int n) {
    char stackbuf[KQ512_STACK] __attribute__((aligned(64)));
    const int nb = n / QK, nsb = n / QK_K;
    const size_t need = rows_buffer_bytes(T, n);
    char *buf = need <= sizeof stackbuf ? stackbuf : aligned_alloc(64, (need + 63) / 64 * 64);
    if (!buf) { /* out of memory: the AVX2 kernel needs no buffer of this size */
        pl_kernels_avx2.rows[T](w, rb, a, y, r0, r1, n);
        return;
    }
    if (T == PL_TYPE_Q4_K || T == PL_TYPE_Q5_K) {
        __m512i *aq = (__m512i *)buf;
        float *af = (float *)(aq + 4 * (size_t)nsb);
        q4k_prep(a, nsb, aq, af);
        for (int r = r0; r < r1; r++) {
            prefetch_ahead(ROW(w, rb, r), rb, ROW(w, rb, r1));
            y[r] = T == PL_TYPE_Q4_K ? q4k_row512(ROW(w, rb, r), nsb, aq, af) : q5k_row512(ROW(w, rb, r), nsb, aq, af);
        }
    } else if (T == PL_TYPE_Q6_K) {
        __m512i *aq = (__m512i *)buf, *ac = aq + 4 * (size_t)nsb;
        float *af = (float *)(ac + 4 * (size_t)nsb);
        q6k_prep(a, nsb, aq, ac, af);
        for (int r = r0; r < r1; r++) {
            prefetch_ahead(ROW(w, rb, r), rb, ROW(w, rb, r1));
            y[r] = q6k_row512(ROW(w, rb, r), nsb, aq, ac, af);
        }
    } else if (T == PL_TYPE_Q3_K || T == PL_TYPE_Q2_K) {
        __m512i *aq = (__m512i *)buf, *ac = aq + 4 * (size_t)nsb;
        float *af = (float *)(ac + 4 * (size_t)nsb), *asa = af + 16 * (size_t)nsb;
        k16_prep(KQ_ZERO(T), a, nsb, aq, ac, af, asa);
        for (int r = r0; r < r1; r++) {
            prefetch_ahead(ROW(w, rb, r), rb, ROW(w, rb, r1));
            y[r] = k16_row512(T, ROW(w, rb, r), nsb, aq, ac, af, asa);
        }
    } else { /* Q5_0, Q5_1, IQ4_NL, IQ4_XS */
        q5quad *p = (q5quad *)buf;
        q5quad_prep(KQ_ZERO(T), a, nb, p);
        if (T != PL_TYPE_IQ4_XS) {
            const int amd = pl_kq_amd_reads();
            if (amd && (nb + 3) / 4 <= STREAM_QUADS)
                for (int r = r0; r < r1; r += 16) quad_rows16_stream(T, w, rb, a, p, y, r, r1, nb);
            else if (amd) /* a constant in each loop: the compiler makes two of quad_rows16 */
                for (int r = r0; r < r1; r += 16) quad_rows16(T, 1, w, rb, a, p, y, r, r1, nb);
            else
                for (int r = r0; r < r1; r += 16) quad_rows16(T, 0, w, rb, a, p, y, r, r1, nb);
        } else {
            for (int r = r0; r < r1; r++) {
                const uint8_t *wr = ROW(w, rb, r);
                prefetch_ahead(wr, rb, ROW(w, rb, r1));
                y[r] = iq4xs_row512(wr, nsb, p);
            }
        }
    }
    if (buf != stackbuf) free(buf);
}

#define KQ_ROWS512(NAME, TYPE)                                                                            \
    AVX512 static void rows_##NAME(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) { \
        kq_rows512(TYPE, w, rb, (const block_q8x *)act, y, r0, r1, n);                                    \
    }
PL_KQ_TYPES(KQ_ROWS512)

/* ---------------------------------------------------------------- tiles */

typedef struct {
    __m512i q[8]; /* q[g] lane i: values 4g..4g+3 of row i, unsigned */
    __m512 d[2], m[2];
} kpack16;

#define KQ_KCHUNK 16 /* blocks packed at a time: 16 rows x 16 blocks stays in L1 */
#define KQ_TOK 8     /* tokens per pass over a packed chunk */

/* blocks b0..b0+nb of rows r..r+nr-1 (nr <= 16; the missing lanes repeat the last row) */
AVX512_INLINE void kq_pack16(int T, const void *w, size_t rb, int r, int nr, int b0, int nb, kpack16 *pk) {
    for (int b = 0; b < nb; b++) {
        __m256i lo[8], hi[8];
        float d0[16], d1[16], m0[16], m1[16];
        for (int i = 0; i < 16; i++) {
            kblock k;
            kq_unpack(T, ROW(w, rb, r + (i < nr ? i : nr - 1)), b0 + b, &k);
            if (i < 8) lo[i] = k.u;
            else hi[i - 8] = k.u;
            d0[i] = k.d[0], d1[i] = k.d[1], m0[i] = k.m[0], m1[i] = k.m[1];
        }
        transpose8(lo);
        transpose8(hi);
        for (int g = 0; g < 8; g++) pk[b].q[g] = _mm512_inserti64x4(_mm512_castsi256_si512(lo[g]), hi[g], 1);
        pk[b].d[0] = _mm512_loadu_ps(d0), pk[b].d[1] = _mm512_loadu_ps(d1);
        pk[b].m[0] = _mm512_loadu_ps(m0), pk[b].m[1] = _mm512_loadu_ps(m1);
    }
}

/* 16 rows (lanes) x TT tokens over nb packed blocks, added into acc */
AVX512_INLINE void kq_panel16(int T, int TT, const kpack16 *pk, int nb, const block_q8x *const *a,
                              const kq_asum *const *s, __m512 *acc) {
    const int H = KQ_HALVES(T), Z = KQ_ZERO(T);
    for (int b = 0; b < nb; b++) {
        const kpack16 *p = pk + b;
        __m512i s0[KQ_TOK], s1[KQ_TOK];
#pragma GCC unroll 8
        for (int t = 0; t < TT; t++) {
            s0[t] = Z ? _mm512_set1_epi32(-Z * (H == 1 ? s[t][b].a[0] + s[t][b].a[1] : s[t][b].a[0])) : _mm512_setzero_si512();
            if (H == 2) s1[t] = Z ? _mm512_set1_epi32(-Z * s[t][b].a[1]) : _mm512_setzero_si512();
        }
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++)
#pragma GCC unroll 8
            for (int t = 0; t < TT; t++) {
                int32_t av;
                memcpy(&av, a[t][b].qs + 4 * g, 4);
                if (H == 2 && g >= 4) s1[t] = _mm512_dpbusd_epi32(s1[t], p->q[g], _mm512_set1_epi32(av));
                else s0[t] = _mm512_dpbusd_epi32(s0[t], p->q[g], _mm512_set1_epi32(av));
            }
#pragma GCC unroll 8
        for (int t = 0; t < TT; t++) {
            const block_q8x *ab = a[t] + b;
            __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(s0[t]), p->d[0]);
            if (H == 2) f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[t]), p->d[1], f);
            acc[t] = _mm512_fmadd_ps(f, _mm512_set1_ps(ab->d), acc[t]);
            if (KQ_HAS_M(T)) {
                if (H == 1) {
                    acc[t] = _mm512_fmadd_ps(p->m[0], _mm512_set1_ps(ab->s), acc[t]);
                } else {
                    acc[t] = _mm512_fmadd_ps(p->m[0], _mm512_set1_ps(s[t][b].sa[0]), acc[t]);
                    acc[t] = _mm512_fmadd_ps(p->m[1], _mm512_set1_ps(s[t][b].sa[1]), acc[t]);
                }
            }
        }
    }
}

AVX512_INLINE void kq_tile512(int T, const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, int r0,
                              int r1, int nt, int n) {
    const int nbt = n / QK;
    kq_asum *sums = malloc(sizeof(kq_asum) * (size_t)nt * nbt);
    if (!sums) { /* out of memory: the AVX2 tile falls back to rows */
        pl_kernels_avx2.tile[T](w, rb, act, as, y, ys, r0, r1, nt, n);
        return;
    }
    kq_asums(act, as, nt, nbt, sums);
    kpack16 pk[KQ_KCHUNK];
    for (int r = r0; r < r1; r += 16) {
        const int nr = r1 - r < 16 ? r1 - r : 16;
        const __mmask16 m = nr == 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
        for (int b0 = 0; b0 < nbt; b0 += KQ_KCHUNK) {
            const int nb = nbt - b0 < KQ_KCHUNK ? nbt - b0 : KQ_KCHUNK;
            kq_pack16(T, w, rb, r, nr, b0, nb, pk);
            for (int t = 0; t < nt;) {
                const int TT = nt - t >= 8 ? 8 : nt - t >= 4 ? 4 : nt - t >= 2 ? 2 : 1;
                const block_q8x *a[KQ_TOK];
                const kq_asum *s[KQ_TOK];
                __m512 acc[KQ_TOK];
                for (int j = 0; j < TT; j++) {
                    a[j] = (const block_q8x *)((const char *)act + (size_t)(t + j) * as) + b0;
                    s[j] = sums + (size_t)(t + j) * nbt + b0;
                    acc[j] = b0 ? _mm512_maskz_loadu_ps(m, y + (t + j) * ys + r) : _mm512_setzero_ps();
                }
                switch (TT) {
                case 8: kq_panel16(T, 8, pk, nb, a, s, acc); break;
                case 4: kq_panel16(T, 4, pk, nb, a, s, acc); break;
                case 2: kq_panel16(T, 2, pk, nb, a, s, acc); break;
                default: kq_panel16(T, 1, pk, nb, a, s, acc); break;
                }
                for (int j = 0; j < TT; j++) _mm512_mask_storeu_ps(y + (t + j) * ys + r, m, acc[j]);
                t += TT;
            }
        }
    }
    free(sums);
}

#define KQ_TILE512(NAME, TYPE)                                                                            \
    AVX512 static void tile_##NAME(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, \
                                   int r0, int r1, int nt, int n) {                                       \
        kq_tile512(TYPE, w, rb, act, as, y, ys, r0, r1, nt, n);                                           \
    }
PL_KQ_TYPES(KQ_TILE512)

#define KQ_SET_TILE(NAME, TYPE) set->tile[TYPE] = tile_##NAME;
#define KQ_SET_ROWS(NAME, TYPE) set->rows[TYPE] = rows_##NAME;

void pl_kq_fill_avx512(pl_kernel_set *set) {
    PL_KQ_TYPES(KQ_SET_TILE)
    PL_KQ_TYPES(KQ_SET_ROWS)
    /* these rows are their tiles' arithmetic (quad_rows16): batch-invariant mode's one-token kernels */
    set->rows_invariant[PL_TYPE_Q5_0] = rows_q5_0;
    set->rows_invariant[PL_TYPE_Q5_1] = rows_q5_1;
    set->rows_invariant[PL_TYPE_IQ4_NL] = rows_iq4_nl;
}

#endif
