/*
 * kquants_avx2.c - AVX2 decode rows and prefill tiles for the 5-bit, K-quant and IQ4
 * weight types (Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS), for pl_kernels_avx2.
 *
 * Like kernels_avx2.c every function carries the AVX2 target attribute, and dispatch.c
 * uses the set only after cpuid reports the features.
 *
 * The rows give every (row, token) the same bits as the tile (batch invariance without
 * batch-invariant mode): 8 rows in the float lanes, one multiply-add chain per row over the
 * blocks in order, each block's integer sums scaled exactly as the tile scales them. Only the
 * integer sums, which are exact in any order, are computed each type's own fast way.
 *
 * Decode (rows): the activation is first rearranged once per call (kq_act) into what
 * every row then reads: its bytes back to back, and per block da, s and the sums of
 * each 16-byte half. Q4_K, Q5_K, Q6_K, Q3_K, Q2_K and IQ4_XS read a super-block of one row
 * as 8 integer dot products (one per activation block) whose int32 lanes are reduced
 * together by one tree of horizontal adds, scale them in those block lanes, and a transpose
 * of 8 rows' results puts the rows into the lanes for the chain. Q5_0 reads blocks in pairs
 * as the Q4 rows do, with the 8 rows' pair sums reduced straight into row lanes. The other
 * types go block by block through kq_unpack.
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

/* ------------------------------------------------------- the activation, per call */

/*
 * What every row of a decode call reads: q, the activation's bytes back to back; da and
 * s of each block; a16, the sum of each 16 bytes, and sa, each of those times da (the
 * tile's kq_asum). Buffers on the stack up to KQ_STACK_N values (the widest rows of the
 * usual models), else on the heap.
 */
#define KQ_STACK_N 12288
typedef struct {
    int8_t *q;
    float *da, *s, *sa;
    int16_t *a16;
    void *heap;
} kq_act;

typedef struct {
    int8_t q[KQ_STACK_N];
    float da[KQ_STACK_N / QK], s[KQ_STACK_N / QK], sa[KQ_STACK_N / 16];
    int16_t a16[KQ_STACK_N / 16];
} kq_act_buf;

/* 0 on success; -1 when out of memory */
AVX2 static int kq_act_prep(const block_q8x *a, int n, kq_act_buf *buf, kq_act *k) {
    const int nb = n / QK;
    k->heap = NULL;
    if (n <= KQ_STACK_N) {
        k->q = buf->q, k->da = buf->da, k->s = buf->s, k->sa = buf->sa, k->a16 = buf->a16;
    } else {
        char *h = malloc((size_t)n + (size_t)nb * 16 + (size_t)n / 16 * 2 + 64);
        if (!h) return -1;
        k->heap = h;
        k->da = (float *)h;
        k->s = k->da + nb;
        k->sa = k->s + nb;
        k->a16 = (int16_t *)(k->sa + 2 * nb);
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
        k->sa[2 * b] = a[b].d * (float)s0;
        k->sa[2 * b + 1] = a[b].d * (float)s1;
    }
    return 0;
}

/* ------------------------------------------------------------ shared pieces */

/* lane k of the result = the sum of the 8 lanes of p[k] */
AVX2_INLINE __m256i kq_sum8x8(const __m256i p[8]) {
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i q0 = _mm256_hadd_epi32(h01, h23), q1 = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

/* int16 lanes 2k (even) and 2k + 1 (odd) of x as signed int32 lane k */
AVX2_INLINE __m256i kq_even16(__m256i x) { return _mm256_srai_epi32(_mm256_slli_epi32(x, 16), 16); }
AVX2_INLINE __m256i kq_odd16(__m256i x) { return _mm256_srai_epi32(x, 16); }

/* a block ROWS8_AHEAD rows on is asked for as this one is read (a line every 64 bytes: blocks lie
 * end to end, so every line of the row gets asked for) */
AVX2_INLINE void kq_prefetch(const uint8_t *p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)p + o, _MM_HINT_T0);
}

/* ------------------------------------------------- super-blocks, in block lanes */

/* What the tile adds per 32-value block b (lane b) of one row's super-block: f = its scaled
 * integer sums, m0 / m1 its offsets per half (for the types with M). */
typedef struct {
    __m256 f, m0, m1;
} kq_sb;

/* Q4_K / Q5_K: 8 sub-block sums (sub-block k meets activation block k); d_k = d * sc_k,
 * m_k = -dmin * mn_k. Q5_K's fifth bits (bit k of qh byte l: value l of sub-block k) add 16. */
AVX2_INLINE kq_sb q4k_sb(int T, const uint8_t *blk, const int8_t *aq) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1), b1 = _mm256_set1_epi8(1);
    const uint8_t *qs = blk + (T == PL_TYPE_Q5_K ? 48 : 16);
    const __m256i qh = T == PL_TYPE_Q5_K ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
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
        p[2 * j + 1] = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(aq + 64 * j + 32))), ones);
    }
    const __m128i hdr = _mm_loadu_si128((const __m128i *)blk);
    const __m128 dd = _mm_cvtph_ps(hdr); /* d, dmin */
    const __m128i scm = kq_scales_k4(hdr);
    const __m256 scf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scm));
    const __m256 mf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scm, 8)));
    const __m256 negdmin = _mm256_xor_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), _mm256_set1_ps(-0.0f));
    kq_sb o;
    o.f = _mm256_mul_ps(_mm256_cvtepi32_ps(kq_sum8x8(p)), _mm256_mul_ps(_mm256_broadcastss_ps(dd), scf));
    o.m0 = o.m1 = _mm256_mul_ps(negdmin, mf);
    return o;
}

/* The 16 sub-block scales of a Q3_K super-block as int16 minus 32 */
AVX2_INLINE __m256i q3k_scales(const uint8_t *s) {
    return _mm256_sub_epi16(_mm256_cvtepu8_epi16(kq_scales_k3(s)), _mm256_set1_epi16(32));
}

/*
 * Q6_K, Q3_K, Q2_K (16-value sub-blocks, two per block). A half super-block (128 values) is
 * four 32-value quarters, quarter m meeting activation block 4h + m. Q6_K: ql's 64 bytes give
 * the low 4 bits (low nibbles: quarters 0, 1; high nibbles: 2, 3), qh's 32 bytes 2 more bits
 * per quarter; Q3_K: qs's 32 bytes 2 bits per quarter, hmask the third (bit 4h + m); Q2_K:
 * qs's 2 bits per quarter. The values are unsigned (zero at 32, 4, 0): the zero comes off
 * the integer half sums as Z x the activation's half sums (a16).
 */
AVX2_INLINE kq_sb k16_sb(int T, const uint8_t *blk, const int8_t *aq, const int16_t *a16) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), m3 = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);
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
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++) {
            const __m256i a = _mm256_loadu_si256((const __m256i *)(aq + 32 * (4 * h + m)));
            p[4 * h + m] = _mm256_madd_epi16(_mm256_maddubs_epi16(v[m], a), ones);
        }
    }
    __m256i i0, i1;
    half_sums_by_row(p, &i0, &i1);
    if (T != PL_TYPE_Q2_K) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)a16);
        const int sh = T == PL_TYPE_Q6_K ? 5 : 2;
        i0 = _mm256_sub_epi32(i0, _mm256_slli_epi32(kq_even16(a), sh));
        i1 = _mm256_sub_epi32(i1, _mm256_slli_epi32(kq_odd16(a), sh));
    }
    __m256i se, so, me = _mm256_setzero_si256(), mo = _mm256_setzero_si256();
    float d, dmin = 0.0f;
    if (T == PL_TYPE_Q6_K) {
        const __m256i s = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 192)));
        se = kq_even16(s), so = kq_odd16(s);
        d = half(*(const uint16_t *)(blk + 208));
    } else if (T == PL_TYPE_Q3_K) {
        const __m256i s = q3k_scales(blk + 96);
        se = kq_even16(s), so = kq_odd16(s);
        d = half(*(const uint16_t *)(blk + 108));
    } else {
        const __m256i s = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)blk));
        const __m256i e = kq_even16(s), od = kq_odd16(s), m15 = _mm256_set1_epi32(15);
        se = _mm256_and_si256(e, m15), so = _mm256_and_si256(od, m15);
        me = _mm256_srli_epi32(e, 4), mo = _mm256_srli_epi32(od, 4);
        d = half(*(const uint16_t *)(blk + 80));
        dmin = half(*(const uint16_t *)(blk + 82));
    }
    const __m256 dv = _mm256_set1_ps(d), negdmin = _mm256_set1_ps(-dmin);
    kq_sb o;
    o.f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(dv, _mm256_cvtepi32_ps(so)),
                          _mm256_mul_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(dv, _mm256_cvtepi32_ps(se))));
    o.m0 = _mm256_mul_ps(negdmin, _mm256_cvtepi32_ps(me));
    o.m1 = _mm256_mul_ps(negdmin, _mm256_cvtepi32_ps(mo));
    return o;
}

/* IQ4_XS: each 32-value block's 16 nibble bytes looked up in the signed table, then |v| times
 * the activation with v's sign (maddubs would saturate on v + 128); d_k = d * (ls_k - 32). */
AVX2_INLINE kq_sb iq4xs_sb(const uint8_t *blk, const int8_t *aq) {
    const block_iq4_xs *x = (const block_iq4_xs *)blk;
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)IQ4_VALUES));
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i p[8];
#pragma GCC unroll 8
    for (int b = 0; b < 8; b++) {
        const __m256i v = _mm256_shuffle_epi8(tab, q4_unpack(x->qs + 16 * b));
        const __m256i a = _mm256_loadu_si256((const __m256i *)(aq + 32 * b));
        p[b] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(a, v)), ones);
    }
    const __m256 dk = _mm256_mul_ps(_mm256_set1_ps(half(x->d)), _mm256_cvtepi32_ps(kq_scales_iq4xs(x)));
    kq_sb o;
    o.f = _mm256_mul_ps(_mm256_cvtepi32_ps(kq_sum8x8(p)), dk);
    o.m0 = o.m1 = _mm256_setzero_ps();
    return o;
}

/* Rows r..min(r + 8, r1) of a super-block type: per super-block the 8 rows' kq_sb, transposed
 * so that lane i is row i, then the tile's per-block chain: acc += f_b da_b (+ m_b s_b). */
AVX2_INLINE void kq_rows8_super(int T, const void *w, size_t rb, const kq_act *A, float *y, int r, int r1, int n) {
    const uint8_t *wr[8];
    const int nr = rows8(w, rb, r, r1, wr), nsb = n / QK_K;
    const size_t bb = KQ_BLOCK_BYTES(T), ahead = ROWS8_AHEAD * rb;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        const int8_t *aq = A->q + 256 * (size_t)i;
        __m256i f[8], m0[8], m1[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            const uint8_t *blk = wr[k] + (size_t)i * bb;
            kq_prefetch(blk + ahead, bb);
            kq_sb s;
            if (T == PL_TYPE_Q4_K || T == PL_TYPE_Q5_K) s = q4k_sb(T, blk, aq);
            else if (T == PL_TYPE_IQ4_XS) s = iq4xs_sb(blk, aq);
            else s = k16_sb(T, blk, aq, A->a16 + 16 * (size_t)i);
            f[k] = _mm256_castps_si256(s.f), m0[k] = _mm256_castps_si256(s.m0), m1[k] = _mm256_castps_si256(s.m1);
        }
        transpose8(f);
        if (KQ_HAS_M(T)) transpose8(m0);
        if (KQ_HAS_M(T) && KQ_HALVES(T) == 2) transpose8(m1);
        for (int b = 0; b < 8; b++) {
            const int g = 8 * i + b;
            acc = _mm256_fmadd_ps(_mm256_castsi256_ps(f[b]), _mm256_broadcast_ss(A->da + g), acc);
            if (KQ_HAS_M(T) && KQ_HALVES(T) == 1) {
                acc = _mm256_fmadd_ps(_mm256_castsi256_ps(m0[b]), _mm256_broadcast_ss(A->s + g), acc);
            } else if (KQ_HAS_M(T)) {
                acc = _mm256_fmadd_ps(_mm256_castsi256_ps(m0[b]), _mm256_broadcast_ss(A->sa + 2 * g), acc);
                acc = _mm256_fmadd_ps(_mm256_castsi256_ps(m1[b]), _mm256_broadcast_ss(A->sa + 2 * g + 1), acc);
            }
        }
    }
    _mm256_maskstore_ps(y + r, lanes_below(nr), acc);
}

/* ------------------------------------------------------ any type, block by block */

/* Rows r..min(r + 8, r1) of type T through kq_unpack, a block per step: the 8 rows' int32
 * vectors (lanes 0-3 half 0, 4-7 half 1) reduced into row lanes, scaled as the tile does. */
AVX2_INLINE void kq_rows8_generic(int T, const void *w, size_t rb, const kq_act *A, float *y, int r, int r1, int n) {
    const uint8_t *wr[8];
    const int nr = rows8(w, rb, r, r1, wr), nb = n / QK, Z = KQ_ZERO(T);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(A->q + 32 * (size_t)b));
        __m256i s[8];
        float d0[8], d1[8], m0[8], m1[8];
        for (int k = 0; k < 8; k++) {
            kblock kb;
            kq_unpack(T, wr[k], b, &kb);
            __m256i p16;
            if (Z == 128) { /* u - 128 is the signed value: |v| times a with v's sign (maddubs would saturate on u) */
                const __m256i v = _mm256_xor_si256(kb.u, _mm256_set1_epi8((char)0x80));
                p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(a, v));
            } else {
                p16 = _mm256_maddubs_epi16(kb.u, a);
                if (Z) p16 = _mm256_sub_epi16(p16, _mm256_maddubs_epi16(_mm256_set1_epi8((char)Z), a));
            }
            s[k] = _mm256_madd_epi16(p16, ones);
            d0[k] = kb.d[0], d1[k] = kb.d[1], m0[k] = kb.m[0], m1[k] = kb.m[1];
        }
        const __m256 da = _mm256_broadcast_ss(A->da + b);
        __m256 f;
        if (KQ_HALVES(T) == 1) {
            f = _mm256_mul_ps(_mm256_cvtepi32_ps(kq_sum8x8(s)), _mm256_loadu_ps(d0));
        } else {
            __m256i i0, i1;
            half_sums_by_row(s, &i0, &i1);
            f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_loadu_ps(d1),
                                _mm256_mul_ps(_mm256_cvtepi32_ps(i0), _mm256_loadu_ps(d0)));
        }
        acc = _mm256_fmadd_ps(f, da, acc);
        if (KQ_HAS_M(T) && KQ_HALVES(T) == 1) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(m0), _mm256_broadcast_ss(A->s + b), acc);
        } else if (KQ_HAS_M(T)) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(m0), _mm256_broadcast_ss(A->sa + 2 * b), acc);
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(m1), _mm256_broadcast_ss(A->sa + 2 * b + 1), acc);
        }
    }
    _mm256_maskstore_ps(y + r, lanes_below(nr), acc);
}

/* ----------------------------------------------------------------- Q5_0 rows */

/*
 * Two Q5_0 blocks per step, as kernels_avx2.c's Q4 rows: the 32 nibble bytes of both
 * (block 2j in the low 128 bits) against the activation pairs act_pair_at arranges, once
 * per call (a last odd block paired with zeros); the fifth bits are spread to bytes from the two qh words; the zero
 * (16) comes off in the integers. The 8 rows' int32 vectors (lanes 0-3 block 2j, 4-7
 * block 2j + 1) reduce into row lanes per block.
 */
AVX2_INLINE void q5pair_prep(const block_q8x *a, int nb, act_pair *p) {
    for (int j = 0; 2 * j < nb; j++) p[j] = act_pair_at(a, 2 * j, 2 * j + 1 < nb, 16);
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

/* int32 sums of blocks b (lanes 0-3) and b + 1 (lanes 4-7; two == 0: none) of one row */
AVX2_INLINE __m256i q5pair_sums(const block_q5_0 *x0, int two, const act_pair *ap) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m128i l0 = _mm_loadu_si128((const __m128i *)x0->qs);
    const __m256i x = two ? _mm256_loadu2_m128i((const __m128i *)x0[1].qs, (const __m128i *)x0->qs)
                          : _mm256_inserti128_si256(_mm256_castsi128_si256(l0), _mm_setzero_si128(), 1);
    uint32_t h0, h1 = 0;
    memcpy(&h0, x0->qh, 4);
    if (two) memcpy(&h1, x0[1].qh, 4);
    __m256i hl, hh;
    q5_high_bits(h0, h1, &hl, &hh);
    const __m256i wl = _mm256_or_si256(_mm256_and_si256(x, m4), hl);
    const __m256i wh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(x, 4), m4), hh);
    __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(wl, ap->lo), _mm256_maddubs_epi16(wh, ap->hi));
    return _mm256_madd_epi16(_mm256_sub_epi16(s16, ap->c), _mm256_set1_epi16(1));
}

/* d of block b of the 8 rows, in row lanes */
AVX2_INLINE __m256 q5_scales8(const uint8_t *const wr[8], int b) {
#define Q5D(k) ((short)((const block_q5_0 *)wr[k])[b].d)
    return _mm256_cvtph_ps(_mm_setr_epi16(Q5D(0), Q5D(1), Q5D(2), Q5D(3), Q5D(4), Q5D(5), Q5D(6), Q5D(7)));
#undef Q5D
}

AVX2_INLINE void q5_rows8(const void *w, size_t rb, const block_q8x *a, const act_pair *ap, float *y, int r, int r1,
                          int n) {
    const uint8_t *wr[8];
    const int nr = rows8(w, rb, r, r1, wr), nb = n / QK;
    const size_t ahead = ROWS8_AHEAD * rb;
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b += 2) {
        const int two = b + 1 < nb;
        __m256i s[8], i0, i1;
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            const block_q5_0 *x0 = (const block_q5_0 *)wr[k] + b;
            _mm_prefetch((const char *)x0 + ahead, _MM_HINT_T0);
            s[k] = q5pair_sums(x0, two, ap + b / 2);
        }
        half_sums_by_row(s, &i0, &i1);
        acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(i0), q5_scales8(wr, b)), _mm256_broadcast_ss(&a[b].d), acc);
        if (two)
            acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(i1), q5_scales8(wr, b + 1)),
                                  _mm256_broadcast_ss(&a[b + 1].d), acc);
    }
    _mm256_maskstore_ps(y + r, lanes_below(nr), acc);
}

/* Rows [r0, r1) of type T */
AVX2_INLINE void kq_rows(int T, const void *w, size_t rb, const block_q8x *a, float *y, int r0, int r1, int n) {
    union { /* one or the other: Q5_0's pairs, every other type's kq_act */
        kq_act_buf act;
        act_pair pairs[KQ_STACK_N / 64];
    } buf;
    kq_act A;
    if (T == PL_TYPE_Q5_0) {
        const int nb = n / QK, np = (nb + 1) / 2;
        act_pair *const stackbuf = buf.pairs;
        act_pair *ap = np <= KQ_STACK_N / 64 ? stackbuf : aligned_alloc(32, sizeof(act_pair) * (size_t)np);
        if (!ap) {
            pl_kernels_scalar.rows[T](w, rb, a, y, r0, r1, n);
            return;
        }
        q5pair_prep(a, nb, ap);
        for (int r = r0; r < r1; r += 8) q5_rows8(w, rb, a, ap, y, r, r1, n);
        if (ap != stackbuf) free(ap);
        return;
    }
    if (kq_act_prep(a, n, &buf.act, &A)) {
        pl_kernels_scalar.rows[T](w, rb, a, y, r0, r1, n);
        return;
    }
    for (int r = r0; r < r1; r += 8) {
        if (KQ_SUPER(T)) kq_rows8_super(T, w, rb, &A, y, r, r1, n);
        else kq_rows8_generic(T, w, rb, &A, y, r, r1, n);
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
