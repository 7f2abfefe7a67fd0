/*
 * kernels_avx2.c - the x86-64 kernels: AVX2 + FMA + F16C.
 *
 * The build compiles every file for baseline x86-64; each function here carries
 * a target attribute instead, and dispatch.c calls this table only after cpuid
 * reports AVX2, FMA and F16C. So one binary runs on any x86-64.
 *
 * Two shapes of work:
 *  - rows(): one activation (decode). Weights stream from memory once, so the
 *    job is to keep up with memory. The quantized rows take the tile's float
 *    arithmetic (8 rows in the lanes, one chain per row over its blocks), so a
 *    token gets the same bits alone or in any batch.
 *  - tile(): many activations (prefill). Compute-bound. Float types use a
 *    4 rows x 3 tokens register tile. Quantized types repack 8 rows at a time
 *    into a small buffer where each 32-bit lane holds 4 values of one row, so a
 *    single maddubs multiplies 8 rows by the same 4 activation bytes (broadcast)
 *    and the result lanes are the 8 rows: no horizontal sums, one float convert
 *    and one scale per 8 rows x 32 values.
 *
 * Integer products: maddubs wants an unsigned and a signed operand. Q4 nibbles
 * (0..15) are the unsigned side as they are; Q4_0's "- 8" is taken off in the
 * integers (8 x the activation's sums). Q8_0 uses |w| and sign(a, w).
 */
#if defined(__x86_64__) || defined(_M_X64)

#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kquants_x86.h"
#include "pyllama.h"
#include "simd_x86.h"

/* ------------------------------------------------------------------ helpers */

AVX2_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2_INLINE __m256i bcast32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* ------------------------------------------------------- activation quantize */

/* round half to even; a macro, since clang wants the rounding mode as a constant expression */
#define ROUND_NEAREST (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

AVX2 static void quantize_q8x(const float *x, block_q8x *y, int n) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        const __m256 a0 = _mm256_and_ps(v0, absmask), a1 = _mm256_and_ps(v1, absmask);
        const __m256 a2 = _mm256_and_ps(v2, absmask), a3 = _mm256_and_ps(v3, absmask);
        /* a NaN or an infinity: the block becomes NaN (kernels_scalar.c says why) */
        const __m256 big = _mm256_set1_ps(FLT_MAX);
        const __m256 bad = _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(a0, big, _CMP_NLE_UQ), _mm256_cmp_ps(a1, big, _CMP_NLE_UQ)),
                                        _mm256_or_ps(_mm256_cmp_ps(a2, big, _CMP_NLE_UQ), _mm256_cmp_ps(a3, big, _CMP_NLE_UQ)));
        if (_mm256_movemask_ps(bad)) {
            memset(y[b].qs, 0, QK);
            y[b].d = y[b].s = NAN;
            continue;
        }
        __m256 m = _mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float d = amax / 127.0f;
        float id = d >= FLT_MIN ? 1.0f / d : 0.0f; /* below FLT_MIN 1/d can overflow: 0 * inf = NaN */
        const __m256 vid = _mm256_set1_ps(id);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, vid), ROUND_NEAREST));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, vid), ROUND_NEAREST));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, vid), ROUND_NEAREST));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, vid), ROUND_NEAREST));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        /* packs work within 128-bit lanes: fix the order with one permute */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[b].qs, p);
        y[b].d = d;
        y[b].s = d * (float)_mm_cvtsi128_si32(s4);
    }
}

/* ------------------------------------------------------------ float weights */

/* 8 weights of each float type as floats */
AVX2_INLINE __m256 load8(int type, const void *w, int k) {
    if (type == PL_TYPE_F32) return _mm256_loadu_ps((const float *)w + k);
    if (type == PL_TYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + k)));
    __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + k)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
}

/* R rows x T tokens, one register accumulator each; n any length */
AVX2_INLINE void ftile(int type, int R, int T, const void *w, size_t rb, const float *x, size_t xs,
                       float *y, size_t ys, int r, int n) {
    __m256 acc[4][3];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) acc[i][t] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 xv[3];
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + t * xs + k);
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) {
            __m256 wv = load8(type, ROW(w, rb, r + i), k);
#pragma GCC unroll 3
            for (int t = 0; t < T; t++) acc[i][t] = _mm256_fmadd_ps(wv, xv[t], acc[i][t]);
        }
    }
    if (R == 4) { /* four row sums at once: two rounds of hadd, one add of the halves */
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0][t], acc[1][t]), _mm256_hadd_ps(acc[2][t], acc[3][t]));
            __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            float s[4];
            _mm_storeu_ps(s, s4);
            for (int i = 0; i < 4; i++) {
                for (int j = k; j < n; j++) s[i] += load1(type, ROW(w, rb, r + i), j) * x[t * xs + j];
                y[t * ys + r + i] = s[i];
            }
        }
        return;
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            float s = hsum8(acc[i][t]);
            for (int j = k; j < n; j++) s += load1(type, ROW(w, rb, r + i), j) * x[t * xs + j];
            y[t * ys + r + i] = s;
        }
}

/* one float row, four accumulator chains */
AVX2_INLINE float frow(int type, const void *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 32 <= n; k += 32) {
        a0 = _mm256_fmadd_ps(load8(type, w, k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(load8(type, w, k + 8), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(load8(type, w, k + 16), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(load8(type, w, k + 24), _mm256_loadu_ps(x + k + 24), a3);
    }
    for (; k + 8 <= n; k += 8) a0 = _mm256_fmadd_ps(load8(type, w, k), _mm256_loadu_ps(x + k), a0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < n; k++) s += load1(type, w, k) * x[k];
    return s;
}

/*
 * Float weights for a batch of 16 tokens or more: packed panels, as in kernels_avx512.c
 * but with 16 registers. The 4x3 tile above spends its horizontal sums on the FMA
 * ports and converts every F16/BF16 weight once per 3 tokens. Here 16 rows x FKC2
 * values are converted and transposed once into a buffer (value k of the 16 rows in
 * two registers' worth, p[k][0..15]); each pass over it multiplies them by one
 * broadcast activation per token: 12 accumulators (2 x 8 rows, 6 tokens), each lane one
 * output, stored as they are. Buffer (8 KB) and a 6-token slice of the activations
 * (3 KB) stay in L1. Each output is summed over k in order.
 */
#define FKC2 128 /* values of each row packed at a time */
#define FTOK2 6  /* tokens per pass over a packed chunk */

/* 8 x 8 floats: v[i] = row i in, v[j] = column j out */
AVX2_INLINE void transpose8_ps(__m256 v[8]) {
    __m256 t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 8; i += 4) { /* 64-bit pairs: u[i + j] holds columns j and j + 4 of 4 rows */
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) { /* 128-bit halves: rows 0-3 with rows 4-7 */
        v[j] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);
        v[j + 4] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31);
    }
}

/* Rows r..r+nr-1 (nr <= 16; missing rows repeat the last), values k0..k0+kc-1 (kc % 8 == 0),
 * as p[k][16]. */
AVX2_INLINE void fpack16(int type, const void *w, size_t rb, int r, int nr, int k0, int kc, float *p) {
    for (int h = 0; h < 2; h++)
        for (int kb = 0; kb < kc; kb += 8) {
            __m256 v[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const int row = h * 8 + i < nr ? h * 8 + i : nr - 1;
                v[i] = load8(type, ROW(w, rb, r + row), k0 + kb);
            }
            transpose8_ps(v);
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) _mm256_store_ps(p + (size_t)(kb + j) * 16 + h * 8, v[j]);
        }
}

/* Both halves (16 rows) x T tokens over kc packed values (simd_x86.h) */
#define LOADM8(m, p) _mm256_maskload_ps(p, m)
DEFINE_FPANEL(fpanel8, AVX2_INLINE, __m256, 8, __m256i, FTOK2, _mm256_setzero_ps, LOADM8, _mm256_load_ps,
              _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_maskstore_ps)

/* Every token over one packed chunk: FTOK2 at a time, then 4, then one by one (T a constant
 * in each call, for the unrolling). */
AVX2_INLINE void fpanel8_tokens(const float *p, int kc, const float *x, size_t xs, float *y, size_t ys, int nt,
                                int first, const __m256i m[2]) {
    int t = 0;
    for (; t + FTOK2 <= nt; t += FTOK2) fpanel8(FTOK2, p, kc, x + t * xs, xs, y + t * ys, ys, first, m);
    if (t + 4 <= nt) fpanel8(4, p, kc, x + t * xs, xs, y + t * ys, ys, first, m), t += 4;
    for (; t < nt; t++) fpanel8(1, p, kc, x + t * xs, xs, y + t * ys, ys, first, m);
}

AVX2 static void fpanel16_rows(int type, const void *w, size_t rb, const float *x, size_t xs, float *y, size_t ys,
                               int r0, int r1, int nt, int n) {
    float p[FKC2 * 16] __attribute__((aligned(32)));
    for (int r = r0; r < r1; r += 16) {
        const int nr = r1 - r < 16 ? r1 - r : 16;
        const __m256i m[2] = {lanes_below(nr), lanes_below(nr - 8)};
        for (int k0 = 0; k0 < n; k0 += FKC2) {
            const int kc = n - k0 < FKC2 ? n - k0 : FKC2;
            fpack16(type, w, rb, r, nr, k0, kc, p);
            prefetch_next_chunk(type, w, rb, r, r1, k0, n, 16, FKC2);
            fpanel8_tokens(p, kc, x + k0, xs, y + r, ys, nt, k0 == 0, m);
        }
    }
}

/* From this many tokens on (and rows whose length is a multiple of 8) tile() uses the panels. */
#define FPANEL_MIN_TOKENS 16

#define FLOAT_KERNELS(NAME, TYPE)                                                               \
    AVX2 static void rows_##NAME(const void *w, size_t rb, const void *act, float *y, int r0,  \
                                 int r1, int n) {                                               \
        for (int r = r0; r < r1; r++) {                                                         \
            if (TYPE != PL_TYPE_F32) prefetch_at(ROW(w, rb, r), rb, ROW(w, rb, r1), PREFETCH_BYTES_F16); \
            y[r] = frow(TYPE, ROW(w, rb, r), (const float *)act, n);                            \
        }                                                                                       \
    }                                                                                           \
    AVX2 static void tile_##NAME(const void *w, size_t rb, const void *act, size_t as, float *y, \
                                 size_t ys, int r0, int r1, int nt, int n) {                    \
        const float *x = (const float *)act;                                                    \
        const size_t xs = as / sizeof(float);                                                   \
        if (nt >= FPANEL_MIN_TOKENS && n % 8 == 0) {                                            \
            fpanel16_rows(TYPE, w, rb, x, xs, y, ys, r0, r1, nt, n);                            \
            return;                                                                             \
        }                                                                                       \
        PL_FTILE_ALL(TYPE, 3, w, rb, x, xs, y, ys, r0, r1, nt, n);                              \
    }

FLOAT_KERNELS(f32, PL_TYPE_F32)
FLOAT_KERNELS(f16, PL_TYPE_F16)
FLOAT_KERNELS(bf16, PL_TYPE_BF16)

/* --------------------------------------------------- quantized weights: rows */

/*
 * Decode (one token) with the tile's arithmetic, so that a token's result does not depend on
 * how many tokens share its call (batch invariance): 8 rows at once, one per lane, and each
 * row's sum one chain over its blocks, acc = fma(isum_b, d_w * d_a, acc) (Q4_1: then
 * acc = fma(m_w, s_a, acc)), with isum_b the block's exact integer dot product -- the tile's
 * own instructions (qpanel) on the same operands. Each row's integer products come out as
 * partial sums in int32 lanes; adds across the 8 rows' vectors turn them into one vector per
 * block holding every row's block sum (integer adds, so their order changes nothing). That
 * replaces the horizontal sum a row-at-a-time kernel needs at each row's end, and the scales
 * convert 8 rows at a time, so it costs no more than summing each row in its own lanes.
 * The 8 rows are adjacent: one stream of memory, as decode wants.
 */

/* the fp16 pair at offset off of each of 8 rows -> its first and second values as floats, lane = row */
AVX2_INLINE void pair_by_row(const uint8_t *const wr[8], size_t off, __m256 *first, __m256 *second) {
    __m128i x[8], t[4];
    for (int i = 0; i < 8; i++) {
        int32_t v;
        memcpy(&v, wr[i] + off, 4);
        x[i] = _mm_cvtsi32_si128(v);
    }
    for (int k = 0; k < 4; k++) t[k] = _mm_unpacklo_epi16(x[2 * k], x[2 * k + 1]);
    const __m128i u0 = _mm_unpacklo_epi32(t[0], t[1]), u1 = _mm_unpacklo_epi32(t[2], t[3]);
    *first = _mm256_cvtph_ps(_mm_unpacklo_epi64(u0, u1));
    *second = _mm256_cvtph_ps(_mm_unpackhi_epi64(u0, u1));
}

/* 8 fp16 values from each of 8 rows (16 bytes at offset off) -> f[8 j + i]: value j of row i, as floats:
 * a repacked row keeps its scales together, so 8 blocks' scales of 8 rows are one transpose */
AVX2_INLINE void halves8_by_row(const uint8_t *const wr[8], size_t off, float f[64]) {
    __m128i x[8], t[8], u[8];
    for (int i = 0; i < 8; i++) x[i] = _mm_loadu_si128((const __m128i *)(wr[i] + off));
    for (int i = 0; i < 8; i += 2) { /* rows i, i+1 interleaved: values 0-3, then 4-7 */
        t[i] = _mm_unpacklo_epi16(x[i], x[i + 1]);
        t[i + 1] = _mm_unpackhi_epi16(x[i], x[i + 1]);
    }
    for (int h = 0; h < 8; h += 4) { /* rows h..h+3: values 0-1, 2-3, 4-5, 6-7 */
        u[h] = _mm_unpacklo_epi32(t[h], t[h + 2]);
        u[h + 1] = _mm_unpackhi_epi32(t[h], t[h + 2]);
        u[h + 2] = _mm_unpacklo_epi32(t[h + 1], t[h + 3]);
        u[h + 3] = _mm_unpackhi_epi32(t[h + 1], t[h + 3]);
    }
    for (int j = 0; j < 4; j++) {
        _mm256_storeu_ps(f + 16 * j, _mm256_cvtph_ps(_mm_unpacklo_epi64(u[j], u[4 + j])));
        _mm256_storeu_ps(f + 16 * j + 8, _mm256_cvtph_ps(_mm_unpackhi_epi64(u[j], u[4 + j])));
    }
}

/* the nibble bytes of blocks b and b+1 of a Q4 row (either layout), block b in the low lane */
AVX2_INLINE __m256i q4_pair_nibbles(int type, const uint8_t *row, int nb, int b, int two) {
    const q4_block k0 = q4_block_at(type, row, b, nb);
    const __m128i x0 = _mm_loadu_si128((const __m128i *)k0.qs);
    if (!two) return _mm256_inserti128_si256(_mm256_castsi128_si256(x0), _mm_setzero_si128(), 1);
    if (q4_repacked(type)) return _mm256_loadu_si256((const __m256i *)k0.qs);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(x0),
                                   _mm_loadu_si128((const __m128i *)q4_block_at(type, row, b + 1, nb).qs), 1);
}

AVX2_INLINE void q4rows8(int type, const void *w, size_t rb, const block_q8x *a, float *y, int r, int r1, int n) {
    const int nb = n / QK, q41 = q4_base(type) == PL_TYPE_Q4_1;
    const uint8_t *wr[8];
    const int nr = rows8(w, rb, r, r1, wr);
    const size_t ahead = ROWS8_AHEAD * rb;
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    const size_t bb = q41 ? sizeof(block_q4_1) : sizeof(block_q4_0); /* the file layout's block */
    float dsc[64], msc[64]; /* repacked: 8 blocks' scales (minimums) of the 8 rows, from halves8_by_row */
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b += 2) {
        const int two = b + 1 < nb;
        const act_pair p = act_pair_at(a, b, two, 8);
        __m256i s[8], v[2];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const __m256i x = q4_pair_nibbles(type, wr[i], nb, b, two);
            _mm_prefetch((const char *)q4_block_at(type, wr[i], b, nb).qs + ahead, _MM_HINT_T0);
            const __m256i wl = _mm256_and_si256(x, m4), wh = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
            __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(wl, p.lo), _mm256_maddubs_epi16(wh, p.hi));
            if (!q41) s16 = _mm256_sub_epi16(s16, p.c);
            s[i] = _mm256_madd_epi16(s16, ones);
        }
        half_sums_by_row(s, &v[0], &v[1]);
        __m256 d[2], mn[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        if (q4_repacked(type)) { /* 16 bytes from block b's scale on stay inside the row (quants.h) */
            if (b % 8 == 0) {
                halves8_by_row(wr, 2 * (size_t)b, dsc);
                if (q41) halves8_by_row(wr, 2 * ((size_t)nb + b), msc);
                for (int i = 0; i < 8; i++) {
                    _mm_prefetch((const char *)wr[i] + 2 * (size_t)b + ahead, _MM_HINT_T0);
                    if (q41) _mm_prefetch((const char *)wr[i] + 2 * ((size_t)nb + b) + ahead, _MM_HINT_T0);
                }
            }
            for (int j = 0; j < 2; j++) {
                d[j] = _mm256_loadu_ps(dsc + 8 * (b % 8 + j));
                if (q41) mn[j] = _mm256_loadu_ps(msc + 8 * (b % 8 + j));
            }
        } else { /* Q4_1: d and m side by side; Q4_0: d and the first nibbles */
            pair_by_row(wr, bb * b, &d[0], &mn[0]);
            d[1] = d[0];
            if (two) pair_by_row(wr, bb * (b + 1), &d[1], &mn[1]);
        }
        for (int j = 0; j <= two; j++) {
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v[j]), _mm256_mul_ps(d[j], _mm256_broadcast_ss(&a[b + j].d)), acc);
            if (q41) acc = _mm256_fmadd_ps(mn[j], _mm256_broadcast_ss(&a[b + j].s), acc);
        }
    }
    _mm256_maskstore_ps(y + r, lanes_below(nr), acc);
}

/* Q8_0, 8 rows, a block per step: |w| x sign(a, w) as the tile multiplies them */
AVX2_INLINE void q8rows8(const void *w, size_t rb, const block_q8x *a, float *y, int r, int r1, int n) {
    const int nb = n / QK;
    const uint8_t *wr[8];
    const int nr = rows8(w, rb, r, r1, wr);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const __m256i av = _mm256_loadu_si256((const __m256i *)a[b].qs);
        __m256i s[8], v[2];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)((const block_q8_0 *)wr[i] + b)->qs);
            _mm_prefetch((const char *)((const block_q8_0 *)wr[i] + b) + ROWS8_AHEAD * rb, _MM_HINT_T0);
            s[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(av, x)), ones);
        }
        half_sums_by_row(s, &v[0], &v[1]);
        __m256 d, unused; /* d and the first two weights */
        pair_by_row(wr, sizeof(block_q8_0) * (size_t)b, &d, &unused);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(v[0], v[1])),
                              _mm256_mul_ps(d, _mm256_broadcast_ss(&a[b].d)), acc);
    }
    _mm256_maskstore_ps(y + r, lanes_below(nr), acc);
}

#define QROWS(NAME, TYPE)                                                                                  \
    AVX2 static void rows_##NAME(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) { \
        for (int r = r0; r < r1; r += 8) {                                                                 \
            if (TYPE == PL_TYPE_Q8_0) q8rows8(w, rb, (const block_q8x *)act, y, r, r1, n);                 \
            else                                                                                           \
                q4rows8(TYPE, w, rb, (const block_q8x *)act, y, r, r1, n);                                 \
        }                                                                                                  \
    }

QROWS(q8_0, PL_TYPE_Q8_0)
QROWS(q4_0, PL_TYPE_Q4_0)
QROWS(q4_1, PL_TYPE_Q4_1)
QROWS(q4_0r, PL_TYPE_Q4_0R)
QROWS(q4_1r, PL_TYPE_Q4_1R)

/* --------------------------------------------------- quantized weights: tile */

/*
 * A packed chunk of 8 rows: for each weight block, q[g] holds values 4g..4g+3
 * of rows 0..7 (4 bytes per row, row i in 32-bit lane i), then the 8 row scales
 * and the 8 offset factors (Q4_0: -8*d, Q4_1: m). Q8_0 also keeps the signs.
 */
typedef struct {
    __m256i q[8];
    __m256i sgn[8]; /* Q8_0 only: the signed weights, for sign(a, w) */
    __m256 d;
    __m256 o;
} pack8;

#define KCHUNK 16 /* weight blocks packed at a time: 8 rows x 16 blocks ~ 10 KB, stays in L1 */
#define PANEL 8
#define TOK 4 /* tokens per pass over a packed chunk */

AVX2_INLINE void pack_rows(int type, const void *w, size_t rb, int r, int b0, int nb, int nbr, pack8 *pk) {
    for (int b = 0; b < nb; b++) {
        __m256i v[8];
        float d[8], o[8];
        for (int i = 0; i < 8; i++) {
            const void *row = ROW(w, rb, r + i);
            if (type == PL_TYPE_Q8_0) {
                const block_q8_0 *wb = (const block_q8_0 *)row + b0 + b;
                v[i] = _mm256_loadu_si256((const __m256i *)wb->qs);
                d[i] = half(wb->d);
                o[i] = 0.0f;
            } else { /* Q4, either layout; nbr: blocks per row, which places a repacked row's parts */
                const q4_block k = q4_block_at(type, row, b0 + b, nbr);
                v[i] = q4_unpack(k.qs);
                d[i] = half(*k.d);
                o[i] = k.m ? half(*k.m) : 0.0f; /* Q4_0's -8 is applied in the integers */
            }
        }
        transpose8(v);
        for (int g = 0; g < 8; g++) {
            if (type == PL_TYPE_Q8_0) {
                pk[b].sgn[g] = v[g];
                pk[b].q[g] = _mm256_sign_epi8(v[g], v[g]);
            } else {
                pk[b].q[g] = v[g];
            }
        }
        pk[b].d = _mm256_loadu_ps(d);
        pk[b].o = _mm256_loadu_ps(o);
    }
}

/* 8 rows (lanes) x T tokens over nb packed blocks; adds into acc.
 * For Q4_0, sq8[t][b] = 8 * sum of activation block b of token t. */
AVX2_INLINE void qpanel(int type, int T, const pack8 *pk, int nb, const block_q8x *const *a,
                        const int32_t *const *sq8, __m256 *acc) {
    for (int b = 0; b < nb; b++) {
        const pack8 *p = pk + b;
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const block_q8x *ab = a[t] + b;
            __m256 f;
            if (type == PL_TYPE_Q8_0) {
                /* |w| * (+-a) pairs reach 2*128*127: widen each group to int32 */
                __m256i s32 = _mm256_setzero_si256();
#pragma GCC unroll 8
                for (int g = 0; g < 8; g++) {
                    __m256i s16 = _mm256_maddubs_epi16(p->q[g], _mm256_sign_epi8(bcast32(ab->qs + 4 * g), p->sgn[g]));
                    s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
                }
                f = _mm256_cvtepi32_ps(s32);
            } else {
                /* nibble * int8 pairs stay within 2*15*127; eight of them fit int16 */
                __m256i s16 = _mm256_maddubs_epi16(p->q[0], bcast32(ab->qs));
#pragma GCC unroll 8
                for (int g = 1; g < 8; g++)
                    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(p->q[g], bcast32(ab->qs + 4 * g)));
                __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
                if (type == PL_TYPE_Q4_0) s32 = _mm256_sub_epi32(s32, _mm256_set1_epi32(sq8[t][b]));
                f = _mm256_cvtepi32_ps(s32);
            }
            acc[t] = _mm256_fmadd_ps(f, _mm256_mul_ps(p->d, _mm256_broadcast_ss(&ab->d)), acc[t]);
            if (type == PL_TYPE_Q4_1) acc[t] = _mm256_fmadd_ps(p->o, _mm256_broadcast_ss(&ab->s), acc[t]);
        }
    }
}

AVX2_INLINE void qtile(int wtype, pl_rows_fn rows, const void *w, size_t rb, const void *act, size_t as,
                       float *y, size_t ys, int r0, int r1, int nt, int n) {
    const int nbt = n / QK;
    const int type = q4_base(wtype); /* the arithmetic; wtype says where pack_rows finds the blocks */
    int r = r0;
    int32_t *sq8 = NULL;
    if (nt >= 4 && r1 - r0 >= PANEL && type == PL_TYPE_Q4_0) {
        sq8 = malloc((size_t)nt * nbt * sizeof(int32_t));
        if (sq8) {
            for (int t = 0; t < nt; t++) {
                const block_q8x *ab = (const block_q8x *)((const char *)act + (size_t)t * as);
                for (int b = 0; b < nbt; b++) {
                    __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(8),
                                                       _mm256_loadu_si256((const __m256i *)ab[b].qs));
                    __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
                    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
                    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
                    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
                    sq8[(size_t)t * nbt + b] = _mm_cvtsi128_si32(s4);
                }
            }
        }
    }
    if (nt >= 4 && (type != PL_TYPE_Q4_0 || sq8)) {
        pack8 pk[KCHUNK];
        for (; r + PANEL <= r1; r += PANEL) {
            for (int b0 = 0; b0 < nbt; b0 += KCHUNK) {
                int nb = nbt - b0 < KCHUNK ? nbt - b0 : KCHUNK;
                pack_rows(wtype, w, rb, r, b0, nb, nbt, pk);
                for (int t = 0; t < nt; t += TOK) {
                    int T = nt - t >= TOK ? TOK : nt - t;
                    const block_q8x *a[TOK];
                    const int32_t *s8[TOK] = {NULL};
                    __m256 acc[TOK];
                    for (int j = 0; j < T; j++) {
                        a[j] = (const block_q8x *)((const char *)act + (size_t)(t + j) * as) + b0;
                        if (sq8) s8[j] = sq8 + (size_t)(t + j) * nbt + b0;
                        acc[j] = b0 ? _mm256_loadu_ps(y + (t + j) * ys + r) : _mm256_setzero_ps();
                    }
                    switch (T) {
                    case TOK: qpanel(type, TOK, pk, nb, a, s8, acc); break;
                    case 3: qpanel(type, 3, pk, nb, a, s8, acc); break;
                    case 2: qpanel(type, 2, pk, nb, a, s8, acc); break;
                    default: qpanel(type, 1, pk, nb, a, s8, acc); break;
                    }
                    for (int j = 0; j < T; j++) _mm256_storeu_ps(y + (t + j) * ys + r, acc[j]);
                }
            }
        }
    }
    free(sq8);
    if (r < r1)
        for (int t = 0; t < nt; t++) rows((const char *)w, rb, (const char *)act + (size_t)t * as, y + t * ys, r, r1, n);
}

#define QTILE(NAME, TYPE)                                                                            \
    AVX2 static void tile_##NAME(const void *w, size_t rb, const void *act, size_t as, float *y,      \
                                 size_t ys, int r0, int r1, int nt, int n) {                         \
        qtile(TYPE, rows_##NAME, w, rb, act, as, y, ys, r0, r1, nt, n);                              \
    }

QTILE(q8_0, PL_TYPE_Q8_0)
QTILE(q4_0, PL_TYPE_Q4_0)
QTILE(q4_1, PL_TYPE_Q4_1)
QTILE(q4_0r, PL_TYPE_Q4_0R)
QTILE(q4_1r, PL_TYPE_Q4_1R)

/* ---------------------------------------------------------------- attention */

/* e^x for 8 lanes: 2^(x log2 e) split into 2^n * 2^f, f in [-0.5, 0.5], degree-6
 * polynomial (about 2 ulp); x below -87.3 gives 0, so masked scores vanish. */
AVX2_INLINE __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.37626f);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
    __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, n); /* 2^f, f in [-0.5, 0.5] */
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 r = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    /* n = -127 (x near the floor) would make a bad exponent: flush to 0 */
    return _mm256_and_ps(r, _mm256_cmp_ps(n, _mm256_set1_ps(-126.5f), _CMP_GT_OQ));
}

/* g = silu(g) * u: the exp of 8 lanes at once (expf showed in prefill profiles) */
AVX2 static void silu_mul(float *g, const float *u, int n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* softmax(scale * a[0..n)) in place; returns nothing, a sums to 1. Shared with the
 * AVX-512 attention (kernels.h). */
AVX2 void pl_softmax_scaled_avx2(float *a, int n, float scale) {
    __m256 mx = _mm256_set1_ps(-INFINITY);
    int s = 0;
    for (; s + 8 <= n; s += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(a + s));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float m = _mm_cvtss_f32(m4);
    for (; s < n; s++) m = a[s] > m ? a[s] : m;
    const __m256 vs = _mm256_set1_ps(scale), vm = _mm256_set1_ps(m * scale);
    __m256 sum = _mm256_setzero_ps();
    for (s = 0; s + 8 <= n; s += 8) {
        __m256 e = exp8(_mm256_fmsub_ps(_mm256_loadu_ps(a + s), vs, vm));
        _mm256_storeu_ps(a + s, e);
        sum = _mm256_add_ps(sum, e);
    }
    float tail = 0.0f;
    if (s < n) { /* the last few through the same exp, on a padded vector */
        float buf[8];
        int k = 0;
        for (; k < n - s; k++) buf[k] = a[s + k];
        for (; k < 8; k++) buf[k] = -INFINITY;
        __m256 e = exp8(_mm256_fmsub_ps(_mm256_loadu_ps(buf), vs, vm));
        _mm256_storeu_ps(buf, e);
        for (k = 0; k < n - s; k++) {
            a[s + k] = buf[k];
            tail += buf[k];
        }
    }
    const float inv = 1.0f / (hsum8(sum) + tail);
    const __m256 vi = _mm256_set1_ps(inv);
    for (s = 0; s + 8 <= n; s += 8) _mm256_storeu_ps(a + s, _mm256_mul_ps(_mm256_loadu_ps(a + s), vi));
    for (; s < n; s++) a[s] *= inv;
}

/* out[j] = sum_s p[j][s] * V[s] for the J <= 3 heads whose probabilities start at p0,
 * 16 values per pass; v_type is a constant wherever this is inlined */
AVX2_INLINE void weighted_values(int v_type, const float *p0, const void *v, size_t v_stride, int n_pos, int hd,
                                 float *out, int J) {
    const size_t row_bytes = v_stride * (v_type == PL_TYPE_F16 ? 2 : 4);
    int c = 0;
    for (; c + 16 <= hd; c += 16) {
        __m256 acc[3][2];
        for (int j = 0; j < 3; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
        for (int s = 0; s < n_pos; s++) {
            const void *vr = (const char *)v + (size_t)s * row_bytes;
            if (s + 8 < n_pos) /* see key_scores */
                _mm_prefetch((const char *)vr + 8 * row_bytes + (size_t)c * (v_type == PL_TYPE_F16 ? 2 : 4), _MM_HINT_T0);
            __m256 v0 = load8(v_type, vr, c), v1 = load8(v_type, vr, c + 8);
#pragma GCC unroll 3
            for (int j = 0; j < J; j++) {
                __m256 pj = _mm256_broadcast_ss(p0 + (size_t)j * n_pos + s);
                acc[j][0] = _mm256_fmadd_ps(pj, v0, acc[j][0]);
                acc[j][1] = _mm256_fmadd_ps(pj, v1, acc[j][1]);
            }
        }
        for (int j = 0; j < J; j++) {
            _mm256_storeu_ps(out + (size_t)j * hd + c, acc[j][0]);
            _mm256_storeu_ps(out + (size_t)j * hd + c + 8, acc[j][1]);
        }
    }
    for (; c < hd; c++) /* head sizes that are not a multiple of 16 */
        for (int j = 0; j < J; j++) {
            float o = 0.0f;
            for (int s = 0; s < n_pos; s++) o += p0[(size_t)j * n_pos + s] * load1(v_type, (const char *)v + (size_t)s * row_bytes, c);
            out[(size_t)j * hd + c] = o;
        }
}

/* Unscaled scores of J <= 3 query heads (q0, hd floats apart) against the first
 * n_pos keys of one head's key blocks (kernels.h), into att rows n_pos apart: per
 * block, q[d] x 16 keys of dimension d for every d, even and odd d into separate
 * accumulators (12 independent multiply-add chains, 15 registers). The block two on
 * is asked for meanwhile: in decode the cache has been pushed out of every cache level
 * by the weights streamed since the last token, and these short per-head runs leave the
 * hardware prefetcher little time to ramp up. */
AVX2_INLINE void key_scores(int k_type, const float *q0, int hd, const void *k, int n_pos, float *att, int J) {
    const size_t row_bytes = (size_t)PL_KV_BLOCK * (k_type == PL_TYPE_F16 ? 2 : 4);
    for (int p0 = 0; p0 < n_pos; p0 += PL_KV_BLOCK) {
        const char *blk = (const char *)k + (size_t)(p0 / PL_KV_BLOCK) * hd * row_bytes;
        __m256 acc[2][3][2];
        for (int e = 0; e < 2; e++)
            for (int j = 0; j < 3; j++) acc[e][j][0] = acc[e][j][1] = _mm256_setzero_ps();
        const char *ahead = p0 + 2 * PL_KV_BLOCK < n_pos ? blk + 2 * (size_t)hd * row_bytes : NULL;
        int d = 0;
        for (; d + 2 <= hd; d += 2) {
            if (ahead) /* one line per two F16 rows; an F32 row is a line of its own */
                for (int e = 0; e < 2; e++)
                    if (((d + e) * row_bytes) % 64 == 0) _mm_prefetch(ahead + (size_t)(d + e) * row_bytes, _MM_HINT_T0);
#pragma GCC unroll 2
            for (int e = 0; e < 2; e++) {
                const void *row = blk + (size_t)(d + e) * row_bytes;
                const __m256 k0 = load8(k_type, row, 0), k1 = load8(k_type, row, 8);
#pragma GCC unroll 3
                for (int j = 0; j < J; j++) {
                    const __m256 qd = _mm256_broadcast_ss(q0 + (size_t)j * hd + d + e);
                    acc[e][j][0] = _mm256_fmadd_ps(k0, qd, acc[e][j][0]);
                    acc[e][j][1] = _mm256_fmadd_ps(k1, qd, acc[e][j][1]);
                }
            }
        }
        if (d < hd) { /* odd head size */
            const void *row = blk + (size_t)d * row_bytes;
            const __m256 k0 = load8(k_type, row, 0), k1 = load8(k_type, row, 8);
            for (int j = 0; j < J; j++) {
                const __m256 qd = _mm256_broadcast_ss(q0 + (size_t)j * hd + d);
                acc[0][j][0] = _mm256_fmadd_ps(k0, qd, acc[0][j][0]);
                acc[0][j][1] = _mm256_fmadd_ps(k1, qd, acc[0][j][1]);
            }
        }
        const int n = n_pos - p0 < PL_KV_BLOCK ? n_pos - p0 : PL_KV_BLOCK;
        for (int j = 0; j < J; j++) {
            float tmp[PL_KV_BLOCK];
            _mm256_storeu_ps(tmp, _mm256_add_ps(acc[0][j][0], acc[1][j][0]));
            _mm256_storeu_ps(tmp + 8, _mm256_add_ps(acc[0][j][1], acc[1][j][1]));
            memcpy(att + (size_t)j * n_pos + p0, tmp, (size_t)n * sizeof(float)); /* past n_pos: stale keys */
        }
    }
}

/* Scores from the transposed key blocks 3 heads x 16 positions per pass, then the
 * weighted sum of value rows 3 heads x 16 values per pass. */
DEFINE_X86_ATTEND(pl_attend_avx2, AVX2)

/* F16C's conversion rounds to nearest even, as f32_to_fp16 does */
AVX2 static void to_f16(const float *x, pl_fp16 *y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = f32_to_fp16(x[i]);
}

/* the K-quant entries: kquants_avx2.c; the regrouped Q4_K/Q6_K (kquants_repack.c) */
#define KQR_ROWS_AVX2 [PL_TYPE_Q4_KR] = pl_kqr_rows_q4_kr_avx2, [PL_TYPE_Q6_KR] = pl_kqr_rows_q6_kr_avx2,
#define KQR_TILE_AVX2 [PL_TYPE_Q4_KR] = pl_kqr_tile_q4_kr_avx2, [PL_TYPE_Q6_KR] = pl_kqr_tile_q6_kr_avx2,
/* the Q8_0 and Q4 rows take the tile's arithmetic (see above): they are their own invariant form */
#define ROWS_INV_AVX2                                                                                        \
    [PL_TYPE_Q8_0] = rows_q8_0, [PL_TYPE_Q4_0] = rows_q4_0, [PL_TYPE_Q4_1] = rows_q4_1,                      \
    [PL_TYPE_Q4_0R] = rows_q4_0r, [PL_TYPE_Q4_1R] = rows_q4_1r
const pl_kernel_set pl_kernels_avx2 = PL_SIMD_KERNEL_SET("avx2", pl_attend_avx2, PL_KQ_TYPES(PL_KQ_ROWS_AVX2) KQR_ROWS_AVX2,
                                                         PL_KQ_TYPES(PL_KQ_TILE_AVX2) KQR_TILE_AVX2, ROWS_INV_AVX2);

#endif
