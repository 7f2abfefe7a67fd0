/*
 * kq_blocks_x86.h - kq_unpack (kquants_x86.h says what it gives) and the pieces of the
 * block formats (quants.h) that the AVX2 and AVX-512 kernel files both read.
 * Included by kquants_avx2.c and kquants_avx512.c only; every function is inlined.
 */
#ifndef PL_KQ_BLOCKS_X86_H
#define PL_KQ_BLOCKS_X86_H

#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "simd_x86.h"

/* Z of kquants_x86.h: what the unsigned bytes u are offset by */
#define KQ_ZERO(T)                                                                                       \
    ((T) == PL_TYPE_Q5_0 ? 16 : (T) == PL_TYPE_Q6_K ? 32 : (T) == PL_TYPE_Q3_K ? 4                       \
     : ((T) == PL_TYPE_IQ4_NL || (T) == PL_TYPE_IQ4_XS) ? 128 : 0)
/* the types with 16-value sub-blocks: two scales per 32-value block */
#define KQ_HALVES(T) (((T) == PL_TYPE_Q6_K || (T) == PL_TYPE_Q3_K || (T) == PL_TYPE_Q2_K) ? 2 : 1)
/* the types with an offset M */
#define KQ_HAS_M(T) ((T) == PL_TYPE_Q5_1 || (T) == PL_TYPE_Q4_K || (T) == PL_TYPE_Q5_K || (T) == PL_TYPE_Q2_K)
/* the largest u - Z can be in magnitude... and the largest u: bounds the 16-bit sums of maddubs */
#define KQ_UMAX(T)                                                                                       \
    ((T) == PL_TYPE_Q2_K ? 3 : (T) == PL_TYPE_Q3_K ? 7 : (T) == PL_TYPE_Q4_K ? 15 : (T) == PL_TYPE_Q6_K ? 63 \
     : ((T) == PL_TYPE_IQ4_NL || (T) == PL_TYPE_IQ4_XS) ? 255 : 31)
/* bytes per block of 32 values (K-quants: per super-block of 256) */
#define KQ_BLOCK_BYTES(T)                                                                                \
    ((T) == PL_TYPE_Q5_0 ? sizeof(block_q5_0) : (T) == PL_TYPE_Q5_1 ? sizeof(block_q5_1)                   \
     : (T) == PL_TYPE_IQ4_NL ? sizeof(block_iq4_nl) : (T) == PL_TYPE_Q2_K ? sizeof(block_q2_k)              \
     : (T) == PL_TYPE_Q3_K ? sizeof(block_q3_k) : (T) == PL_TYPE_Q4_K ? sizeof(block_q4_k)                  \
     : (T) == PL_TYPE_Q5_K ? sizeof(block_q5_k) : (T) == PL_TYPE_Q6_K ? sizeof(block_q6_k)                  \
                                             : sizeof(block_iq4_xs))
#define KQ_SUPER(T) ((T) != PL_TYPE_Q5_0 && (T) != PL_TYPE_Q5_1 && (T) != PL_TYPE_IQ4_NL)

typedef struct {
    __m256i u;    /* the 32 values as unsigned bytes, value order */
    float d[2], m[2];
} kblock;

/* bit j of x -> byte j all ones (else zero), j = 0..31 */
AVX2_INLINE __m256i kq_bits_to_bytes(uint32_t x) {
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x),
                                          _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2,
                                                           2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

/* the IQ4 table + 128, as unsigned bytes in both 128-bit lanes (for a byte shuffle) */
AVX2_INLINE __m256i kq_iq4_table(void) {
    return _mm256_broadcastsi128_si256(_mm_setr_epi8((char)1, (char)24, (char)45, (char)63, (char)79, (char)93,
                                                     (char)106, (char)118, (char)129, (char)141, (char)153,
                                                     (char)166, (char)181, (char)197, (char)217, (char)241));
}

/* 6-bit scale and minimum j (0..7) of a Q4_K / Q5_K super-block's 12 scale bytes */
static inline void kq_scale_min_k4(const uint8_t *q, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* All 8 scales and 8 minimums of a Q4_K / Q5_K super-block as bytes sc0..7, m0..7, from its
 * first 16 bytes (d, dmin, the 12 scale bytes; as dwords: dd, u0, u1, u2):
 * sc0-3 = u0 & 63, sc4-7 = (u2 & 15) | (u0 >> 6) << 4, m0-3 = u1 & 63, m4-7 = (u2 >> 4) | (u1 >> 6) << 4 */
AVX2_INLINE __m128i kq_scales_k4(__m128i hdr) {
    __m128i p = _mm_shuffle_epi32(hdr, _MM_SHUFFLE(3, 2, 3, 1)); /* u0 u2 u1 u2 */
    p = _mm_and_si128(_mm_srlv_epi32(p, _mm_setr_epi32(0, 0, 0, 4)),
                      _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    __m128i q = _mm_shuffle_epi32(hdr, _MM_SHUFFLE(2, 2, 1, 1)); /* u0 u0 u1 u1 */
    q = _mm_and_si128(_mm_srli_epi32(q, 2), _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
    return _mm_or_si128(p, q);
}

/* 6-bit scale k (0..15) of a Q3_K super-block, as stored (use minus 32) */
static inline int kq_scale_k3(const uint8_t *s, int k) {
    const int lo = k < 8 ? s[k] & 15 : s[k - 8] >> 4;
    return lo | (((s[8 + (k & 3)] >> (2 * (k >> 2))) & 3) << 4);
}

/* All 16 6-bit scales of a Q3_K super-block (its 12 scale bytes), as bytes, as stored (use minus 32) */
AVX2_INLINE __m128i kq_scales_k3(const uint8_t *s) {
    uint32_t a[3];
    memcpy(a, s, 12);
    const uint32_t k1 = 0x03030303, k2 = 0x0f0f0f0f, t = a[2];
    return _mm_setr_epi32((int)((a[0] & k2) | ((t & k1) << 4)), (int)((a[1] & k2) | (((t >> 2) & k1) << 4)),
                          (int)(((a[0] >> 4) & k2) | (((t >> 4) & k1) << 4)),
                          (int)(((a[1] >> 4) & k2) | (((t >> 6) & k1) << 4)));
}

/* The 8 block scales of an IQ4_XS super-block, minus 32, as int32 lanes: low 4 bits in the
 * nibbles of scales_l (block 2k low, 2k + 1 high), high 2 bits at bits 2b of scales_h */
AVX2_INLINE __m256i kq_scales_iq4xs(const block_iq4_xs *x) {
    uint32_t sl;
    memcpy(&sl, x->scales_l, 4);
    const __m128i l4 = _mm_cvtsi32_si128((int)sl);
    const __m128i lo = _mm_unpacklo_epi8(_mm_and_si128(l4, _mm_set1_epi8(0x0f)),
                                         _mm_and_si128(_mm_srli_epi16(l4, 4), _mm_set1_epi8(0x0f)));
    const __m256i hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(x->scales_h),
                                                          _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                                        _mm256_set1_epi32(3));
    return _mm256_sub_epi32(_mm256_or_si256(_mm256_cvtepu8_epi32(lo), _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
}

/* Block b of a row of type T (K-quants: b counts 32-value blocks from the row's start). */
AVX2_INLINE void kq_unpack(int T, const uint8_t *row, int b, kblock *k) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    if (!KQ_SUPER(T)) {
        const uint8_t *blk = row + (size_t)b * KQ_BLOCK_BYTES(T);
        const uint8_t *qs = blk + (T == PL_TYPE_Q5_0 ? 6 : T == PL_TYPE_Q5_1 ? 8 : 2);
        __m256i u = q4_unpack(qs);
        if (T == PL_TYPE_IQ4_NL) {
            u = _mm256_shuffle_epi8(kq_iq4_table(), u);
        } else {
            uint32_t qh;
            memcpy(&qh, blk + (T == PL_TYPE_Q5_0 ? 2 : 4), 4);
            u = _mm256_or_si256(u, _mm256_and_si256(kq_bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
        }
        k->u = u;
        k->d[0] = k->d[1] = half(((const uint16_t *)blk)[0]);
        k->m[0] = k->m[1] = T == PL_TYPE_Q5_1 ? half(((const uint16_t *)blk)[1]) : 0.0f;
        return;
    }
    const uint8_t *blk = row + (size_t)(b / 8) * KQ_BLOCK_BYTES(T);
    const int j = b % 8; /* block within the super-block */
    if (T == PL_TYPE_Q4_K || T == PL_TYPE_Q5_K) {
        const uint8_t *qs = blk + (T == PL_TYPE_Q4_K ? 16 : 48) + 32 * (j / 2);
        const __m256i x = _mm256_loadu_si256((const __m256i *)qs);
        __m256i u = j & 1 ? _mm256_and_si256(_mm256_srli_epi16(x, 4), m4) : _mm256_and_si256(x, m4);
        if (T == PL_TYPE_Q5_K) {
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 16));
            const __m256i hb = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(j)), _mm256_set1_epi8(1));
            u = _mm256_or_si256(u, _mm256_slli_epi16(hb, 4));
        }
        int sc, mn;
        kq_scale_min_k4(blk + 4, j, &sc, &mn);
        const float d = half(((const uint16_t *)blk)[0]), dmin = half(((const uint16_t *)blk)[1]);
        k->u = u;
        k->d[0] = k->d[1] = d * (float)sc;
        k->m[0] = k->m[1] = -dmin * (float)mn;
    } else if (T == PL_TYPE_Q6_K) {
        const int n = j / 4, m = j % 4;
        const __m256i x = _mm256_loadu_si256((const __m256i *)(blk + 64 * n + 32 * (m & 1)));
        const __m256i lo = m >= 2 ? _mm256_and_si256(_mm256_srli_epi16(x, 4), m4) : _mm256_and_si256(x, m4);
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * n));
        const __m256i hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * m)), _mm256_set1_epi8(3));
        k->u = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
        const float d = half(*(const uint16_t *)(blk + 208));
        const int8_t *sc = (const int8_t *)(blk + 192);
        k->d[0] = d * (float)sc[2 * j];
        k->d[1] = d * (float)sc[2 * j + 1];
        k->m[0] = k->m[1] = 0.0f;
    } else if (T == PL_TYPE_Q3_K || T == PL_TYPE_Q2_K) {
        const int n = j / 4, sh = 2 * (j % 4);
        const __m256i x = _mm256_loadu_si256((const __m256i *)(blk + (T == PL_TYPE_Q3_K ? 32 : 16) + 32 * n));
        __m256i u = _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128(sh)), _mm256_set1_epi8(3));
        if (T == PL_TYPE_Q3_K) {
            const __m256i hm = _mm256_loadu_si256((const __m256i *)blk);
            const __m256i hb = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(j)), _mm256_set1_epi8(1));
            k->u = _mm256_or_si256(u, _mm256_slli_epi16(hb, 2));
            const float d = half(*(const uint16_t *)(blk + 108));
            k->d[0] = d * (float)(kq_scale_k3(blk + 96, 2 * j) - 32);
            k->d[1] = d * (float)(kq_scale_k3(blk + 96, 2 * j + 1) - 32);
            k->m[0] = k->m[1] = 0.0f;
        } else {
            k->u = u;
            const float d = half(*(const uint16_t *)(blk + 80)), dmin = half(*(const uint16_t *)(blk + 82));
            for (int h = 0; h < 2; h++) {
                k->d[h] = d * (float)(blk[2 * j + h] & 15);
                k->m[h] = -dmin * (float)(blk[2 * j + h] >> 4);
            }
        }
    } else { /* IQ4_XS */
        const block_iq4_xs *x = (const block_iq4_xs *)blk;
        const int ls = ((x->scales_l[j / 2] >> (4 * (j % 2))) & 15) | (((x->scales_h >> (2 * j)) & 3) << 4);
        k->u = _mm256_shuffle_epi8(kq_iq4_table(), q4_unpack(x->qs + 16 * j));
        k->d[0] = k->d[1] = half(x->d) * (float)(ls - 32);
        k->m[0] = k->m[1] = 0.0f;
    }
}

/* per token and block: the activation's half sums (integers and times da) */
typedef struct {
    int32_t a[2];
    float sa[2];
} kq_asum;

/* (for the tiles) */
AVX2_INLINE void kq_asums(const void *act, size_t as, int nt, int nbt, kq_asum *o) {
    for (int t = 0; t < nt; t++) {
        const block_q8x *ab = (const block_q8x *)((const char *)act + (size_t)t * as);
        for (int b = 0; b < nbt; b++) {
            int s0 = 0, s1 = 0;
            for (int j = 0; j < 16; j++) s0 += ab[b].qs[j], s1 += ab[b].qs[16 + j];
            kq_asum *x = o + (size_t)t * nbt + b;
            x->a[0] = s0, x->a[1] = s1;
            x->sa[0] = ab[b].d * (float)s0, x->sa[1] = ab[b].d * (float)s1;
        }
    }
}

#endif
