/*
 * kquants_avx2.c - AVX2 decode rows and prefill tiles for the 5-bit, K-quant and IQ4
 * weight types (Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS), for pl_kernels_avx2.
 *
 * Like kernels_avx2.c every function carries the AVX2 target attribute, and dispatch.c
 * uses the set only after cpuid reports the features.
 *
 * Decode (rows): the activation is first rearranged once per call (kq_act) into what
 * every row then reads: its bytes back to back, and per block da, s and the sums of
 * each 16-byte half. Q4_K and Q6_K, the bulk of Q4_K_M files, read a super-block as
 * 8 integer dot products (one per activation block) whose int32 lanes are reduced
 * together by one tree of horizontal adds: one convert and one multiply-add per 256
 * values. Q5_0 reads blocks in pairs as the Q4 rows do. The other types go block by
 * block through kq_unpack.
 *
 * Prefill (tile): 8 rows at a time are unpacked (kq_unpack) and transposed into a
 * buffer where each 32-bit lane holds 4 values of one row, so one maddubs multiplies 8
 * rows by 4 activation bytes (as kernels_avx2.c's Q4 tiles); integer sums per half block,
 * one float scale per row and half.
 */
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kq_blocks_x86.h"
#include "kquants_x86.h"
#include "simd_x86.h"

AVX2_INLINE float kq_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ------------------------------------------------------- the activation, per call */

/*
 * What every row of a decode call reads: q, the activation's bytes back to back; da and
 * s of each block; a16, the sum of each 16 bytes. Buffers on the stack up to KQ_STACK_N
 * values (the widest rows of the usual models), else on the heap.
 */
#define KQ_STACK_N 12288
typedef struct {
    int8_t *q;
    float *da, *s;
    int16_t *a16;
    void *heap;
} kq_act;

typedef struct {
    int8_t q[KQ_STACK_N];
    float da[KQ_STACK_N / QK], s[KQ_STACK_N / QK];
    int16_t a16[KQ_STACK_N / 16];
} kq_act_buf;

/* 0 on success; -1 when out of memory */
AVX2 static int kq_act_prep(const block_q8x *a, int n, kq_act_buf *buf, kq_act *k) {
    const int nb = n / QK;
    k->heap = NULL;
    if (n <= KQ_STACK_N) {
        k->q = buf->q, k->da = buf->da, k->s = buf->s, k->a16 = buf->a16;
    } else {
        char *h = malloc((size_t)n + (size_t)nb * 8 + (size_t)n / 16 * 2 + 64);
        if (!h) return -1;
        k->heap = h;
        k->da = (float *)h;
        k->s = k->da + nb;
        k->a16 = (int16_t *)(k->s + nb);
        k->q = (int8_t *)(k->a16 + n / 16);
    }
    for (int b = 0; b < nb; b++) {
        memcpy(k->q + 32 * b, a[b].qs, QK);
        k->da[b] = a[b].d;
        k->s[b] = a[b].s;
        int s0 = 0, s1 = 0;
        for (int j = 0; j < 16; j++) s0 += a[b].qs[j], s1 += a[b].qs[16 + j];
        k->a16[2 * b] = (int16_t)s0;
        k->a16[2 * b + 1] = (int16_t)s1;
    }
    return 0;
}

/* ------------------------------------------------------------ Q4_K, Q6_K rows */

/* lane k of the result = the sum of the 8 lanes of p[k] */
AVX2_INLINE __m256i kq_sum8x8(const __m256i p[8]) {
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i q0 = _mm256_hadd_epi32(h01, h23), q1 = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

/* One Q4_K or Q5_K row: per super-block 8 sub-block sums (sub-block k meets activation block
 * k), x = d * sc_k * q - dmin * m_k; the minimums meet the activation sums s. Q5_K's fifth
 * bits (bit k of qh byte l: value l of sub-block k) add 16. */
AVX2_INLINE float q4k_row(int T, const uint8_t *row, int nsb, const kq_act *A) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1), b1 = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps(), macc = _mm256_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const uint8_t *blk = row + (size_t)i * KQ_BLOCK_BYTES(T);
        const uint8_t *qs = blk + (T == PL_TYPE_Q5_K ? 48 : 16);
        const __m256i qh = T == PL_TYPE_Q5_K ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        const __m128i hdr = _mm_loadu_si128((const __m128i *)blk);
        const __m128 dd = _mm_cvtph_ps(hdr); /* d, dmin */
        const __m128i scm = kq_scales_k4(hdr);
        const __m256 scf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scm));
        const __m256 mf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scm, 8)));
        const int8_t *aq = A->q + 256 * (size_t)i;
        __m256i p[8];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            __m256i lo = _mm256_and_si256(x, m4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
            if (T == PL_TYPE_Q5_K) {
                const __m256i h = _mm256_srli_epi16(qh, 2 * j); /* bits 2j, 2j+1 to bits 0, 1 */
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(h, b1), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 1), b1), 4));
            }
            p[2 * j] = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(aq + 64 * j))), ones);
            p[2 * j + 1] =
                _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(aq + 64 * j + 32))), ones);
        }
        const __m256 t = _mm256_cvtepi32_ps(kq_sum8x8(p));
        const __m256 f = _mm256_mul_ps(_mm256_mul_ps(scf, _mm256_broadcastss_ps(dd)), _mm256_loadu_ps(A->da + 8 * i));
        acc = _mm256_fmadd_ps(t, f, acc);
        const __m256 dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
        macc = _mm256_fmadd_ps(_mm256_mul_ps(mf, dmin), _mm256_loadu_ps(A->s + 8 * i), macc);
    }
    return kq_hsum8(acc) - kq_hsum8(macc);
}

/* The 16 sub-block scales of a Q3_K super-block as int16 minus 32 */
AVX2_INLINE __m256i q3k_scales(const uint8_t *s) {
    return _mm256_sub_epi16(_mm256_cvtepu8_epi16(kq_scales_k3(s)), _mm256_set1_epi16(32));
}

/*
 * One Q6_K, Q3_K or Q2_K row (16-value sub-blocks). A half super-block (128 values) is four
 * 32-value quarters, quarter m meeting activation block 4h + m. Q6_K: ql's 64 bytes give
 * the low 4 bits (low nibbles: quarters 0, 1; high nibbles: 2, 3), qh's 32 bytes 2 more bits
 * per quarter; Q3_K: qs's 32 bytes 2 bits per quarter, hmask the third (bit 4h + m); Q2_K:
 * qs's 2 bits per quarter. The values are unsigned (zero at 32, 4, 0): maddubs by the
 * activation, then madd by the sub-block scales (int16), so the 8 sums of a super-block come
 * out scaled; the zero comes off as Z x sum_k sc_k x (activation sum of sub-block k), from
 * a16, and Q2_K's minimums the same way in float.
 */
AVX2_INLINE float k16_row(int T, const uint8_t *row, int nsb, const kq_act *A) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps(), macc = _mm256_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const uint8_t *blk = row + (size_t)i * KQ_BLOCK_BYTES(T);
        __m256i sc16, mn16 = _mm256_setzero_si256();
        float d, dmin = 0.0f;
        if (T == PL_TYPE_Q6_K) {
            sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 192)));
            d = half(*(const uint16_t *)(blk + 208));
        } else if (T == PL_TYPE_Q3_K) {
            sc16 = q3k_scales(blk + 96);
            d = half(*(const uint16_t *)(blk + 108));
        } else {
            const __m256i s = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)blk));
            sc16 = _mm256_and_si256(s, _mm256_set1_epi16(15));
            mn16 = _mm256_srli_epi16(s, 4);
            d = half(*(const uint16_t *)(blk + 80));
            dmin = half(*(const uint16_t *)(blk + 82));
        }
        const __m256i scl = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sc16));      /* sc0..7 twice */
        const __m256i sch = _mm256_broadcastsi128_si256(_mm256_extracti128_si256(sc16, 1)); /* sc8..15 twice */
        const int8_t *aq = A->q + 256 * (size_t)i;
        __m256i p[8];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i v[4];
            if (T == PL_TYPE_Q6_K) {
                const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h));
                const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h + 32));
                const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
                v[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
                v[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
                v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
                v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                       _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
            } else {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(blk + (T == PL_TYPE_Q3_K ? 32 : 16) + 32 * h));
                const __m256i hm = T == PL_TYPE_Q3_K ? _mm256_loadu_si256((const __m256i *)blk) : _mm256_setzero_si256();
#pragma GCC unroll 4
                for (int m = 0; m < 4; m++) {
                    v[m] = _mm256_and_si256(_mm256_srli_epi16(q, 2 * m), m3);
                    if (T == PL_TYPE_Q3_K) { /* bit j = 4h + m of hmask, to bit 2 */
                        const int j = 4 * h + m;
                        const __m256i hb = j >= 2 ? _mm256_srli_epi16(hm, j - 2) : _mm256_slli_epi16(hm, 2 - j);
                        v[m] = _mm256_or_si256(v[m], _mm256_and_si256(hb, _mm256_set1_epi8(4)));
                    }
                }
            }
            const __m256i sc = h ? sch : scl;
#pragma GCC unroll 4
            for (int m = 0; m < 4; m++) {
                /* int16 scale of sub-block 2b (low 128 bits) and 2b+1 (high), b = 4h + m */
                const __m256i idx = _mm256_setr_epi8(4 * m, 4 * m + 1, 4 * m, 4 * m + 1, 4 * m, 4 * m + 1, 4 * m, 4 * m + 1,
                                                     4 * m, 4 * m + 1, 4 * m, 4 * m + 1, 4 * m, 4 * m + 1, 4 * m, 4 * m + 1,
                                                     4 * m + 2, 4 * m + 3, 4 * m + 2, 4 * m + 3, 4 * m + 2, 4 * m + 3, 4 * m + 2,
                                                     4 * m + 3, 4 * m + 2, 4 * m + 3, 4 * m + 2, 4 * m + 3, 4 * m + 2, 4 * m + 3,
                                                     4 * m + 2, 4 * m + 3);
                const __m256i a = _mm256_loadu_si256((const __m256i *)(aq + 32 * (4 * h + m)));
                p[4 * h + m] = _mm256_madd_epi16(_mm256_maddubs_epi16(v[m], a), _mm256_shuffle_epi8(sc, idx));
            }
        }
        const __m256i a16 = _mm256_loadu_si256((const __m256i *)(A->a16 + 16 * (size_t)i));
        __m256i t = kq_sum8x8(p);
        if (T != PL_TYPE_Q2_K) { /* lane b: sc_2b A_2b + sc_2b+1 A_2b+1, times the zero */
            const __m256i off = _mm256_madd_epi16(sc16, a16);
            t = _mm256_sub_epi32(t, _mm256_slli_epi32(off, T == PL_TYPE_Q6_K ? 5 : 2));
        }
        const __m256 da = _mm256_loadu_ps(A->da + 8 * i);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(_mm256_set1_ps(d), da), acc);
        if (T == PL_TYPE_Q2_K)
            macc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(mn16, a16)), _mm256_mul_ps(_mm256_set1_ps(dmin), da),
                                   macc);
    }
    return kq_hsum8(acc) - kq_hsum8(macc);
}

/* One IQ4_XS row: each 32-value block's 16 nibble bytes looked up in the signed table, then
 * |v| times the activation with v's sign (maddubs would saturate on v + 128); the 8 block
 * sums reduced as Q4_K's, scaled by d * (ls_k - 32) * da_k. */
AVX2_INLINE float iq4xs_row(const uint8_t *row, int nsb, const kq_act *A) {
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)IQ4_VALUES));
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const block_iq4_xs *x = (const block_iq4_xs *)(row + (size_t)i * sizeof(block_iq4_xs));
        const int8_t *aq = A->q + 256 * (size_t)i;
        __m256i p[8];
#pragma GCC unroll 8
        for (int b = 0; b < 8; b++) {
            const __m256i v = _mm256_shuffle_epi8(tab, q4_unpack(x->qs + 16 * b));
            const __m256i a = _mm256_loadu_si256((const __m256i *)(aq + 32 * b));
            p[b] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(a, v)), ones);
        }
        const __m256i ls = kq_scales_iq4xs(x);
        const __m256 f = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(ls), _mm256_set1_ps(half(x->d))),
                                       _mm256_loadu_ps(A->da + 8 * i));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(kq_sum8x8(p)), f, acc);
    }
    return kq_hsum8(acc);
}

/* ----------------------------------------------------------------- Q5_0 rows */

/*
 * Two Q5_0 blocks per step, as kernels_avx2.c's Q4 rows: the 32 nibble bytes of both
 * (block 2j in the low 128 bits) against the activation rearranged once per call into
 * lo = [a0[0..15] | a1[0..15]] and hi = [a0[16..31] | a1[16..31]]; the fifth bits are
 * spread to bytes from the two qh words; the zero (16) comes off in the integers.
 */
typedef struct {
    __m256i lo, hi, c; /* c: 16 x the pair sums of lo and hi together (int16) */
    __m128 da;         /* da0, da1 */
} q5pair;

AVX2_INLINE void q5pair_prep(const block_q8x *a, int np, q5pair *p) {
    const __m256i c16 = _mm256_set1_epi8(16);
    for (int j = 0; j < np; j++) {
        const __m256i v0 = _mm256_loadu_si256((const __m256i *)a[2 * j].qs);
        const __m256i v1 = _mm256_loadu_si256((const __m256i *)a[2 * j + 1].qs);
        p[j].lo = _mm256_permute2x128_si256(v0, v1, 0x20);
        p[j].hi = _mm256_permute2x128_si256(v0, v1, 0x31);
        p[j].c = _mm256_add_epi16(_mm256_maddubs_epi16(c16, p[j].lo), _mm256_maddubs_epi16(c16, p[j].hi));
        p[j].da = _mm_setr_ps(a[2 * j].d, a[2 * j + 1].d, 0.0f, 0.0f);
    }
}

/* the fifth bits of two blocks as 0x10 bytes: low half for the low nibbles (bits 0..15), high for bits 16..31;
 * block 0 in the low 128 bits of each */
AVX2_INLINE void q5_high_bits(uint32_t h0, uint32_t h1, __m256i *lo, __m256i *hi) {
    const __m256i v = _mm256_setr_epi32((int)h0, (int)h0, (int)h0, (int)h0, (int)h1, (int)h1, (int)h1, (int)h1);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull), b5 = _mm256_set1_epi8(0x10);
    const __m256i il = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1,
                                        1, 1, 1, 1, 1, 1);
    const __m256i ih = _mm256_add_epi8(il, _mm256_set1_epi8(2));
    *lo = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, il), bit), bit), b5);
    *hi = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, ih), bit), bit), b5);
}

AVX2_INLINE void q5pair_dot(const uint8_t *b0, const uint8_t *b1, const q5pair *ap, __m256 *acc) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const block_q5_0 *x0 = (const block_q5_0 *)b0, *x1 = (const block_q5_0 *)b1;
    const __m256i x = _mm256_loadu2_m128i((const __m128i *)x1->qs, (const __m128i *)x0->qs);
    uint32_t h0, h1;
    memcpy(&h0, x0->qh, 4);
    memcpy(&h1, x1->qh, 4);
    __m256i hl, hh;
    q5_high_bits(h0, h1, &hl, &hh);
    const __m256i wl = _mm256_or_si256(_mm256_and_si256(x, m4), hl);
    const __m256i wh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(x, 4), m4), hh);
    __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(wl, ap->lo), _mm256_maddubs_epi16(wh, ap->hi));
    s16 = _mm256_sub_epi16(s16, ap->c);
    const __m256 pf = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
    const __m128 sc = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)x0->d | (uint32_t)x1->d << 16))), ap->da);
    *acc = _mm256_fmadd_ps(pf, _mm256_permutevar8x32_ps(_mm256_castps128_ps256(sc), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)),
                           *acc);
}

/* ------------------------------------------------------ any type, block by block */

/* One row of type T through kq_unpack: per block an int32 vector (lanes 0-3 half 0, 4-7
 * half 1) scaled per half; the offsets M per block in scalar floats. */
AVX2_INLINE float kq_row_generic(int T, const uint8_t *row, int nb, const kq_act *A) {
    __m256 acc = _mm256_setzero_ps();
    float off = 0.0f;
    const int Z = KQ_ZERO(T);
    for (int b = 0; b < nb; b++) {
        kblock k;
        kq_unpack(T, row, b, &k);
        const __m256i a = _mm256_loadu_si256((const __m256i *)(A->q + 32 * (size_t)b));
        __m256i p16;
        if (Z == 128) { /* u - 128 is the signed value: |v| times a with v's sign (maddubs would saturate on u) */
            const __m256i v = _mm256_xor_si256(k.u, _mm256_set1_epi8((char)0x80));
            p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(a, v));
        } else {
            p16 = _mm256_maddubs_epi16(k.u, a);
            /* the zero comes off per pair, in the integers: a weight of 0 against a large activation
             * then adds exactly nothing (subtracted later in float, the two would cancel inexactly) */
            if (Z) p16 = _mm256_sub_epi16(p16, _mm256_maddubs_epi16(_mm256_set1_epi8((char)Z), a));
        }
        const int a0 = A->a16[2 * b], a1 = A->a16[2 * b + 1];
        const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
        const float da = A->da[b];
        const __m256 dv = _mm256_setr_ps(k.d[0], k.d[0], k.d[0], k.d[0], k.d[1], k.d[1], k.d[1], k.d[1]);
        acc = _mm256_fmadd_ps(p, _mm256_mul_ps(dv, _mm256_set1_ps(da)), acc);
        if (KQ_HAS_M(T)) off += da * (k.m[0] * (float)a0 + k.m[1] * (float)a1);
    }
    return kq_hsum8(acc) + off;
}

/* Rows [r0, r1) of type T */
AVX2_INLINE void kq_rows(int T, const void *w, size_t rb, const block_q8x *a, float *y, int r0, int r1, int n) {
    union { /* one or the other: Q5_0's pairs, every other type's kq_act */
        kq_act_buf act;
        q5pair pairs[KQ_STACK_N / 64];
    } buf;
    kq_act A;
    if (T == PL_TYPE_Q5_0) {
        const int nb = n / QK, np = nb / 2;
        q5pair *const stackbuf = buf.pairs;
        q5pair *ap = np <= KQ_STACK_N / 64 ? stackbuf : aligned_alloc(32, sizeof(q5pair) * (size_t)np);
        if (!ap) {
            pl_kernels_scalar.rows[T](w, rb, a, y, r0, r1, n);
            return;
        }
        q5pair_prep(a, np, ap);
        for (int r = r0; r < r1; r++) {
            const uint8_t *wr = ROW(w, rb, r);
            prefetch_ahead(wr, rb, ROW(w, rb, r1));
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
            int j = 0;
            for (; j + 2 <= np; j += 2) {
                q5pair_dot(wr + 2 * j * sizeof(block_q5_0), wr + (2 * j + 1) * sizeof(block_q5_0), ap + j, &acc0);
                q5pair_dot(wr + (2 * j + 2) * sizeof(block_q5_0), wr + (2 * j + 3) * sizeof(block_q5_0), ap + j + 1, &acc1);
            }
            if (j < np) q5pair_dot(wr + 2 * j * sizeof(block_q5_0), wr + (2 * j + 1) * sizeof(block_q5_0), ap + j, &acc0);
            float s = kq_hsum8(_mm256_add_ps(acc0, acc1));
            if (nb & 1) { /* a last odd block */
                const block_q5_0 *x = (const block_q5_0 *)wr + nb - 1;
                int sum = 0;
                uint32_t qh;
                memcpy(&qh, x->qh, 4);
                for (int i = 0; i < QK / 2; i++) {
                    sum += ((x->qs[i] & 15) + (int)((qh >> i) & 1) * 16 - 16) * a[nb - 1].qs[i];
                    sum += ((x->qs[i] >> 4) + (int)((qh >> (i + 16)) & 1) * 16 - 16) * a[nb - 1].qs[i + 16];
                }
                s += half(x->d) * a[nb - 1].d * (float)sum;
            }
            y[r] = s;
        }
        if (ap != stackbuf) free(ap);
        return;
    }
    if (kq_act_prep(a, n, &buf.act, &A)) {
        pl_kernels_scalar.rows[T](w, rb, a, y, r0, r1, n);
        return;
    }
    for (int r = r0; r < r1; r++) {
        const uint8_t *wr = ROW(w, rb, r);
        prefetch_ahead(wr, rb, ROW(w, rb, r1));
        if (T == PL_TYPE_Q4_K || T == PL_TYPE_Q5_K) y[r] = q4k_row(T, wr, n / QK_K, &A);
        else if (T == PL_TYPE_Q6_K || T == PL_TYPE_Q3_K || T == PL_TYPE_Q2_K) y[r] = k16_row(T, wr, n / QK_K, &A);
        else if (T == PL_TYPE_IQ4_XS) y[r] = iq4xs_row(wr, n / QK_K, &A);
        else y[r] = kq_row_generic(T, wr, n / QK, &A);
    }
    free(A.heap);
}

/* ---------------------------------------------------------------- tiles */

/*
 * A packed chunk of 8 rows, per 32-value block: q[g] holds values 4g..4g+3 of rows 0..7
 * (row i in 32-bit lane i), as unsigned bytes, or for the IQ4 types (Z = 128) as |v| with
 * the signed values in sg (maddubs would saturate on u); then each row's scales and offsets
 * per half.
 */
typedef struct {
    __m256i q[8];
    __m256i sg[8];
    __m256 d[2], m[2];
} kpack8;

#define KQ_KCHUNK 16 /* blocks packed at a time: 8 rows x 16 blocks stays in L1 */
#define KQ_TOK 4     /* tokens per pass over a packed chunk */

AVX2_INLINE void kq_pack8(int T, const void *w, size_t rb, int r, int b0, int nb, kpack8 *pk) {
    for (int b = 0; b < nb; b++) {
        __m256i v[8];
        float d0[8], d1[8], m0[8], m1[8];
        for (int i = 0; i < 8; i++) {
            kblock k;
            kq_unpack(T, ROW(w, rb, r + i), b0 + b, &k);
            v[i] = k.u;
            d0[i] = k.d[0], d1[i] = k.d[1], m0[i] = k.m[0], m1[i] = k.m[1];
        }
        transpose8(v);
        for (int g = 0; g < 8; g++) {
            if (KQ_ZERO(T) == 128) {
                const __m256i s = _mm256_xor_si256(v[g], _mm256_set1_epi8((char)0x80));
                pk[b].sg[g] = s;
                pk[b].q[g] = _mm256_sign_epi8(s, s);
            } else {
                pk[b].q[g] = v[g];
            }
        }
        pk[b].d[0] = _mm256_loadu_ps(d0), pk[b].d[1] = _mm256_loadu_ps(d1);
        pk[b].m[0] = _mm256_loadu_ps(m0), pk[b].m[1] = _mm256_loadu_ps(m1);
    }
}

/* int32 sums (8 rows) of groups g0..g1-1 of block p against activation bytes q */
AVX2_INLINE __m256i kq_groups(int T, const kpack8 *p, const int8_t *q, int g0, int g1) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int umax = KQ_UMAX(T);
    /* maddubs pairs stay within 2 * umax * 128; add as many as int16 holds before widening */
    const int per = KQ_ZERO(T) == 128 ? 1 : 32767 / (2 * umax * 128);
    __m256i s32 = _mm256_setzero_si256();
    for (int g = g0; g < g1; g += per) {
        __m256i s16 = _mm256_setzero_si256();
        for (int e = g; e < g + per && e < g1; e++) {
            int32_t a4;
            memcpy(&a4, q + 4 * e, 4);
            __m256i a = _mm256_set1_epi32(a4);
            if (KQ_ZERO(T) == 128) a = _mm256_sign_epi8(a, p->sg[e]);
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(p->q[e], a));
        }
        s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(s16, ones));
    }
    return s32;
}

/* 8 rows (lanes) x TT tokens over nb packed blocks; adds into acc */
AVX2_INLINE void kq_panel(int T, int TT, const kpack8 *pk, int nb, const block_q8x *const *a,
                          const kq_asum *const *s, __m256 *acc) {
    const int H = KQ_HALVES(T), Z = KQ_ZERO(T) == 128 ? 0 : KQ_ZERO(T);
    for (int b = 0; b < nb; b++) {
        const kpack8 *p = pk + b;
#pragma GCC unroll 4
        for (int t = 0; t < TT; t++) {
            const block_q8x *ab = a[t] + b;
            const kq_asum *as = s[t] + b;
            __m256 f;
            if (H == 1) {
                __m256i i32 = kq_groups(T, p, ab->qs, 0, 8);
                if (Z) i32 = _mm256_sub_epi32(i32, _mm256_set1_epi32(Z * (as->a[0] + as->a[1])));
                f = _mm256_mul_ps(_mm256_cvtepi32_ps(i32), p->d[0]);
            } else {
                __m256i i0 = kq_groups(T, p, ab->qs, 0, 4), i1 = kq_groups(T, p, ab->qs, 4, 8);
                if (Z) {
                    i0 = _mm256_sub_epi32(i0, _mm256_set1_epi32(Z * as->a[0]));
                    i1 = _mm256_sub_epi32(i1, _mm256_set1_epi32(Z * as->a[1]));
                }
                f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), p->d[1], _mm256_mul_ps(_mm256_cvtepi32_ps(i0), p->d[0]));
            }
            acc[t] = _mm256_fmadd_ps(f, _mm256_broadcast_ss(&ab->d), acc[t]);
            if (KQ_HAS_M(T)) {
                if (H == 1) {
                    acc[t] = _mm256_fmadd_ps(p->m[0], _mm256_broadcast_ss(&ab->s), acc[t]);
                } else {
                    acc[t] = _mm256_fmadd_ps(p->m[0], _mm256_broadcast_ss(&as->sa[0]), acc[t]);
                    acc[t] = _mm256_fmadd_ps(p->m[1], _mm256_broadcast_ss(&as->sa[1]), acc[t]);
                }
            }
        }
    }
}

AVX2_INLINE void kq_tile(int T, pl_rows_fn rows, const void *w, size_t rb, const void *act, size_t as, float *y,
                         size_t ys, int r0, int r1, int nt, int n) {
    const int nbt = n / QK;
    int r = r0;
    kq_asum *sums = nt >= 2 && r1 - r0 >= 8 ? malloc(sizeof(kq_asum) * (size_t)nt * nbt) : NULL;
    if (sums) {
        kq_asums(act, as, nt, nbt, sums);
        kpack8 pk[KQ_KCHUNK];
        for (; r + 8 <= r1; r += 8) {
            for (int b0 = 0; b0 < nbt; b0 += KQ_KCHUNK) {
                const int nb = nbt - b0 < KQ_KCHUNK ? nbt - b0 : KQ_KCHUNK;
                kq_pack8(T, w, rb, r, b0, nb, pk);
                for (int t = 0; t < nt; t += KQ_TOK) {
                    const int TT = nt - t >= KQ_TOK ? KQ_TOK : nt - t;
                    const block_q8x *a[KQ_TOK];
                    const kq_asum *s[KQ_TOK];
                    __m256 acc[KQ_TOK];
                    for (int j = 0; j < TT; j++) {
                        a[j] = (const block_q8x *)((const char *)act + (size_t)(t + j) * as) + b0;
                        s[j] = sums + (size_t)(t + j) * nbt + b0;
                        acc[j] = b0 ? _mm256_loadu_ps(y + (t + j) * ys + r) : _mm256_setzero_ps();
                    }
                    switch (TT) {
                    case KQ_TOK: kq_panel(T, KQ_TOK, pk, nb, a, s, acc); break;
                    case 3: kq_panel(T, 3, pk, nb, a, s, acc); break;
                    case 2: kq_panel(T, 2, pk, nb, a, s, acc); break;
                    default: kq_panel(T, 1, pk, nb, a, s, acc); break;
                    }
                    for (int j = 0; j < TT; j++) _mm256_storeu_ps(y + (t + j) * ys + r, acc[j]);
                }
            }
        }
        free(sums);
    }
    if (r < r1)
        for (int t = 0; t < nt; t++) rows(w, rb, (const char *)act + (size_t)t * as, y + t * ys, r, r1, n);
}

#define KQ_DEFINE_AVX2(NAME, TYPE)                                                                        \
    AVX2 void pl_kq_rows_##NAME##_avx2(const void *w, size_t rb, const void *act, float *y, int r0, int r1, \
                                       int n) {                                                          \
        kq_rows(TYPE, w, rb, (const block_q8x *)act, y, r0, r1, n);                                      \
    }                                                                                                    \
    AVX2 void pl_kq_tile_##NAME##_avx2(const void *w, size_t rb, const void *act, size_t as, float *y,      \
                                       size_t ys, int r0, int r1, int nt, int n) {                       \
        kq_tile(TYPE, pl_kq_rows_##NAME##_avx2, w, rb, act, as, y, ys, r0, r1, nt, n);                   \
    }
PL_KQ_TYPES(KQ_DEFINE_AVX2)

#endif
