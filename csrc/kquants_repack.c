/*
 * kquants_repack.c - decode rows and prefill tiles for Q4_KR and Q6_KR, the Q4_K and Q6_K matrices
 * the loader regroups 8 rows at a time (quants.h says how; model.c does it on CPUs with AVX-512 VNNI).
 *
 * AVX-512: two groups (16 rows) per step (decode on AMD CPUs: one, see groups_per_step), one
 * 32-bit lane per row. Q4_KR: a 32-byte chunk of
 * each group, side by side, is one vector whose low nibbles are 4 values of one sub-block of
 * all 16 rows and whose high nibbles are the next sub-block's; Q6_KR: three such chunks (two of
 * low bits, one of high bits) give 4 values of 4 blocks. So the weights meet vpdpbusd after an
 * AND or a shift, with no per-row unpacking or transposing (kquants_avx512.c's tiles unpack
 * and transpose every 16-row chunk they meet, reading 16 rows' streams at once). The scales of
 * the 16 rows are decoded together (one byte a row, 8 rows side by side in the layout).
 * Decode (rows) streams the two groups once; the prefill tiles split a chunk of 2 super-blocks
 * into an L1 buffer once and then pass over the tokens 8 at a time with the integer sums and
 * float scaling of the Q4_K / Q6_K tiles (the same results, bit for bit).
 *
 * Elsewhere (the AVX2 set, rows not on a group boundary): each group is read back into the
 * file's layout in a buffer and handed to the AVX2 Q4_K / Q6_K kernels; that path only runs
 * when the kernel set is changed after a model was loaded on an AVX-512 CPU.
 */
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kquants_x86.h"
#include "simd_avx512.h"
#include "simd_x86.h"


#define G8 Q4KR_ROWS

/* An AVX-512 step covers the groups of 8 rows at r and r + 8; where the matrix ends after the first,
 * the "second" is the first again and its lanes are masked off. */
#define SECOND_GROUP(ga, nsb, r, r1) ((r) + 2 * G8 <= (r1) ? (ga) + (nsb) : (ga))
static inline __mmask16 group_lanes(int r, int r1) { return r + 2 * G8 <= r1 ? (__mmask16)0xffff : (__mmask16)0xff; }

/* tokens per tile step: 8, 4, 2 or 1 */
static inline int step_tokens(int left) { return left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1; }

/* ------------------------------------------------- any rows: through the Q4_K layout */

/* Rows [r0, r1) (any bounds) of a Q4_KR / Q6_KR matrix through the Q4_K / Q6_K kernel of the AVX2
 * set, one group read back into the file's layout at a time: tokens [0, nt), nt = 0 meaning rows()
 * for one. */
static void kr_via_file_layout(int type, const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys,
                               int r0, int r1, int nt, int n) {
    const int nsb = n / QK_K, base = q4_base(type);
    char *buf = malloc(G8 * rb);
    if (!buf) { /* out of memory: the scalar reference needs no buffer */
        for (int t = 0; t < (nt ? nt : 1); t++)
            pl_kernels_scalar.rows[type](w, rb, (const char *)act + (size_t)t * as, y + (size_t)t * ys, r0, r1, n);
        return;
    }
    for (int g = r0 / G8 * G8; g < r1; g += G8) {
        const int lo = r0 > g ? r0 : g, hi = r1 < g + G8 ? r1 : g + G8;
        for (int r = lo; r < hi; r++)
            for (int sb = 0; sb < nsb; sb++) {
                char *row = buf + (size_t)(r - g) * rb;
                if (type == PL_TYPE_Q4_KR) q4kr_block(w, rb, r, sb, (block_q4_k *)row + sb);
                else q6kr_block(w, rb, r, sb, (block_q6_k *)row + sb);
            }
        if (nt) pl_kernels_avx2.tile[base](buf, rb, act, as, y + g, ys, lo - g, hi - g, nt, n);
        else pl_kernels_avx2.rows[base](buf, rb, act, y + g, lo - g, hi - g, n);
    }
    free(buf);
}

#define KR_AVX2(NAME, TYPE)                                                                                \
    void pl_kqr_rows_##NAME##_avx2(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) { \
        kr_via_file_layout(TYPE, w, rb, act, 0, y, 0, r0, r1, 0, n);                                        \
    }                                                                                                      \
    void pl_kqr_tile_##NAME##_avx2(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, \
                                   int r0, int r1, int nt, int n) {                                        \
        kr_via_file_layout(TYPE, w, rb, act, as, y, ys, r0, r1, nt, n);                                    \
    }
KR_AVX2(q4_kr, PL_TYPE_Q4_KR)
KR_AVX2(q6_kr, PL_TYPE_Q6_KR)

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
 * 16 rows: groups at ga and gb (the same group twice for a last group of 8), with the tile's
 * arithmetic (q4kr_panel): per block, acc = fma(isum x (d x sc), da, acc), then
 * acc -= (dmin x m) x s, so one token gets the same bits alone as in any batch.
 */
AVX512_INLINE __m512 q4kr_rows16(const block_q4_kr *ga, const block_q4_kr *gb, const block_q8x *a, int nsb,
                                 const char *end) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        for (int o = 0; o < (int)sizeof(block_q4_kr); o += 64) {
            const char *pa = (const char *)(ga + i) + PREFETCH_BYTES + o, *pb = (const char *)(gb + i) + PREFETCH_BYTES + o;
            if (pa < end) _mm_prefetch(pa, _MM_HINT_T0);
            if (pb < end) _mm_prefetch(pb, _MM_HINT_T0);
        }
        __m128i sc[8], mn[8];
        q4kr_scales_u8(ga + i, gb + i, sc, mn);
        __m512 d, dmin;
        q4kr_dmin(ga + i, gb + i, &d, &dmin);
        const block_q8x *ab = a + 8 * i;
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512i slo = _mm512_setzero_si512(), shi = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                const __m512i x = q4kr_chunk(ga + i, gb + i, c, g);
                slo = _mm512_dpbusd_epi32(slo, _mm512_and_si512(x, m4), bcast4(ab[2 * c].qs + 4 * g));
                shi = _mm512_dpbusd_epi32(shi, _mm512_and_si512(_mm512_srli_epi16(x, 4), m4), bcast4(ab[2 * c + 1].qs + 4 * g));
            }
            for (int h = 0; h < 2; h++) {
                const int j = 2 * c + h;
                const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(h ? shi : slo), _mm512_mul_ps(d, u8_to_ps(sc[j])));
                acc = _mm512_fmadd_ps(f, _mm512_set1_ps(ab[j].d), acc);
                acc = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, u8_to_ps(mn[j])), _mm512_set1_ps(ab[j].s), acc);
            }
        }
    }
    return acc;
}

/*
 * Groups a decode step reads: two side by side (16 lanes of work), or one (its 8 rows in both
 * halves of the vector, lanes 8-15 dropped), so that a thread's rows arrive as one stream. Two
 * groups are two streams, each jumping ahead by a group every step: on Intel they stream at 88%
 * of a plain read, but from DRAM on Zen 4 they took a Qwen2.5 1.5B token 1.7-2x as long as one
 * group a step does, and longer than the file's layout (bench/RESULTS.md). So one on AMD CPUs, two
 * elsewhere (pl_set_amd_reads); both give every row the same bits (the lanes' arithmetic is the same).
 */
static _Atomic int amd_reads; /* 0: not chosen yet, 1: no, 2: yes */

int pl_set_amd_reads(int on) {
    const int before = pl_kq_amd_reads();
    atomic_store(&amd_reads, on == 0 || on == 1 ? on + 1 : 0); /* 0: chosen by the vendor again */
    return before;
}

int pl_kq_amd_reads(void) {
    int v = atomic_load_explicit(&amd_reads, memory_order_relaxed);
    if (!v) {
        __builtin_cpu_init(); /* this may run before the constructors (a test's first call) */
        v = __builtin_cpu_is("amd") ? 2 : 1;
        int unset = 0; /* a setting made meanwhile wins */
        if (!atomic_compare_exchange_strong(&amd_reads, &unset, v)) v = unset;
    }
    return v == 2;
}

static int groups_per_step(void) { return pl_kq_amd_reads() ? 1 : 2; }

/* the rows [r0, r1) not on whole groups go the slow way; r0 on a group from here on */
static int kr_edges(int type, const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, int *r0,
                    int *r1, int nt, int n) {
    const int a = (*r0 + G8 - 1) / G8 * G8, b = *r1 / G8 * G8;
    if (a >= b) {
        kr_via_file_layout(type, w, rb, act, as, y, ys, *r0, *r1, nt, n);
        return 1;
    }
    if (*r0 < a) kr_via_file_layout(type, w, rb, act, as, y, ys, *r0, a, nt, n);
    if (b < *r1) kr_via_file_layout(type, w, rb, act, as, y, ys, b, *r1, nt, n);
    *r0 = a, *r1 = b;
    return 0;
}

AVX512 static void rows_q4_kr(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) {
    if (kr_edges(PL_TYPE_Q4_KR, w, rb, act, 0, y, 0, &r0, &r1, 0, n)) return;
    const int nsb = n / QK_K, step = groups_per_step() * G8;
    const char *end = (const char *)ROW(w, rb, r1);
    for (int r = r0; r < r1; r += step) {
        const block_q4_kr *ga = (const block_q4_kr *)ROW(w, rb, r);
        const __m512 v = q4kr_rows16(ga, step == G8 ? ga : SECOND_GROUP(ga, nsb, r, r1), (const block_q8x *)act, nsb, end);
        _mm512_mask_storeu_ps(y + r, step == G8 ? (__mmask16)0xff : group_lanes(r, r1), v);
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
    if (kr_edges(PL_TYPE_Q4_KR, w, rb, act, as, y, ys, &r0, &r1, nt, n)) return;
    const int nsb = n / QK_K;
    q4kr_pack pk[8 * Q4KR_CHUNK];
    for (int r = r0; r < r1; r += 2 * G8) {
        const block_q4_kr *ga = (const block_q4_kr *)ROW(w, rb, r), *gb = SECOND_GROUP(ga, nsb, r, r1);
        const __mmask16 m = group_lanes(r, r1);
        for (int i0 = 0; i0 < nsb; i0 += Q4KR_CHUNK) {
            const int ns = nsb - i0 < Q4KR_CHUNK ? nsb - i0 : Q4KR_CHUNK, nb = 8 * ns;
            for (int i = 0; i < ns; i++) q4kr_pack16(ga + i0 + i, gb + i0 + i, pk + 8 * i);
            for (int t = 0; t < nt;) {
                const int TT = step_tokens(nt - t);
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

/* ---------------------------------------------------------------- AVX-512: Q6_KR */

/*
 * -32 x the sum of each 16-value half of nb activation blocks (c[2b + h]): Q6_K's values are
 * q - 32, q = 0..63 unsigned for vpdpbusd, so each half's integer sum starts from this.
 */
static void q6kr_zero_terms(const block_q8x *a, int nb, int32_t *c) {
    for (int b = 0; b < nb; b++)
        for (int h = 0; h < 2; h++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += a[b].qs[16 * h + j];
            c[2 * b + h] = -32 * s;
        }
}

/* the 4 blocks m = 0..3 of half super-block n, chunk g: values 4g..4g+3 of 16 rows, 0..63 */
AVX512_INLINE void q6kr_values(const block_q6_kr *a, const block_q6_kr *b, int n, int g, __m512i u[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
    const __m512i l0 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a->ql[n][0][g])),
                                          _mm256_loadu_si256((const __m256i *)b->ql[n][0][g]), 1);
    const __m512i l1 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a->ql[n][1][g])),
                                          _mm256_loadu_si256((const __m256i *)b->ql[n][1][g]), 1);
    const __m512i hb = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a->qh[n][g])),
                                          _mm256_loadu_si256((const __m256i *)b->qh[n][g]), 1);
    /* (x & m4) | (high bits moved to 4-5 & 0x30): ternary logic 0xEA is (A & B) | C */
    u[0] = _mm512_ternarylogic_epi32(l0, m4, _mm512_and_si512(_mm512_slli_epi16(hb, 4), m30), 0xEA);
    u[1] = _mm512_ternarylogic_epi32(l1, m4, _mm512_and_si512(_mm512_slli_epi16(hb, 2), m30), 0xEA);
    u[2] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l0, 4), m4, _mm512_and_si512(hb, m30), 0xEA);
    u[3] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l1, 4), m4, _mm512_and_si512(_mm512_srli_epi16(hb, 2), m30), 0xEA);
}

/* scale k (0..15) of 16 rows as floats */
AVX512_INLINE __m512 q6kr_scale(const block_q6_kr *a, const block_q6_kr *b, int k) {
    const __m128i s = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)a->scales[k]),
                                         _mm_loadl_epi64((const __m128i *)b->scales[k]));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s));
}

AVX512_INLINE __m512 q6kr_d(const block_q6_kr *a, const block_q6_kr *b) {
    return _mm512_cvtph_ps(_mm256_setr_m128i(_mm_loadu_si128((const __m128i *)a->d), _mm_loadu_si128((const __m128i *)b->d)));
}

AVX512_INLINE __m512 q6kr_rows16(const block_q6_kr *ga, const block_q6_kr *gb, const block_q8x *a, const int32_t *c,
                                 int nsb, const char *end) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < nsb; i++) {
        for (int o = 0; o < (int)sizeof(block_q6_kr); o += 64) {
            const char *pa = (const char *)(ga + i) + PREFETCH_BYTES + o, *pb = (const char *)(gb + i) + PREFETCH_BYTES + o;
            if (pa < end) _mm_prefetch(pa, _MM_HINT_T0);
            if (pb < end) _mm_prefetch(pb, _MM_HINT_T0);
        }
        const block_q8x *ab = a + 8 * i;
        const int32_t *ci = c + 16 * i;
        const __m512 d = q6kr_d(ga + i, gb + i);
        for (int n = 0; n < 2; n++) {
            __m512i sum[4][2];
            for (int m = 0; m < 4; m++)
                for (int h = 0; h < 2; h++) sum[m][h] = _mm512_set1_epi32(ci[2 * (4 * n + m) + h]);
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                __m512i u[4];
                q6kr_values(ga + i, gb + i, n, g, u);
                for (int m = 0; m < 4; m++)
                    sum[m][g >> 2] = _mm512_dpbusd_epi32(sum[m][g >> 2], u[m], bcast4(ab[4 * n + m].qs + 4 * g));
            }
            for (int m = 0; m < 4; m++) { /* the tile's arithmetic (q6kr_panel): the same bits in any batch */
                const int jb = 4 * n + m;
                const __m512 d0 = _mm512_mul_ps(d, q6kr_scale(ga + i, gb + i, 2 * jb));
                const __m512 d1 = _mm512_mul_ps(d, q6kr_scale(ga + i, gb + i, 2 * jb + 1));
                const __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[m][1]), d1, _mm512_mul_ps(_mm512_cvtepi32_ps(sum[m][0]), d0));
                acc = _mm512_fmadd_ps(f, _mm512_set1_ps(ab[jb].d), acc);
            }
        }
    }
    return acc;
}

AVX512 static void rows_q6_kr(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) {
    if (kr_edges(PL_TYPE_Q6_KR, w, rb, act, 0, y, 0, &r0, &r1, 0, n)) return;
    const int nsb = n / QK_K, nb = n / QK;
    int32_t cstack[2 * 512], *c = nb <= 512 ? cstack : malloc(sizeof(int32_t) * 2 * (size_t)nb);
    if (!c) {
        kr_via_file_layout(PL_TYPE_Q6_KR, w, rb, act, 0, y, 0, r0, r1, 0, n);
        return;
    }
    q6kr_zero_terms((const block_q8x *)act, nb, c);
    const char *end = (const char *)ROW(w, rb, r1);
    const int step = groups_per_step() * G8;
    for (int r = r0; r < r1; r += step) {
        const block_q6_kr *ga = (const block_q6_kr *)ROW(w, rb, r);
        const __m512 v = q6kr_rows16(ga, step == G8 ? ga : SECOND_GROUP(ga, nsb, r, r1), (const block_q8x *)act, c, nsb, end);
        _mm512_mask_storeu_ps(y + r, step == G8 ? (__mmask16)0xff : group_lanes(r, r1), v);
    }
    if (c != cstack) free(c);
}

/* one 32-value block of 16 rows, values 4g..4g+3 of each row in q[g]; d x scale of each half */
typedef struct {
    __m512i q[8];
    __m512 d[2];
} q6kr_pack;

AVX512_INLINE void q6kr_pack16(const block_q6_kr *ga, const block_q6_kr *gb, q6kr_pack *pk) {
    const __m512 d = q6kr_d(ga, gb);
    for (int k = 0; k < 16; k++) pk[k / 2].d[k % 2] = _mm512_mul_ps(d, q6kr_scale(ga, gb, k));
    for (int n = 0; n < 2; n++)
        for (int g = 0; g < 8; g++) {
            __m512i u[4];
            q6kr_values(ga, gb, n, g, u);
            for (int m = 0; m < 4; m++) pk[4 * n + m].q[g] = u[m];
        }
}

AVX512_INLINE void q6kr_panel(int TT, const q6kr_pack *pk, int nb, const block_q8x *const *a,
                              const int32_t *const *c, __m512 *acc) {
    for (int b = 0; b < nb; b++) {
        const q6kr_pack *p = pk + b;
        __m512i s0[Q4KR_TOK], s1[Q4KR_TOK];
#pragma GCC unroll 8
        for (int t = 0; t < TT; t++) s0[t] = _mm512_set1_epi32(c[t][2 * b]), s1[t] = _mm512_set1_epi32(c[t][2 * b + 1]);
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++)
#pragma GCC unroll 8
            for (int t = 0; t < TT; t++) {
                if (g < 4) s0[t] = _mm512_dpbusd_epi32(s0[t], p->q[g], bcast4(a[t][b].qs + 4 * g));
                else s1[t] = _mm512_dpbusd_epi32(s1[t], p->q[g], bcast4(a[t][b].qs + 4 * g));
            }
#pragma GCC unroll 8
        for (int t = 0; t < TT; t++) {
            const __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[t]), p->d[1], _mm512_mul_ps(_mm512_cvtepi32_ps(s0[t]), p->d[0]));
            acc[t] = _mm512_fmadd_ps(f, _mm512_set1_ps(a[t][b].d), acc[t]);
        }
    }
}

AVX512 static void tile_q6_kr(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, int r0,
                              int r1, int nt, int n) {
    if (kr_edges(PL_TYPE_Q6_KR, w, rb, act, as, y, ys, &r0, &r1, nt, n)) return;
    const int nsb = n / QK_K, nbt = n / QK;
    int32_t *c = malloc(sizeof(int32_t) * 2 * (size_t)nbt * nt);
    if (!c) {
        kr_via_file_layout(PL_TYPE_Q6_KR, w, rb, act, as, y, ys, r0, r1, nt, n);
        return;
    }
    for (int t = 0; t < nt; t++)
        q6kr_zero_terms((const block_q8x *)((const char *)act + (size_t)t * as), nbt, c + 2 * (size_t)nbt * t);
    q6kr_pack pk[8 * Q4KR_CHUNK];
    for (int r = r0; r < r1; r += 2 * G8) {
        const block_q6_kr *ga = (const block_q6_kr *)ROW(w, rb, r), *gb = SECOND_GROUP(ga, nsb, r, r1);
        const __mmask16 m = group_lanes(r, r1);
        for (int i0 = 0; i0 < nsb; i0 += Q4KR_CHUNK) {
            const int ns = nsb - i0 < Q4KR_CHUNK ? nsb - i0 : Q4KR_CHUNK, nb = 8 * ns;
            for (int i = 0; i < ns; i++) q6kr_pack16(ga + i0 + i, gb + i0 + i, pk + 8 * i);
            for (int t = 0; t < nt;) {
                const int TT = step_tokens(nt - t);
                const block_q8x *a[Q4KR_TOK];
                const int32_t *cc[Q4KR_TOK];
                __m512 acc[Q4KR_TOK];
                for (int k = 0; k < TT; k++) {
                    a[k] = (const block_q8x *)((const char *)act + (size_t)(t + k) * as) + 8 * i0;
                    cc[k] = c + 2 * ((size_t)nbt * (t + k) + 8 * i0);
                    acc[k] = i0 ? _mm512_maskz_loadu_ps(m, y + (t + k) * ys + r) : _mm512_setzero_ps();
                }
                switch (TT) {
                case 8: q6kr_panel(8, pk, nb, a, cc, acc); break;
                case 4: q6kr_panel(4, pk, nb, a, cc, acc); break;
                case 2: q6kr_panel(2, pk, nb, a, cc, acc); break;
                default: q6kr_panel(1, pk, nb, a, cc, acc); break;
                }
                for (int k = 0; k < TT; k++) _mm512_mask_storeu_ps(y + (t + k) * ys + r, m, acc[k]);
                t += TT;
            }
        }
    }
    free(c);
}

void pl_kqr_fill_avx512(pl_kernel_set *set) {
    set->rows[PL_TYPE_Q4_KR] = rows_q4_kr;
    set->tile[PL_TYPE_Q4_KR] = tile_q4_kr;
    set->rows[PL_TYPE_Q6_KR] = rows_q6_kr;
    set->tile[PL_TYPE_Q6_KR] = tile_q6_kr;
    /* the rows are the tiles' arithmetic: batch-invariant mode's one-token kernels. (Rows off a
     * group boundary take the AVX2 Q4_K / Q6_K kernels, which differ; the loader regroups only
     * matrices of whole groups and threads share rows in multiples of 8, so a model meets none.) */
    set->rows_invariant[PL_TYPE_Q4_KR] = rows_q4_kr;
    set->rows_invariant[PL_TYPE_Q6_KR] = rows_q6_kr;
}

#else
int pl_set_amd_reads(int on) { /* the kernels it steers exist on x86 only (AVX-512) */
    (void)on;
    return 0;
}
#endif
