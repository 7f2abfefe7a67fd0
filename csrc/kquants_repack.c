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

/* Scale (sc) and minimum (mn) j of 8 rows, one byte a row (kq_scale_min_k4 on 8 rows at once). */
static inline void q4kr_scale_bytes(const block_q4_kr *x, int j, uint64_t *sc, uint64_t *mn) {
    uint64_t s[K_SCALE_SIZE];
    memcpy(s, x->scales, sizeof s);
    const uint64_t m63 = 0x3f3f3f3f3f3f3f3full, m15 = 0x0f0f0f0f0f0f0f0full, m48 = 0x3030303030303030ull;
    if (j < 4) {
        *sc = s[j] & m63;
        *mn = s[j + 4] & m63;
    } else { /* the top 2 bits of bytes j-4 and j, (b >> 6) << 4, are (b >> 2) & 0x30 */
        *sc = (s[j + 4] & m15) | ((s[j - 4] >> 2) & m48);
        *mn = ((s[j + 4] >> 4) & m15) | ((s[j] >> 2) & m48);
    }
}

/* For super-block blocks a (rows 0..7) and b (rows 8..15): d x sc_j and dmin x m_j per row. */
typedef struct {
    __m512 d[8], m[8];
} q4kr_scales;

AVX512_INLINE void q4kr_scales16(const block_q4_kr *a, const block_q4_kr *b, q4kr_scales *o) {
    const __m512 d = _mm512_cvtph_ps(_mm256_setr_m128i(_mm_loadu_si128((const __m128i *)a->d),
                                                       _mm_loadu_si128((const __m128i *)b->d)));
    const __m512 dmin = _mm512_cvtph_ps(_mm256_setr_m128i(_mm_loadu_si128((const __m128i *)a->dmin),
                                                          _mm_loadu_si128((const __m128i *)b->dmin)));
    for (int j = 0; j < 8; j++) {
        uint64_t sa, ma, sb, mb;
        q4kr_scale_bytes(a, j, &sa, &ma);
        q4kr_scale_bytes(b, j, &sb, &mb);
        const __m128i sc = _mm_set_epi64x((long long)sb, (long long)sa), mn = _mm_set_epi64x((long long)mb, (long long)ma);
        o->d[j] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc)));
        o->m[j] = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(mn)));
    }
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

/* 16 rows: groups at ga and gb (the same group twice for a last group of 8) */
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
        q4kr_scales sc;
        q4kr_scales16(ga + i, gb + i, &sc);
        const block_q8x *ab = a + 8 * i;
        for (int c = 0; c < 4; c++) {
            __m512i slo = _mm512_setzero_si512(), shi = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                const __m512i x = q4kr_chunk(ga + i, gb + i, c, g);
                slo = _mm512_dpbusd_epi32(slo, _mm512_and_si512(x, m4), bcast4(ab[2 * c].qs + 4 * g));
                shi = _mm512_dpbusd_epi32(shi, _mm512_and_si512(_mm512_srli_epi16(x, 4), m4), bcast4(ab[2 * c + 1].qs + 4 * g));
            }
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(slo), _mm512_mul_ps(sc.d[2 * c], _mm512_set1_ps(ab[2 * c].d)), acc);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(shi), _mm512_mul_ps(sc.d[2 * c + 1], _mm512_set1_ps(ab[2 * c + 1].d)), acc);
            accm = _mm512_fmadd_ps(sc.m[2 * c], _mm512_set1_ps(ab[2 * c].s), accm);
            accm = _mm512_fmadd_ps(sc.m[2 * c + 1], _mm512_set1_ps(ab[2 * c + 1].s), accm);
        }
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

#define Q4KR_CHUNK 2 /* super-blocks per pass over the tokens: 16 rows x 2 x 128 bytes of nibbles stay in L1 */
#define Q4KR_TOK 8   /* tokens per pass */

/* TT tokens x 16 rows over super-blocks [i0, i0 + ns) (sc: theirs), added into acc */
AVX512_INLINE void q4kr_panel(int TT, const block_q4_kr *ga, const block_q4_kr *gb, const q4kr_scales *sc, int i0,
                              int ns, const block_q8x *const *a, __m512 *acc) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int i = i0; i < i0 + ns; i++) {
        const q4kr_scales *s = sc + (i - i0);
        for (int j = 0; j < 8; j++) { /* sub-block j: chunk row c = j / 2, high nibbles for odd j */
            const int c = j / 2, hi = j & 1, blk = 8 * i + j;
            __m512i sum[Q4KR_TOK];
#pragma GCC unroll 8
            for (int t = 0; t < TT; t++) sum[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                const __m512i x = q4kr_chunk(ga + i, gb + i, c, g);
                const __m512i q = hi ? _mm512_and_si512(_mm512_srli_epi16(x, 4), m4) : _mm512_and_si512(x, m4);
#pragma GCC unroll 8
                for (int t = 0; t < TT; t++) sum[t] = _mm512_dpbusd_epi32(sum[t], q, bcast4(a[t][blk].qs + 4 * g));
            }
#pragma GCC unroll 8
            for (int t = 0; t < TT; t++) {
                const block_q8x *ab = a[t] + blk;
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sum[t]), s->d[j]), _mm512_set1_ps(ab->d), acc[t]);
                acc[t] = _mm512_fnmadd_ps(s->m[j], _mm512_set1_ps(ab->s), acc[t]);
            }
        }
    }
}

AVX512 static void tile_q4_kr(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, int r0,
                              int r1, int nt, int n) {
    if (q4kr_edges(w, rb, act, as, y, ys, &r0, &r1, nt, n)) return;
    const int nsb = n / QK_K;
    q4kr_scales sc[Q4KR_CHUNK];
    for (int r = r0; r < r1; r += 2 * G8) {
        const block_q4_kr *ga = (const block_q4_kr *)ROW(w, rb, r);
        const int two = r + 2 * G8 <= r1;
        const block_q4_kr *gb = two ? ga + nsb : ga;
        const __mmask16 m = two ? (__mmask16)0xffff : (__mmask16)0xff;
        for (int i0 = 0; i0 < nsb; i0 += Q4KR_CHUNK) {
            const int ns = nsb - i0 < Q4KR_CHUNK ? nsb - i0 : Q4KR_CHUNK;
            for (int i = 0; i < ns; i++) q4kr_scales16(ga + i0 + i, gb + i0 + i, sc + i);
            for (int t = 0; t < nt;) {
                const int TT = nt - t >= 8 ? 8 : nt - t >= 4 ? 4 : nt - t >= 2 ? 2 : 1;
                const block_q8x *a[Q4KR_TOK];
                __m512 acc[Q4KR_TOK];
                for (int k = 0; k < TT; k++) {
                    a[k] = (const block_q8x *)((const char *)act + (size_t)(t + k) * as);
                    acc[k] = i0 ? _mm512_maskz_loadu_ps(m, y + (t + k) * ys + r) : _mm512_setzero_ps();
                }
                switch (TT) {
                case 8: q4kr_panel(8, ga, gb, sc, i0, ns, a, acc); break;
                case 4: q4kr_panel(4, ga, gb, sc, i0, ns, a, acc); break;
                case 2: q4kr_panel(2, ga, gb, sc, i0, ns, a, acc); break;
                default: q4kr_panel(1, ga, gb, sc, i0, ns, a, acc); break;
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
