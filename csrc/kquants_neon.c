/*
 * kquants_neon.c - NEON decode rows and prefill tiles for the 5-bit, K-quant and IQ4
 * weight types (Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS), for pl_kernels_neon.
 *
 * Every type is read in blocks of 32 values, one per activation block (block_q8x,
 * kernels.h): a 256-value super-block meets 8 activation blocks one to one. kq_values
 * turns a block into its 32 values as signed bytes v, the stored integer less the type's
 * zero (Q5_0: q - 16, Q3_K: q - 4 where the high bit is clear, Q6_K: q - 32, IQ4: the
 * table entry), so every product is int8 x int8 and exact; kq_header decodes the scales:
 *
 *     x_i = d * sc[k] * v_i - dmin * mn[k]    (k: the sub-block of 32 or 16 values)
 *
 * (Q5_0, Q5_1, IQ4_NL: x_i = d * v_i + m, m only for Q5_1.)
 *
 * Decode (rows): two rows share each activation load; a super-block's scales are decoded
 * once; per block, the SDOT sums of its halves are weighted by their integer sub-block
 * scales in int32, as the scalar reference does, and meet the float d * da once. The
 * minimums go through the activation's sums (s, or for Q2_K's 16-value sub-blocks the
 * sums of each half).
 *
 * Prefill (tile), with SDOT: 4 rows at a time are unpacked and transposed so that each
 * 32-bit lane holds 4 values of one row, and "sdot by element" multiplies the 4 rows by
 * 4 activation bytes (as kernels_neon.c's Q4 tiles): no horizontal sums, each block
 * unpacked once for all the tokens. Without SDOT the tile runs the rows over row blocks
 * that stay in cache while every token passes.
 *
 * The kernels are written once (kquants_neon_body.h) and compiled twice: with SDOT, and
 * with the widening multiplies of baseline NEON for CPUs without the extension (an SDOT
 * inlined into a function built for baseline NEON would not compile, and the compiler
 * may use SDOT on its own anywhere in a function built for the extension).
 */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kquants_neon.h"
#include "simd_neon.h"

#define KQ_SUPER(T) ((T) != PL_TYPE_Q5_0 && (T) != PL_TYPE_Q5_1 && (T) != PL_TYPE_IQ4_NL)
/* the types with 16-value sub-blocks: two scales per 32-value block */
#define KQ_HALVES(T) (((T) == PL_TYPE_Q6_K || (T) == PL_TYPE_Q3_K || (T) == PL_TYPE_Q2_K) ? 2 : 1)
/* the types with minimums (Q5_1: an offset m) */
#define KQ_HAS_M(T) ((T) == PL_TYPE_Q5_1 || (T) == PL_TYPE_Q4_K || (T) == PL_TYPE_Q5_K || (T) == PL_TYPE_Q2_K)
/* bytes per block of 32 values (super-block types: per super-block of 256) */
#define KQ_BYTES(T)                                                                                      \
    ((T) == PL_TYPE_Q5_0 ? sizeof(block_q5_0) : (T) == PL_TYPE_Q5_1 ? sizeof(block_q5_1)                   \
     : (T) == PL_TYPE_IQ4_NL ? sizeof(block_iq4_nl) : (T) == PL_TYPE_Q2_K ? sizeof(block_q2_k)              \
     : (T) == PL_TYPE_Q3_K ? sizeof(block_q3_k) : (T) == PL_TYPE_Q4_K ? sizeof(block_q4_k)                  \
     : (T) == PL_TYPE_Q5_K ? sizeof(block_q5_k) : (T) == PL_TYPE_Q6_K ? sizeof(block_q6_k)                  \
                                             : sizeof(block_iq4_xs))

INLINE float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return half(h);
}

/* The scales of a block (32-value types: d, and Q5_1's m in dmin) or of a super-block:
 * integer scale sc[k] and minimum mn[k] of sub-block k (16 of 16 values or 8 of 32). */
typedef struct {
    float d, dmin;
    int32_t sc[16], mn[16];
} kq_hdr;

INLINE void kq_header(int T, const uint8_t *blk, kq_hdr *h) {
    if (!KQ_SUPER(T)) {
        h->d = half_at(blk);
        h->dmin = T == PL_TYPE_Q5_1 ? half_at(blk + 2) : 0.0f;
    } else if (T == PL_TYPE_Q4_K || T == PL_TYPE_Q5_K) {
        /* 8 six-bit scales and minimums in 12 bytes (quants.c's scales_k4 says where) */
        const uint8_t *s = blk + 4;
        h->d = half_at(blk);
        h->dmin = half_at(blk + 2);
        for (int j = 0; j < 4; j++) {
            h->sc[j] = s[j] & 63;
            h->mn[j] = s[j + 4] & 63;
            h->sc[j + 4] = (s[j + 8] & 15) | (s[j] >> 6) << 4;
            h->mn[j + 4] = (s[j + 8] >> 4) | (s[j + 4] >> 6) << 4;
        }
    } else if (T == PL_TYPE_Q2_K) {
        h->d = half_at(blk + 80);
        h->dmin = half_at(blk + 82);
        for (int k = 0; k < 16; k++) {
            h->sc[k] = blk[k] & 15;
            h->mn[k] = blk[k] >> 4;
        }
    } else if (T == PL_TYPE_Q3_K) {
        /* low 4 bits: the nibbles of bytes 0-7; top 2: bit pair k / 4 of byte 8 + k % 4 */
        const uint8_t *s = blk + 96;
        h->d = half_at(blk + 108);
        h->dmin = 0.0f;
        for (int k = 0; k < 16; k++) {
            const int lo = k < 8 ? s[k] & 15 : s[k - 8] >> 4;
            h->sc[k] = (lo | ((s[8 + k % 4] >> (2 * (k / 4))) & 3) << 4) - 32;
        }
    } else if (T == PL_TYPE_Q6_K) {
        h->d = half_at(blk + 208);
        h->dmin = 0.0f;
        for (int k = 0; k < 16; k++) h->sc[k] = ((const int8_t *)blk)[192 + k];
    } else { /* IQ4_XS */
        uint16_t sh;
        memcpy(&sh, blk + 2, 2);
        h->d = half_at(blk);
        h->dmin = 0.0f;
        for (int k = 0; k < 8; k++) h->sc[k] = (((blk[4 + k / 2] >> (4 * (k % 2))) & 15) | ((sh >> (2 * k)) & 3) << 4) - 32;
    }
}

/* bit i of the 32-bit word at p as byte i all ones (else zero): lo i = 0..15, hi i = 16..31 */
INLINE void kq_bits_to_bytes(const uint8_t *p, uint8x16_t *lo, uint8x16_t *hi) {
    uint32_t w;
    memcpy(&w, p, 4);
    const uint8x16_t v = vreinterpretq_u8_u32(vdupq_n_u32(w));
    const uint8x16_t bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ull));
    const uint8x16_t i0 = vcombine_u8(vdup_n_u8(0), vdup_n_u8(1)), i1 = vcombine_u8(vdup_n_u8(2), vdup_n_u8(3));
    *lo = vtstq_u8(vqtbl1q_u8(v, i0), bit);
    *hi = vtstq_u8(vqtbl1q_u8(v, i1), bit);
}

/* the 4-bit indices in 16 bytes (byte l: values l and l + 16) through the IQ4 table */
INLINE void kq_iq4(const uint8_t *qs, int8x16_t *lo, int8x16_t *hi) {
    const int8x16_t table = vld1q_s8(IQ4_VALUES);
    const uint8x16_t x = vld1q_u8(qs);
    *lo = vqtbl1q_s8(table, vandq_u8(x, vdupq_n_u8(15)));
    *hi = vqtbl1q_s8(table, vshrq_n_u8(x, 4));
}

/* x >> sh & mask for 16 bytes, sh a run-time count */
INLINE uint8x16_t kq_field(uint8x16_t x, int sh, int mask) {
    return vandq_u8(vshlq_u8(x, vdupq_n_s8((int8_t)-sh)), vdupq_n_u8((uint8_t)mask));
}

/* The 32 signed values of block j (0..7) of a super-block at blk, or of the 32-value block
 * at blk (j unused): lo = values 0..15, hi = values 16..31. */
INLINE void kq_values(int T, const uint8_t *blk, int j, int8x16_t *lo, int8x16_t *hi) {
    const uint8x16_t m4 = vdupq_n_u8(15);
    if (T == PL_TYPE_Q5_0 || T == PL_TYPE_Q5_1) {
        const int q50 = T == PL_TYPE_Q5_0;
        const uint8x16_t x = vld1q_u8(blk + (q50 ? 6 : 8)), b5 = vdupq_n_u8(16);
        uint8x16_t tl, th;
        kq_bits_to_bytes(blk + (q50 ? 2 : 4), &tl, &th);
        const uint8x16_t l = vandq_u8(x, m4), h = vshrq_n_u8(x, 4);
        if (q50) { /* q - 16: less 16 where the fifth bit is clear */
            *lo = vreinterpretq_s8_u8(vsubq_u8(l, vbicq_u8(b5, tl)));
            *hi = vreinterpretq_s8_u8(vsubq_u8(h, vbicq_u8(b5, th)));
        } else {
            *lo = vreinterpretq_s8_u8(vorrq_u8(l, vandq_u8(b5, tl)));
            *hi = vreinterpretq_s8_u8(vorrq_u8(h, vandq_u8(b5, th)));
        }
    } else if (T == PL_TYPE_IQ4_NL) {
        kq_iq4(blk + 2, lo, hi);
    } else if (T == PL_TYPE_IQ4_XS) {
        kq_iq4(blk + 8 + 16 * j, lo, hi);
    } else if (T == PL_TYPE_Q4_K || T == PL_TYPE_Q5_K) {
        /* block j: the low (j even) or high (j odd) nibbles of 32 bytes */
        const uint8_t *qs = blk + (T == PL_TYPE_Q4_K ? 16 : 48) + 32 * (j / 2);
        const uint8x16_t x0 = vld1q_u8(qs), x1 = vld1q_u8(qs + 16);
        uint8x16_t l = j & 1 ? vshrq_n_u8(x0, 4) : vandq_u8(x0, m4);
        uint8x16_t h = j & 1 ? vshrq_n_u8(x1, 4) : vandq_u8(x1, m4);
        if (T == PL_TYPE_Q5_K) { /* fifth bit of value l: bit j of qh[l] */
            const uint8x16_t bit = vdupq_n_u8((uint8_t)(1 << j)), b5 = vdupq_n_u8(16);
            l = vorrq_u8(l, vandq_u8(vtstq_u8(vld1q_u8(blk + 16), bit), b5));
            h = vorrq_u8(h, vandq_u8(vtstq_u8(vld1q_u8(blk + 32), bit), b5));
        }
        *lo = vreinterpretq_s8_u8(l);
        *hi = vreinterpretq_s8_u8(h);
    } else if (T == PL_TYPE_Q6_K) {
        /* half n = j / 4, quarter m = j % 4: 4 bits from ql (bytes 32 (m & 1) on, high nibbles
         * for m >= 2), 2 bits from qh (bit pair m) */
        const int n = j / 4, m = j % 4;
        const uint8_t *ql = blk + 64 * n + 32 * (m & 1), *qh = blk + 128 + 32 * n;
        const uint8x16_t x0 = vld1q_u8(ql), x1 = vld1q_u8(ql + 16);
        const uint8x16_t l = m >= 2 ? vshrq_n_u8(x0, 4) : vandq_u8(x0, m4);
        const uint8x16_t h = m >= 2 ? vshrq_n_u8(x1, 4) : vandq_u8(x1, m4);
        const uint8x16_t hl = vshlq_n_u8(kq_field(vld1q_u8(qh), 2 * m, 3), 4);
        const uint8x16_t hh = vshlq_n_u8(kq_field(vld1q_u8(qh + 16), 2 * m, 3), 4);
        *lo = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(l, hl)), vdupq_n_s8(32));
        *hi = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(h, hh)), vdupq_n_s8(32));
    } else { /* Q2_K, Q3_K: 2 bits, bit pair j % 4 of 32 bytes (half j / 4) */
        const int n = j / 4, sh = 2 * (j % 4);
        const uint8_t *qs = blk + (T == PL_TYPE_Q3_K ? 32 : 16) + 32 * n;
        uint8x16_t l = kq_field(vld1q_u8(qs), sh, 3), h = kq_field(vld1q_u8(qs + 16), sh, 3);
        if (T == PL_TYPE_Q3_K) { /* bit j of hmask[l] clear: 4 less */
            const uint8x16_t bit = vdupq_n_u8((uint8_t)(1 << j)), four = vdupq_n_u8(4);
            l = vsubq_u8(l, vbicq_u8(four, vtstq_u8(vld1q_u8(blk), bit)));
            h = vsubq_u8(h, vbicq_u8(four, vtstq_u8(vld1q_u8(blk + 16), bit)));
        }
        *lo = vreinterpretq_s8_u8(l);
        *hi = vreinterpretq_s8_u8(h);
    }
}

/* ------------------------------------------------------------ packing for the tiles */

/* 4 rows of one block: q[g] = values 4g..4g+3 of rows 0..3 (row i in 32-bit lane i); per half
 * h each row's scale d[h] (d * sc) and minimum m[h] (-dmin * mn; Q5_1: m) */
typedef struct {
    int8x16_t q[8];
    float32x4_t d[2], m[2];
} kq_pack4;

#define KQ_KCHUNK 32 /* blocks packed at a time: 4 rows x 32 blocks = 6 KB */

/* 4 x 16 bytes as 4 x 4 32-bit groups, transposed: q[g] lane i = group g of v[i] */
INLINE void kq_transpose4(const int8x16_t *v, int8x16_t *q) {
    const uint32x4_t r0 = vreinterpretq_u32_s8(v[0]), r1 = vreinterpretq_u32_s8(v[1]);
    const uint32x4_t r2 = vreinterpretq_u32_s8(v[2]), r3 = vreinterpretq_u32_s8(v[3]);
    const uint64x2_t t0 = vreinterpretq_u64_u32(vtrn1q_u32(r0, r1)), t1 = vreinterpretq_u64_u32(vtrn2q_u32(r0, r1));
    const uint64x2_t t2 = vreinterpretq_u64_u32(vtrn1q_u32(r2, r3)), t3 = vreinterpretq_u64_u32(vtrn2q_u32(r2, r3));
    q[0] = vreinterpretq_s8_u64(vtrn1q_u64(t0, t2));
    q[1] = vreinterpretq_s8_u64(vtrn1q_u64(t1, t3));
    q[2] = vreinterpretq_s8_u64(vtrn2q_u64(t0, t2));
    q[3] = vreinterpretq_s8_u64(vtrn2q_u64(t1, t3));
}

/* blocks b0 .. b0 + nb - 1 (counted in 32-value blocks from the row's start) of rows r .. r + 3 */
INLINE void kq_pack_rows(int T, const uint8_t *w, size_t rb, int r, int b0, int nb, kq_pack4 *pk) {
    kq_hdr h[4];
    for (int b = 0; b < nb; b++) {
        const int bb = b0 + b, j = bb % 8;
        int8x16_t lo[4], hi[4];
        float d0[4], d1[4], m0[4], m1[4];
        for (int i = 0; i < 4; i++) {
            const uint8_t *row = w + (size_t)(r + i) * rb;
            if (!KQ_SUPER(T)) {
                const uint8_t *blk = row + (size_t)bb * KQ_BYTES(T);
                kq_header(T, blk, &h[i]);
                kq_values(T, blk, 0, &lo[i], &hi[i]);
                d0[i] = d1[i] = h[i].d;
                m0[i] = m1[i] = h[i].dmin;
            } else {
                const uint8_t *blk = row + (size_t)(bb / 8) * KQ_BYTES(T);
                if (j == 0 || b == 0) kq_header(T, blk, &h[i]);
                kq_values(T, blk, j, &lo[i], &hi[i]);
                const int k0 = KQ_HALVES(T) == 2 ? 2 * j : j, k1 = KQ_HALVES(T) == 2 ? 2 * j + 1 : j;
                d0[i] = h[i].d * (float)h[i].sc[k0];
                d1[i] = h[i].d * (float)h[i].sc[k1];
                m0[i] = KQ_HAS_M(T) ? -h[i].dmin * (float)h[i].mn[k0] : 0.0f;
                m1[i] = KQ_HAS_M(T) ? -h[i].dmin * (float)h[i].mn[k1] : 0.0f;
            }
        }
        kq_transpose4(lo, pk[b].q);
        kq_transpose4(hi, pk[b].q + 4);
        pk[b].d[0] = vld1q_f32(d0), pk[b].d[1] = vld1q_f32(d1);
        pk[b].m[0] = vld1q_f32(m0), pk[b].m[1] = vld1q_f32(m1);
    }
}

/* ------------------------------------------------------------------ the kernels */

#define KQ_SDOT 1
#include "kquants_neon_body.h"
#undef KQ_SDOT
#define KQ_SDOT 0
#include "kquants_neon_body.h"
#undef KQ_SDOT

/* Without SDOT: the rows over row blocks small enough to stay in cache while every token passes. */
static void kq_tile_rows(pl_rows_fn rows, const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys,
                         int r0, int r1, int nt, int n) {
    for (int r = r0; r < r1; r += 16) {
        const int re = r + 16 < r1 ? r + 16 : r1;
        for (int t = 0; t < nt; t++) rows(w, rb, (const char *)act + (size_t)t * as, y + (size_t)t * ys, r, re, n);
    }
}

#define KQ_DEFINE_NEON(NAME, TYPE)                                                                        \
    static void rows_##NAME##_plain(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) { \
        kq_rows_plain(TYPE, w, rb, (const block_q8x *)act, y, r0, r1, n);                                \
    }                                                                                                    \
    DOTPROD static void rows_##NAME##_sdot(const void *w, size_t rb, const void *act, float *y, int r0, int r1, \
                                           int n) {                                                      \
        kq_rows_sdot(TYPE, w, rb, (const block_q8x *)act, y, r0, r1, n);                                 \
    }                                                                                                    \
    DOTPROD static void tile_##NAME##_sdot(const void *w, size_t rb, const void *act, size_t as, float *y,  \
                                           size_t ys, int r0, int r1, int nt, int n) {                   \
        kq_tile_sdot(TYPE, rows_##NAME##_sdot, w, rb, act, as, y, ys, r0, r1, nt, n);                    \
    }                                                                                                    \
    void pl_kq_rows_##NAME##_neon(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) { \
        if (pl_neon_has_dotprod()) rows_##NAME##_sdot(w, rb, act, y, r0, r1, n);                         \
        else rows_##NAME##_plain(w, rb, act, y, r0, r1, n);                                              \
    }                                                                                                    \
    void pl_kq_tile_##NAME##_neon(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, \
                                  int r0, int r1, int nt, int n) {                                       \
        if (pl_neon_has_dotprod()) tile_##NAME##_sdot(w, rb, act, as, y, ys, r0, r1, nt, n);             \
        else kq_tile_rows(rows_##NAME##_plain, w, rb, act, as, y, ys, r0, r1, nt, n);                    \
    }
PL_KQ_TYPES(KQ_DEFINE_NEON)

#endif
