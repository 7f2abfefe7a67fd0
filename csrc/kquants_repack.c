/*
 * kquants_repack.c - decode rows and prefill tiles for Q4_KR, the Q4_K matrices the loader
 * regroups 8 rows at a time (quants.h says how; model.c does it on CPUs with AVX-512 VNNI).
 *
 * AVX-512: two groups (16 rows) per step, one 32-bit lane per row. A 32-byte chunk of each
 * group, side by side, is one vector whose low nibbles are 4 values of one sub-block of all
 * 16 rows and whose high nibbles are the next sub-block's: one AND (or shift and AND) and one
 * vpdpbusd per 4 activation bytes, with no per-call unpacking, transposing or L1 staging
 * (kquants_avx512.c's Q4_K tile unpacks and transposes every 16 x 16-block chunk it meets).
 * The 6-bit scales of the 16 rows are decoded together, 8 bytes per group (one byte a row).
 *
 * Elsewhere (the AVX2 set, rows not on a group boundary): each group is read back into the
 * Q4_K layout in a buffer and handed to the AVX2 Q4_K kernels; that path only runs when the
 * kernel set is changed after a model was loaded on an AVX-512 CPU.
 */
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kquants_x86.h"
#include "simd_x86.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define AVX512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

#define G8 Q4KR_ROWS

/* ------------------------------------------------- any rows: through the Q4_K layout */

/* Rows [r0, r1) (any bounds) of a Q4_KR matrix through a Q4_K kernel of the AVX2 set, one group
 * read back into the file's layout at a time: tokens [0, nt), nt = 0 meaning rows() for one. */
static void q4kr_via_q4k(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, int r0, int r1,
                         int nt, int n) {
    const int nsb = n / QK_K;
    block_q4_k *buf = malloc(G8 * rb);
    if (!buf) { /* out of memory: the scalar reference needs no buffer */
        for (int t = 0; t < (nt ? nt : 1); t++)
            pl_kernels_scalar.rows[PL_TYPE_Q4_KR](w, rb, (const char *)act + (size_t)t * as, y + (size_t)t * ys, r0, r1, n);
        return;
    }
    for (int g = r0 / G8 * G8; g < r1; g += G8) {
        const int lo = r0 > g ? r0 : g, hi = r1 < g + G8 ? r1 : g + G8;
        for (int r = lo; r < hi; r++)
            for (int sb = 0; sb < nsb; sb++) q4kr_block(w, rb, r, sb, (block_q4_k *)((char *)buf + (size_t)(r - g) * rb) + sb);
        if (nt) pl_kernels_avx2.tile[PL_TYPE_Q4_K](buf, rb, act, as, y + g, ys, lo - g, hi - g, nt, n);
        else pl_kernels_avx2.rows[PL_TYPE_Q4_K](buf, rb, act, y + g, lo - g, hi - g, n);
    }
    free(buf);
}

void pl_kqr_rows_q4_kr_avx2(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) {
    q4kr_via_q4k(w, rb, act, 0, y, 0, r0, r1, 0, n);
}

void pl_kqr_tile_q4_kr_avx2(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, int r0, int r1,
                            int nt, int n) {
    q4kr_via_q4k(w, rb, act, as, y, ys, r0, r1, nt, n);
}

/* ------------------------------------------------------------- AVX-512: scales */

/*
 * The 6-bit scales (sc) and minimums (mn) j = 0..7 of 16 rows (groups a, b of one super-block
 * index), one byte a row: kq_scale_min_k4 on 32 bytes at once. A group's scale bytes k = 0..3,
 * 4..7, 8..11 are 32 bytes each (byte 8k' + row): sc0-3 = s0-3 & 63, mn0-3 = s4-7 & 63,
 * sc4-7 = (s8-11 & 15) | (s0-3 >> 6) << 4, mn4-7 = (s8-11 >> 4) | (s4-7 >> 6) << 4.
 */
AVX512_INLINE void q4kr_scales_u8(const block_q4_kr *a, const block_q4_kr *b, __m128i sc[8], __m128i mn[8]) {
    const __m256i m63 = _mm256_set1_epi8(63), m15 = _mm256_set1_epi8(15), m48 = _mm256_set1_epi8(0x30);
    __m256i v[2][4]; /* per group: sc0-3, mn0-3, sc4-7, mn4-7 (8 bytes per j) */
    for (int h = 0; h < 2; h++) {
        const block_q4_kr *x = h ? b : a;
        const __m256i s03 = _mm256_loadu_si256((const __m256i *)x->scales[0]);
        const __m256i s47 = _mm256_loadu_si256((const __m256i *)x->scales[4]);
        const __m256i s811 = _mm256_loadu_si256((const __m256i *)x->scales[8]);
        v[h][0] = _mm256_and_si256(s03, m63);
        v[h][1] = _mm256_and_si256(s47, m63);
        v[h][2] = _mm256_or_si256(_mm256_and_si256(s811, m15), _mm256_and_si256(_mm256_srli_epi16(s03, 2), m48));
        v[h][3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(s811, 4), m15),
                                  _mm256_and_si256(_mm256_srli_epi16(s47, 2), m48));
    }
    for (int k = 0; k < 4; k++) { /* 64-bit lane j of a's and of b's vector side by side: j = 0, 2 low, 1, 3 high */
        const __m256i lo = _mm256_unpacklo_epi64(v[0][k], v[1][k]), hi = _mm256_unpackhi_epi64(v[0][k], v[1][k]);
        __m128i *o = (k & 1 ? mn : sc) + (k >> 1) * 4;
        o[0] = _mm256_castsi256_si128(lo), o[1] = _mm256_castsi256_si128(hi);
        o[2] = _mm256_extracti128_si256(lo, 1), o[3] = _mm256_extracti128_si256(hi, 1);
    }
}

AVX512_INLINE __m512 u8_to_ps(__m128i x) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(x)); }

/* d and dmin of the 16 rows */
AVX512_INLINE void q4kr_dmin(const block_q4_kr *a, const block_q4_kr *b, __m512 *d, __m512 *dmin) {
    *d = _mm512_cvtph_ps(_mm256_setr_m128i(_mm_loadu_si128((const __m128i *)a->d), _mm_loadu_si128((const __m128i *)b->d)));
    *dmin = _mm512_cvtph_ps(
        _mm256_setr_m128i(_mm_loadu_si128((const __m128i *)a->dmin), _mm_loadu_si128((const __m128i *)b->dmin)));
}

/* chunk (c, g) of two groups' super-blocks: rows 0..7 from a, 8..15 from b */
AVX512_INLINE __m512i q4kr_chunk(const block_q4_kr *a, const block_q4_kr *b, int c, int g) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a->qs[c][g])),
                              _mm256_loadu_si256((const __m256i *)b->qs[c][g]), 1);
}

AVX512_INLINE __m512i bcast4(const int8_t *q) {
    int32_t v;
    memcpy(&v, q, 4);
    return _mm512_set1_epi32(v);
}

/* ---------------------------------------------------------------- AVX-512 rows */

/*
 * 16 rows: groups at ga and gb (the same group twice for a last group of 8). Per super-block
 * the sub-block sums meet sc x da (and the minimums' m x s) first; d and dmin multiply the
 * super-block's total once.
 */
AVX512_INLINE __m512 q4kr_rows16(const block_q4_kr *ga, const block_q4_kr *gb, const block_q8x *a, int nsb,
                                 const char *end) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc = _mm512_setzero_ps(), accm = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        for (int o = 0; o < (int)sizeof(block_q4_kr); o += 64) {
            const char *pa = (const char *)(ga + i) + PREFETCH_BYTES + o, *pb = (const char *)(gb + i) + PREFETCH_BYTES + o;
            if (pa < end) _mm_prefetch(pa, _MM_HINT_T0);
            if (pb < end) _mm_prefetch(pb, _MM_HINT_T0);
        }
        __m128i sc[8], mn[8];
        q4kr_scales_u8(ga + i, gb + i, sc, mn);
        const block_q8x *ab = a + 8 * i;
        __m512 s = _mm512_setzero_ps(), sm = _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512i slo = _mm512_setzero_si512(), shi = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                const __m512i x = q4kr_chunk(ga + i, gb + i, c, g);
                slo = _mm512_dpbusd_epi32(slo, _mm512_and_si512(x, m4), bcast4(ab[2 * c].qs + 4 * g));
                shi = _mm512_dpbusd_epi32(shi, _mm512_and_si512(_mm512_srli_epi16(x, 4), m4), bcast4(ab[2 * c + 1].qs + 4 * g));
            }
            s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(slo), _mm512_mul_ps(u8_to_ps(sc[2 * c]), _mm512_set1_ps(ab[2 * c].d)), s);
            s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(shi), _mm512_mul_ps(u8_to_ps(sc[2 * c + 1]), _mm512_set1_ps(ab[2 * c + 1].d)), s);
            sm = _mm512_fmadd_ps(u8_to_ps(mn[2 * c]), _mm512_set1_ps(ab[2 * c].s), sm);
            sm = _mm512_fmadd_ps(u8_to_ps(mn[2 * c + 1]), _mm512_set1_ps(ab[2 * c + 1].s), sm);
        }
        __m512 d, dmin;
        q4kr_dmin(ga + i, gb + i, &d, &dmin);
        acc = _mm512_fmadd_ps(d, s, acc);
        accm = _mm512_fmadd_ps(dmin, sm, accm);
    }
    return _mm512_sub_ps(acc, accm);
}

/* the rows [r0, r1) not on whole groups go the slow way; r0 on a group from here on */
static int q4kr_edges(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, int *r0, int *r1,
                      int nt, int n) {
    const int a = (*r0 + G8 - 1) / G8 * G8, b = *r1 / G8 * G8;
    if (a >= b) {
        q4kr_via_q4k(w, rb, act, as, y, ys, *r0, *r1, nt, n);
        return 1;
    }
    if (*r0 < a) q4kr_via_q4k(w, rb, act, as, y, ys, *r0, a, nt, n);
    if (b < *r1) q4kr_via_q4k(w, rb, act, as, y, ys, b, *r1, nt, n);
    *r0 = a, *r1 = b;
    return 0;
}

AVX512 static void rows_q4_kr(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) {
    if (q4kr_edges(w, rb, act, 0, y, 0, &r0, &r1, 0, n)) return;
    const int nsb = n / QK_K;
    const char *end = (const char *)ROW(w, rb, r1);
    for (int r = r0; r < r1; r += 2 * G8) {
        const block_q4_kr *ga = (const block_q4_kr *)ROW(w, rb, r);
        const int two = r + 2 * G8 <= r1;
        const __m512 v = q4kr_rows16(ga, two ? ga + nsb : ga, (const block_q8x *)act, nsb, end);
        _mm512_mask_storeu_ps(y + r, two ? (__mmask16)0xffff : (__mmask16)0xff, v);
    }
}

/* ---------------------------------------------------------------- AVX-512 tiles */

#define Q4KR_CHUNK 2 /* super-blocks per pass over the tokens: their 16 blocks x 16 rows stay in L1 */
#define Q4KR_TOK 8   /* tokens per pass */

/* one 32-value block of 16 rows: the values of lane (row) i, 4g..4g+3, in q[g]; d x sc, dmin x m */
typedef struct {
    __m512i q[8];
    __m512 d, m;
} q4kr_pack;

/* super-block i of the two groups into pk[0..7]: nibbles split, scales to floats (once per
 * chunk: the token passes then read it from L1) */
AVX512_INLINE void q4kr_pack16(const block_q4_kr *ga, const block_q4_kr *gb, q4kr_pack *pk) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m128i sc[8], mn[8];
    __m512 d, dmin;
    q4kr_scales_u8(ga, gb, sc, mn);
    q4kr_dmin(ga, gb, &d, &dmin);
    for (int j = 0; j < 8; j++) {
        pk[j].d = _mm512_mul_ps(d, u8_to_ps(sc[j]));
        pk[j].m = _mm512_mul_ps(dmin, u8_to_ps(mn[j]));
    }
    for (int c = 0; c < 4; c++)
        for (int g = 0; g < 8; g++) {
            const __m512i x = q4kr_chunk(ga, gb, c, g);
            pk[2 * c].q[g] = _mm512_and_si512(x, m4);
            pk[2 * c + 1].q[g] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
        }
}

/* TT tokens x 16 rows over nb packed blocks (a[t]: each token's first of them), added into acc */
AVX512_INLINE void q4kr_panel(int TT, const q4kr_pack *pk, int nb, const block_q8x *const *a, __m512 *acc) {
    for (int b = 0; b < nb; b++) {
        const q4kr_pack *p = pk + b;
        __m512i sum[Q4KR_TOK];
#pragma GCC unroll 8
        for (int t = 0; t < TT; t++) sum[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++)
#pragma GCC unroll 8
            for (int t = 0; t < TT; t++) sum[t] = _mm512_dpbusd_epi32(sum[t], p->q[g], bcast4(a[t][b].qs + 4 * g));
#pragma GCC unroll 8
        for (int t = 0; t < TT; t++) {
            const block_q8x *ab = a[t] + b;
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sum[t]), p->d), _mm512_set1_ps(ab->d), acc[t]);
            acc[t] = _mm512_fnmadd_ps(p->m, _mm512_set1_ps(ab->s), acc[t]);
        }
    }
}

AVX512 static void tile_q4_kr(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, int r0,
                              int r1, int nt, int n) {
    if (q4kr_edges(w, rb, act, as, y, ys, &r0, &r1, nt, n)) return;
    const int nsb = n / QK_K;
    q4kr_pack pk[8 * Q4KR_CHUNK];
    for (int r = r0; r < r1; r += 2 * G8) {
        const block_q4_kr *ga = (const block_q4_kr *)ROW(w, rb, r);
        const int two = r + 2 * G8 <= r1;
        const block_q4_kr *gb = two ? ga + nsb : ga;
        const __mmask16 m = two ? (__mmask16)0xffff : (__mmask16)0xff;
        for (int i0 = 0; i0 < nsb; i0 += Q4KR_CHUNK) {
            const int ns = nsb - i0 < Q4KR_CHUNK ? nsb - i0 : Q4KR_CHUNK, nb = 8 * ns;
            for (int i = 0; i < ns; i++) q4kr_pack16(ga + i0 + i, gb + i0 + i, pk + 8 * i);
            for (int t = 0; t < nt;) {
                const int TT = nt - t >= 8 ? 8 : nt - t >= 4 ? 4 : nt - t >= 2 ? 2 : 1;
                const block_q8x *a[Q4KR_TOK];
                __m512 acc[Q4KR_TOK];
                for (int k = 0; k < TT; k++) {
                    a[k] = (const block_q8x *)((const char *)act + (size_t)(t + k) * as) + 8 * i0;
                    acc[k] = i0 ? _mm512_maskz_loadu_ps(m, y + (t + k) * ys + r) : _mm512_setzero_ps();
                }
                switch (TT) {
                case 8: q4kr_panel(8, pk, nb, a, acc); break;
                case 4: q4kr_panel(4, pk, nb, a, acc); break;
                case 2: q4kr_panel(2, pk, nb, a, acc); break;
                default: q4kr_panel(1, pk, nb, a, acc); break;
                }
                for (int k = 0; k < TT; k++) _mm512_mask_storeu_ps(y + (t + k) * ys + r, m, acc[k]);
                t += TT;
            }
        }
    }
}

void pl_kqr_fill_avx512(pl_kernel_set *set) {
    set->rows[PL_TYPE_Q4_KR] = rows_q4_kr;
    set->tile[PL_TYPE_Q4_KR] = tile_q4_kr;
}

#endif
