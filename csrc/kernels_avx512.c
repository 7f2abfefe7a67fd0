/*
 * kernels_avx512.c - kernels for x86-64 CPUs with AVX-512 (F, BW, VL, VNNI).
 *
 * The AVX-512 set is the AVX2 set with the tile() kernels, attention and the Q4
 * rows() kernels replaced (and the other quantized types' from kquants_avx512.c).
 * Prefill is bound by arithmetic, and on cores with full-width 512-bit units (AMD
 * Zen 5, Intel server cores) these tiles do twice the work per instruction of the
 * AVX2 ones; decode is bound by memory, and its Q4 rows (below) are about reading
 * the blocks with few loads.
 *
 *  - Float weights: from 16 tokens on, 32-row panels transposed into a buffer and
 *    multiplied by broadcast activations (no horizontal sums); for fewer tokens a
 *    4 rows x 4 tokens register tile, 16 values per step, over rows widened to float
 *    in an aligned buffer; row tails are masked loads.
 *  - Quantized weights: 16 rows are repacked so that each 32-bit lane holds 4
 *    values of one row; one VNNI vpdpbusd then multiplies 16 rows by the same 4
 *    activation bytes and adds the products into 16 int32 lanes, with no widening
 *    steps and no horizontal sums. vpdpbusd wants unsigned weights: Q4 nibbles are
 *    (0..15, Q4_0's "- 8" comes off as 8 x the activation block's sum); Q8_0 is
 *    shifted by +128 and 128 x the sum comes off. The integer sums are exact, so
 *    results differ from the scalar reference only in float rounding order.
 *  - The same types regrouped at load into 16-row panels (Q4_0P, Q4_1P, Q8_0P, quants.h)
 *    come in that lane order already: per block a few loads and an AND / shift, shared by
 *    up to 8 tokens, so a decode step of a few sequences costs little more than one; one
 *    token, a few and a prompt's batch take the same per-block steps (batch invariant).
 *
 * Like kernels_avx2.c, everything carries a target attribute and dispatch.c uses
 * this set only after cpuid reports the features.
 */
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kquants_x86.h"
#include "pyllama.h"
#include "simd_avx512.h"
#include "simd_x86.h"


/* ------------------------------------------------------------ float weights */

/* 16 weights of a float type as floats; lanes outside mask read nothing and are 0 */
AVX512_INLINE __m512 load16(int type, const void *w, int k, __mmask16 m) {
    if (type == PL_TYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + k);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + k);
    if (type == PL_TYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); /* BF16 */
}

/* R rows x T tokens (both <= 4), one accumulator each; n any length */
AVX512_INLINE void ftile(int type, int R, int T, const void *w, size_t rb, const float *x, size_t xs, float *y,
                         size_t ys, int r, int n) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
    for (int k = 0; k < n; k += 16) {
        const __mmask16 m = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1);
        __m512 xv[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xv[t] = _mm512_maskz_loadu_ps(m, x + t * xs + k);
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) {
            __m512 wv = load16(type, ROW(w, rb, r + i), k, m);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[i][t] = _mm512_fmadd_ps(wv, xv[t], acc[i][t]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) y[t * ys + r + i] = _mm512_reduce_add_ps(acc[i][t]);
}

/* Rows [r, r+R) for every token; T = 4 tokens per pass, then the rest one by one. */
AVX512_INLINE void ftile_rows(int type, int R, const void *w, size_t rb, const float *x, size_t xs, float *y,
                              size_t ys, int r, int nt, int n) {
    int t = 0;
    for (; t + 4 <= nt; t += 4) ftile(type, R, 4, w, rb, x + t * xs, xs, y + t * ys, ys, r, n);
    for (; t < nt; t++) ftile(type, R, 1, w, rb, x + t * xs, xs, y + t * ys, ys, r, n);
}

/*
 * Float weights for a batch of 16 tokens or more: packed panels. The 4x4 tile above
 * ends each of its 16 outputs with a horizontal sum, whose shuffles and adds take the
 * two ports that also run the FMAs (about one for every few FMAs at the models' widths),
 * which kept it under half of the core's FMA peak.
 * Here 32 rows x FKC values are transposed once into a buffer (value k of the 32 rows
 * in two registers' worth, p[k][0..31]), and each pass over it multiplies them by one
 * broadcast activation per token: 24 accumulators (2 x 16 rows, 12 tokens), each lane
 * one output, so the results are stored as they are. The buffer (16 KB) and a 12-token
 * slice of the activations (6 KB) stay in L1 while every token of the batch uses them.
 * Each output is summed over k in order; the transposition costs 64 shuffles per 256
 * values, once per batch; the pass over a packed chunk alone runs close to the FMA peak.
 */
#define FKC 128 /* values of each row packed at a time */
#define FTOK 12 /* tokens per pass over a packed chunk */

/* 16 x 16 floats: v[i] = row i in, v[j] = column j out */
AVX512_INLINE void transpose16(__m512 v[16]) {
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) { /* 64-bit pairs */
        v[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        v[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        v[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        v[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 16; i += 8) /* 128-bit lanes */
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            t[i + j] = _mm512_shuffle_f32x4(v[i + j], v[i + j + 4], 0x88);
            t[i + j + 4] = _mm512_shuffle_f32x4(v[i + j], v[i + j + 4], 0xdd);
        }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) { /* 128-bit lanes again: column i, and column i + 8 */
        v[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        v[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
}

/* Rows r..r+nr-1 (nr <= 32; missing rows repeat the last), values k0..k0+kc-1 (kc % 16 == 0),
 * as p[k][32]. */
AVX512_INLINE void fpack32(int type, const void *w, size_t rb, int r, int nr, int k0, int kc, float *p) {
    for (int h = 0; h < 2; h++)
        for (int kb = 0; kb < kc; kb += 16) {
            __m512 v[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                const int row = h * 16 + i < nr ? h * 16 + i : nr - 1;
                v[i] = load16(type, ROW(w, rb, r + row), k0 + kb, 0xffff);
            }
            transpose16(v);
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++) _mm512_store_ps(p + (size_t)(kb + j) * 32 + h * 16, v[j]);
        }
}

/* Both panels (32 rows) x T tokens over kc packed values (simd_x86.h); a missing panel is
 * computed from repeated rows and not stored */
#define SET1_16(p) _mm512_set1_ps(*(p))
DEFINE_FPANEL(fpanel, AVX512_INLINE, __m512, 16, __mmask16, FTOK, _mm512_setzero_ps, _mm512_maskz_loadu_ps,
              _mm512_load_ps, SET1_16, _mm512_fmadd_ps, _mm512_mask_storeu_ps)

/* Every token over one packed chunk: FTOK at a time, the rest 8, 4 and 1 at a time (T is a
 * constant in each call, for the unrolling; four forms keep the code, and clang's
 * sanitizer builds of it, small). */
AVX512_INLINE void fpanel_tokens(const float *p, int kc, const float *x, size_t xs, float *y, size_t ys, int nt,
                                 int first, const __mmask16 m[2]) {
    int t = 0;
    for (; t + FTOK <= nt; t += FTOK) fpanel(FTOK, p, kc, x + t * xs, xs, y + t * ys, ys, first, m);
    if (t + 8 <= nt) fpanel(8, p, kc, x + t * xs, xs, y + t * ys, ys, first, m), t += 8;
    if (t + 4 <= nt) fpanel(4, p, kc, x + t * xs, xs, y + t * ys, ys, first, m), t += 4;
    for (; t < nt; t++) fpanel(1, p, kc, x + t * xs, xs, y + t * ys, ys, first, m);
}

AVX512 static void fpanel_rows(int type, const void *w, size_t rb, const float *x, size_t xs, float *y, size_t ys,
                               int r0, int r1, int nt, int n) {
    float p[FKC * 32] __attribute__((aligned(64)));
    for (int r = r0; r < r1; r += 32) {
        const int nr = r1 - r < 32 ? r1 - r : 32;
        const __mmask16 m[2] = {(__mmask16)(nr >= 16 ? 0xffff : (1u << nr) - 1),
                                (__mmask16)(nr >= 32 ? 0xffff : nr > 16 ? (1u << (nr - 16)) - 1 : 0)};
        for (int k0 = 0; k0 < n; k0 += FKC) {
            const int kc = n - k0 < FKC ? n - k0 : FKC;
            fpack32(type, w, rb, r, nr, k0, kc, p);
            prefetch_next_chunk(type, w, rb, r, r1, k0, n, 32, FKC);
            fpanel_tokens(p, kc, x + k0, xs, y + r, ys, nt, k0 == 0, m);
        }
    }
}

#define WIDEN_MAX 4096 /* longest row widened on the stack (4 rows: 64 KB) */

/*
 * Weights are widened to float (F16, BF16) or copied (F32) once per 4 rows into an
 * aligned buffer that every token then uses: converting in the inner loop (once per
 * 4 tokens) made the conversions the limit, and F32 rows straight from the file
 * (32-byte aligned) split loads across cache lines.
 */
#define FLOAT_TILE(NAME, TYPE)                                                                           \
    AVX512 static void tile_##NAME(const void *w, size_t rb, const void *act, size_t as, float *y,        \
                                   size_t ys, int r0, int r1, int nt, int n) {                           \
        const float *x = (const float *)act;                                                             \
        const size_t xs = as / sizeof(float);                                                            \
        if (nt >= 16 && n % 16 == 0) { /* from 16 tokens on the panels are faster (at 12 about even) */   \
            fpanel_rows(TYPE, w, rb, x, xs, y, ys, r0, r1, nt, n);                                       \
            return;                                                                                      \
        }                                                                                                \
        int r = r0;                                                                                      \
        if (nt >= 8 && n <= WIDEN_MAX) {                                                                  \
            float wide[4 * WIDEN_MAX] __attribute__((aligned(64)));                                       \
            for (; r + 4 <= r1; r += 4) {                                                                \
                for (int i = 0; i < 4; i++)                                                              \
                    for (int k = 0; k < n; k += 16) {                                                    \
                        const __mmask16 m = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1); \
                        _mm512_mask_storeu_ps(wide + (size_t)i * n + k, m, load16(TYPE, ROW(w, rb, r + i), k, m)); \
                    }                                                                                    \
                ftile_rows(PL_TYPE_F32, 4, wide, (size_t)n * sizeof(float), x, xs, y + r, ys, 0, nt, n);      \
            }                                                                                            \
        }                                                                                                \
        for (; r + 4 <= r1; r += 4) ftile_rows(TYPE, 4, w, rb, x, xs, y, ys, r, nt, n);                  \
        for (; r < r1; r++) ftile_rows(TYPE, 1, w, rb, x, xs, y, ys, r, nt, n);                          \
    }

FLOAT_TILE(f32, PL_TYPE_F32)
FLOAT_TILE(f16, PL_TYPE_F16)
FLOAT_TILE(bf16, PL_TYPE_BF16)

/* ------------------------------------------------------ quantized weights */

#define PANEL 16  /* rows per packed panel: one per 32-bit lane of a zmm register */
#define KCHUNK 16 /* blocks packed at a time: 16 x 640 bytes stays in L1 */
#define TOK 8     /* tokens per pass over a packed chunk: 8 independent vpdpbusd chains */

typedef struct {
    __m512i q[8]; /* q[g] lane i: values 4g..4g+3 of row i, as unsigned bytes */
    __m512 d, o;  /* per row: scale, and Q4_1's minimum (else 0) */
} pack16;

/* 32 values of one weight block as unsigned bytes (block order), with its scale and minimum */
AVX512_INLINE __m256i block_u8(int type, const void *row, int b, int nbr, float *d, float *o) {
    if (type == PL_TYPE_Q8_0) {
        const block_q8_0 *wb = (const block_q8_0 *)row + b;
        *d = _cvtsh_ss(wb->d);
        *o = 0.0f;
        return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)wb->qs), _mm256_set1_epi8((char)0x80));
    }
    const q4_block k = q4_block_at(type, row, b, nbr); /* nbr: blocks per row, which places a repacked row's parts */
    *d = _cvtsh_ss(*k.d);
    *o = k.m ? _cvtsh_ss(*k.m) : 0.0f; /* Q4_0's -8 comes off in the integers */
    return q4_unpack(k.qs);
}

/* The fp16 at byte `at` of each of 16 rows (row i at base + off[i]) as floats. Gathered
 * 4 bytes a row: the 2 after the value are the block's (or row's) next field, never past
 * the row. (16 scalar conversions stored to memory and reloaded as one vector stalled on
 * store forwarding, once per packed block.) */
AVX512_INLINE __m512 fp16_by_row(__m512i off, const void *at) {
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(off, at, 1)));
}

/* Pack blocks b0..b0+nb of rows r..r+nr-1 (nr <= 16; the missing lanes repeat the last row). */
AVX512_INLINE void pack_rows(int type, const void *w, size_t rb, int r, int nr, int b0, int nb, int nbr,
                              pack16 *pk) {
    const void *row0 = ROW(w, rb, r);
    int32_t offs[16];
    for (int i = 0; i < 16; i++) offs[i] = (int32_t)((size_t)(i < nr ? i : nr - 1) * rb);
    const __m512i off = _mm512_loadu_si512(offs);
    for (int b = 0; b < nb; b++) {
        __m256i lo[8], hi[8];
        float unused_d, unused_o;
        for (int i = 0; i < 16; i++) {
            const void *row = ROW(w, rb, r + (i < nr ? i : nr - 1));
            __m256i v = block_u8(type, row, b0 + b, nbr, &unused_d, &unused_o);
            if (i < 8) lo[i] = v;
            else hi[i - 8] = v;
        }
        transpose8(lo);
        transpose8(hi);
        for (int g = 0; g < 8; g++) pk[b].q[g] = _mm512_inserti64x4(_mm512_castsi256_si512(lo[g]), hi[g], 1);
        if (type == PL_TYPE_Q8_0) {
            pk[b].d = fp16_by_row(off, &((const block_q8_0 *)row0)[b0 + b].d);
            pk[b].o = _mm512_setzero_ps();
        } else {
            const q4_block k = q4_block_at(type, row0, b0 + b, nbr);
            pk[b].d = fp16_by_row(off, k.d);
            pk[b].o = k.m ? fp16_by_row(off, k.m) : _mm512_setzero_ps();
        }
    }
}

/* 16 rows (lanes) x T tokens over packed block b (qpanel: over nb packed blocks), added into acc.
 * off[t][b] = the integer to take off block b of token t (zero point x activation sum). */
AVX512_INLINE void qblock(int type, int T, const pack16 *p, int b, const block_q8x *const *a,
                          const int32_t *const *off, __m512 *acc) {
    /* one or two tokens: two integer chains each (even and odd g), or the vpdpbusd latency
     * holds up the next block; the sums are exact, so the split changes no result */
    const int C = T <= 2 ? 2 : 1;
    __m512i s[2][TOK];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) s[0][t] = s[1][t] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int g = 0; g < 8; g++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            int32_t av;
            memcpy(&av, a[t][b].qs + 4 * g, 4);
            s[g % C][t] = _mm512_dpbusd_epi32(s[g % C][t], p->q[g], _mm512_set1_epi32(av));
        }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        const block_q8x *ab = a[t] + b;
        __m512i si = C == 2 ? _mm512_add_epi32(s[0][t], s[1][t]) : s[0][t];
        if (type != PL_TYPE_Q4_1) si = _mm512_sub_epi32(si, _mm512_set1_epi32(off[t][b]));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(p->d, _mm512_set1_ps(ab->d)), acc[t]);
        if (type == PL_TYPE_Q4_1) acc[t] = _mm512_fmadd_ps(p->o, _mm512_set1_ps(ab->s), acc[t]);
    }
}

AVX512_INLINE void qpanel(int type, int T, const pack16 *pk, int nb, const block_q8x *const *a,
                          const int32_t *const *off, __m512 *acc) {
    for (int b = 0; b < nb; b++) qblock(type, T, pk + b, b, a, off, acc);
}

/* zero point x sum of each activation block: what the unsigned weights add on top of the true product */
AVX512_INLINE void block_offsets(int type, const void *act, size_t as, int nt, int nbt, int32_t *off) {
    const int zero = type == PL_TYPE_Q8_0 ? 128 : 8;
    for (int t = 0; t < nt; t++) {
        const block_q8x *ab = (const block_q8x *)((const char *)act + (size_t)t * as);
        for (int b = 0; b < nbt; b++) {
            __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)ab[b].qs));
            __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
            off[(size_t)t * nbt + b] = zero * _mm_cvtsi128_si32(s4);
        }
    }
}

/* Tokens t..t+T-1 of a call, from block b0 on: their activation blocks, zero-point offsets (if
 * any) and accumulators for the 16 rows at r (masked by m): zero at the first block, else what
 * the previous chunk stored. */
AVX512_INLINE void token_group(const void *act, size_t as, const int32_t *off, int nbt, int b0, int t, int T,
                               const float *y, size_t ys, int r, __mmask16 m, const block_q8x **a,
                               const int32_t **o, __m512 *acc) {
    for (int j = 0; j < T; j++) {
        a[j] = (const block_q8x *)((const char *)act + (size_t)(t + j) * as) + b0;
        o[j] = off ? off + (size_t)(t + j) * nbt + b0 : NULL;
        acc[j] = b0 ? _mm512_maskz_loadu_ps(m, y + (t + j) * ys + r) : _mm512_setzero_ps();
    }
}

/* The largest of 8, 4, 2, 1 tokens that the nt - t left fill */
AVX512_INLINE int tokens_per_pass(int nt, int t) {
    return nt - t >= 8 ? 8 : nt - t >= 4 ? 4 : nt - t >= 2 ? 2 : 1;
}

/* qpanel with T (8, 4, 2 or 1) a constant in each copy */
AVX512_INLINE void qpanel_n(int type, int T, const pack16 *pk, int nb, const block_q8x *const *a,
                            const int32_t *const *o, __m512 *acc) {
    switch (T) {
    case 8: qpanel(type, 8, pk, nb, a, o, acc); break;
    case 4: qpanel(type, 4, pk, nb, a, o, acc); break;
    case 2: qpanel(type, 2, pk, nb, a, o, acc); break;
    default: qpanel(type, 1, pk, nb, a, o, acc); break;
    }
}

#define OFFSETS_ON_STACK (TOK * 64) /* most calls: a few tokens of a model-width row */

/* block_offsets of nt tokens where the type has a zero point (NULL for Q4_1): in `small` when
 * they fit, else on the heap; *ok = 0 when that allocation fails. */
AVX512_INLINE int32_t *token_offsets(int type, const void *act, size_t as, int nt, int nbt,
                                     int32_t small[OFFSETS_ON_STACK], int *ok) {
    *ok = 1;
    if (type == PL_TYPE_Q4_1) return NULL;
    const size_t need = (size_t)nt * nbt;
    int32_t *off = need <= OFFSETS_ON_STACK ? small : malloc(need * sizeof(int32_t));
    if (!off) {
        *ok = 0;
        return NULL;
    }
    block_offsets(type, act, as, nt, nbt, off);
    return off;
}

AVX512_INLINE void qtile(int wtype, const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys,
                         int r0, int r1, int nt, int n) {
    const int nbt = n / QK;
    const int type = q4_base(wtype); /* the arithmetic; wtype says where pack_rows finds the blocks */
    int32_t off_small[OFFSETS_ON_STACK];
    int ok;
    int32_t *off = token_offsets(type, act, as, nt, nbt, off_small, &ok);
    if (!ok) { /* out of memory: the AVX2 tile needs no buffer of this size */
        pl_kernels_avx2.tile[wtype](w, rb, act, as, y, ys, r0, r1, nt, n);
        return;
    }
    pack16 pk[KCHUNK];
    for (int r = r0; r < r1; r += PANEL) {
        const int nr = r1 - r < PANEL ? r1 - r : PANEL;
        const __mmask16 m = nr == PANEL ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
        for (int b0 = 0; b0 < nbt; b0 += KCHUNK) {
            const int nb = nbt - b0 < KCHUNK ? nbt - b0 : KCHUNK;
            pack_rows(wtype, w, rb, r, nr, b0, nb, nbt, pk);
            for (int t = 0; t < nt;) {
                const int T = tokens_per_pass(nt, t);
                const block_q8x *a[TOK];
                const int32_t *o[TOK];
                __m512 acc[TOK];
                token_group(act, as, off, nbt, b0, t, T, y, ys, r, m, a, o, acc);
                qpanel_n(type, T, pk, nb, a, o, acc);
                for (int j = 0; j < T; j++) _mm512_mask_storeu_ps(y + (t + j) * ys + r, m, acc[j]);
                t += T;
            }
        }
    }
    if (off != off_small) free(off);
}

#define QTILE(NAME, TYPE)                                                                              \
    AVX512 static void tile_##NAME(const void *w, size_t rb, const void *act, size_t as, float *y,      \
                                   size_t ys, int r0, int r1, int nt, int n) {                         \
        qtile(TYPE, w, rb, act, as, y, ys, r0, r1, nt, n);                                              \
    }

QTILE(q8_0, PL_TYPE_Q8_0)
QTILE(q4_0, PL_TYPE_Q4_0)
QTILE(q4_1, PL_TYPE_Q4_1)
QTILE(q4_0r, PL_TYPE_Q4_0R)
QTILE(q4_1r, PL_TYPE_Q4_1R)

/* ------------------------------------------ 16-row panels (Q4_0P, Q4_1P, Q8_0P) */

/*
 * The panel layouts (quants.h) hold a block of 16 rows the way the tile packs it: per block a
 * few 64-byte loads and an AND / shift give pack16's q[g] (Q8_0P: an XOR), one fp16 load its
 * 16 scales, and each (row, token) then takes qblock's steps, the tile's: so one token, a few
 * and a prompt's batch all get the same result, and a few tokens cost little more than one.
 * A thread's rows need not start or end on a panel: the lanes outside are not stored.
 */
AVX512_INLINE size_t panel_block_bytes(int ptype) {
    return ptype == PL_TYPE_Q8_0P ? sizeof(block_q8_0p) : ptype == PL_TYPE_Q4_1P ? sizeof(block_q4_1p)
                                                                                 : sizeof(block_q4_0p);
}

AVX512_INLINE void panel_unpack(int ptype, const uint8_t *pb, pack16 *p) {
    p->d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)pb));
    p->o = _mm512_setzero_ps();
    if (ptype == PL_TYPE_Q8_0P) {
        const __m512i flip = _mm512_set1_epi8((char)0x80); /* unsigned, as the tile packs Q8_0 */
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++)
            p->q[g] = _mm512_xor_si512(_mm512_loadu_si512(pb + offsetof(block_q8_0p, qs) + 64 * g), flip);
        return;
    }
    const int q41 = ptype == PL_TYPE_Q4_1P;
    const uint8_t *qs = pb + (q41 ? offsetof(block_q4_1p, qs) : offsetof(block_q4_0p, qs));
    if (q41) p->o = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + offsetof(block_q4_1p, m))));
    const __m512i m4 = _mm512_set1_epi8(0x0f);
#pragma GCC unroll 4
    for (int h = 0; h < 4; h++) { /* low nibbles: values 4h.., high: 16 + 4h.. */
        const __m512i x = _mm512_loadu_si512(qs + 64 * h);
        p->q[h] = _mm512_and_si512(x, m4);
        p->q[h + 4] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
    }
}

#define PANEL_AHEAD_BYTES 2048 /* the panels stream from memory: their lines are asked for this far ahead */

AVX512_INLINE void panel_prefetch(const uint8_t *pb, size_t pbb) {
    for (size_t o = 0; o < pbb; o += 64) _mm_prefetch((const char *)pb + PANEL_AHEAD_BYTES + o, _MM_HINT_T0);
}

/* One panel x T tokens over all nb blocks, unpacked in registers as they come */
AVX512_INLINE void ppanel(int ptype, int T, const uint8_t *panel, int nb, const block_q8x *const *a,
                          const int32_t *const *off, __m512 *acc) {
    const size_t pbb = panel_block_bytes(ptype);
    for (int b = 0; b < nb; b++) {
        const uint8_t *pb = panel + pbb * (size_t)b;
        panel_prefetch(pb, pbb);
        pack16 p;
        panel_unpack(ptype, pb, &p);
        qblock(q4_base(ptype), T, &p, b, a, off, acc);
    }
}

/* lanes of the panel at row pr that fall in [r0, r1) */
AVX512_INLINE __mmask16 panel_lanes(int pr, int r0, int r1) {
    const int lo = r0 > pr ? r0 - pr : 0, hi = r1 < pr + PANEL_ROWS ? r1 - pr : PANEL_ROWS;
    return (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
}

/* One token (decode): two panels side by side, so two streams come from memory at once and
 * two chains of float steps interleave; each (row, token) still takes qblock's steps. */
AVX512_INLINE void ppanels_one(int ptype, const void *w, size_t rb, const block_q8x *a, const int32_t *off, float *y,
                               int r0, int r1, int nb) {
    const size_t pbb = panel_block_bytes(ptype);
    for (int pr = r0 / PANEL_ROWS * PANEL_ROWS; pr < r1; pr += 2 * PANEL_ROWS) {
        const int two = pr + PANEL_ROWS < r1; /* else the second is the first again, not stored */
        const uint8_t *p0 = (const uint8_t *)ROW(w, rb, pr), *p1 = two ? (const uint8_t *)ROW(w, rb, pr + PANEL_ROWS) : p0;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const uint8_t *b0 = p0 + pbb * (size_t)b, *b1 = p1 + pbb * (size_t)b;
            panel_prefetch(b0, pbb);
            panel_prefetch(b1, pbb);
            pack16 x0, x1;
            panel_unpack(ptype, b0, &x0);
            panel_unpack(ptype, b1, &x1);
            qblock(q4_base(ptype), 1, &x0, b, &a, &off, &acc0);
            qblock(q4_base(ptype), 1, &x1, b, &a, &off, &acc1);
        }
        _mm512_mask_storeu_ps(y + pr, panel_lanes(pr, r0, r1), acc0);
        if (two) _mm512_mask_storeu_ps(y + pr + PANEL_ROWS, panel_lanes(pr + PANEL_ROWS, r0, r1), acc1);
    }
}

/* rows [r0, r1) x nt tokens, panel by panel */
AVX512_INLINE void ptokens(int ptype, const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys,
                           int r0, int r1, int nt, int nbt, const int32_t *off) {
    const int type = q4_base(ptype);
    const size_t pbb = panel_block_bytes(ptype);
    pack16 pk[KCHUNK];
    for (int pr = r0 / PANEL_ROWS * PANEL_ROWS; pr < r1; pr += PANEL_ROWS) {
        const __mmask16 m = panel_lanes(pr, r0, r1);
        const uint8_t *panel = (const uint8_t *)ROW(w, rb, pr);
        /* a few tokens: the panel straight from memory for each; more: each chunk unpacked once into
         * pk (L1) for all of them */
        const int chunk = nt <= TOK ? nbt : KCHUNK;
        for (int b0 = 0; b0 < nbt; b0 += chunk) {
            const int nb = nbt - b0 < chunk ? nbt - b0 : chunk;
            if (nt > TOK)
                for (int b = 0; b < nb; b++) panel_unpack(ptype, panel + pbb * (size_t)(b0 + b), pk + b);
            for (int t = 0; t < nt;) {
                const int T = nt <= TOK ? nt : tokens_per_pass(nt, t);
                const block_q8x *a[TOK];
                const int32_t *o[TOK];
                __m512 acc[TOK];
                token_group(act, as, off, nbt, b0, t, T, y, ys, pr, m, a, o, acc);
                if (nt > TOK) {
                    qpanel_n(type, T, pk, nb, a, o, acc);
                } else {
                    const uint8_t *p0 = panel + pbb * (size_t)b0;
                    switch (T) { /* every count its own loop: one pass over the panel */
                    case 8: ppanel(ptype, 8, p0, nb, a, o, acc); break;
                    case 7: ppanel(ptype, 7, p0, nb, a, o, acc); break;
                    case 6: ppanel(ptype, 6, p0, nb, a, o, acc); break;
                    case 5: ppanel(ptype, 5, p0, nb, a, o, acc); break;
                    case 4: ppanel(ptype, 4, p0, nb, a, o, acc); break;
                    case 3: ppanel(ptype, 3, p0, nb, a, o, acc); break;
                    case 2: ppanel(ptype, 2, p0, nb, a, o, acc); break;
                    default: ppanel(ptype, 1, p0, nb, a, o, acc); break;
                    }
                }
                for (int j = 0; j < T; j++) _mm512_mask_storeu_ps(y + (t + j) * ys + pr, m, acc[j]);
                t += T;
            }
        }
    }
}

AVX512_INLINE void ptile(int ptype, const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys,
                         int r0, int r1, int nt, int n) {
    const int nbt = n / QK, type = q4_base(ptype);
    int32_t off_small[OFFSETS_ON_STACK];
    int ok;
    int32_t *off = token_offsets(type, act, as, nt, nbt, off_small, &ok);
    if (!ok) { /* out of memory: the scalar rows need no buffer */
        for (int t = 0; t < nt; t++)
            pl_kernels_scalar.rows[ptype](w, rb, (const char *)act + (size_t)t * as, y + (size_t)t * ys, r0, r1, n);
        return;
    }
    if (nt == 1) {
        ppanels_one(ptype, w, rb, (const block_q8x *)act, off, y, r0, r1, nbt);
    } else {
        ptokens(ptype, w, rb, act, as, y, ys, r0, r1, nt, nbt, off);
    }
    if (off != off_small) free(off);
}

#define PTILE(NAME, TYPE)                                                                                 \
    AVX512 static void tile_##NAME(const void *w, size_t rb, const void *act, size_t as, float *y,         \
                                   size_t ys, int r0, int r1, int nt, int n) {                            \
        ptile(TYPE, w, rb, act, as, y, ys, r0, r1, nt, n);                                                 \
    }                                                                                                     \
    AVX512 static void rows_##NAME(const void *w, size_t rb, const void *act, float *y, int r0, int r1,    \
                                   int n) {                                                               \
        ptile(TYPE, w, rb, act, 0, y, 0, r0, r1, 1, n);                                                    \
    }

PTILE(q4_0p, PL_TYPE_Q4_0P)
PTILE(q4_1p, PL_TYPE_Q4_1P)
PTILE(q8_0p, PL_TYPE_Q8_0P)

/* ------------------------------------------------------- Q4 rows (decode) */

/*
 * Four GGUF blocks per step, one row at a time. The activation is rearranged once
 * per call into groups of 4 blocks: lo holds the first 16 bytes of each block (they
 * meet the low nibbles), hi the last 16 (the high nibbles), block b in 128-bit lane
 * b; so per 4 blocks: four 16-byte weight loads, two vpdpbusd straight into int32
 * lanes, one convert and one multiply-add, against the AVX2 kernel's 2 maddubs + madd
 * per 2 blocks. Lanes 4b..4b+3 belong to block b. A last, partial group loads only
 * the blocks it has (no byte past the row is touched); the other lanes stay zero.
 */
typedef struct {
    __m512i lo, hi;
    __m512i c;  /* Q4_0: 8 x the activation bytes each int32 lane multiplies (the "- 8") */
    __m512 da;  /* activation scale of each lane's block */
    __m128 s;   /* Q4_1: d * sum(q) of the 4 blocks */
} q4quad;

AVX512_INLINE void q4quad_prep(const block_q8x *a, int nb, q4quad *p) {
    for (int g = 0; g * 4 < nb; g++) {
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
        float da[16] = {0}, s4[4] = {0};
        for (int b = 0; b < 4 && 4 * g + b < nb; b++) {
            const block_q8x *ab = a + 4 * g + b;
            lo = _mm512_inserti32x4(lo, _mm_loadu_si128((const __m128i *)ab->qs), 0);
            lo = _mm512_alignr_epi32(lo, lo, 4); /* rotate so block b ends in lane b */
            hi = _mm512_inserti32x4(hi, _mm_loadu_si128((const __m128i *)(ab->qs + 16)), 0);
            hi = _mm512_alignr_epi32(hi, hi, 4);
            for (int i = 0; i < 4; i++) da[4 * b + i] = ab->d;
            s4[b] = ab->s;
        }
        for (int b = nb - 4 * g; b < 4; b++) { /* keep rotating: 4 steps in all */
            lo = _mm512_alignr_epi32(lo, lo, 4);
            hi = _mm512_alignr_epi32(hi, hi, 4);
        }
        p[g].lo = lo;
        p[g].hi = hi;
        p[g].c = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), lo),
                                     _mm512_set1_epi8(8), hi);
        p[g].da = _mm512_loadu_ps(da);
        p[g].s = _mm_loadu_ps(s4);
    }
}

/* The activation as quads (q4quad_prep): in buf when its cap quads are enough, else on
 * the heap (free it when it is not buf); NULL when out of memory. */
#define QUADS_ON_STACK 64 /* rows up to 8192 values */

AVX512_INLINE q4quad *q4quad_acts(const block_q8x *a, int nb, q4quad *buf, int cap) {
    const int nquad = (nb + 3) / 4;
    q4quad *p = nquad > cap ? aligned_alloc(64, sizeof(q4quad) * (size_t)nquad) : buf;
    if (p) q4quad_prep(a, nb, p);
    return p;
}

/* blocks 4g.. of one row (nq of them, 1..4) against quad p: adds into acc (and off for Q4_1) */
AVX512_INLINE void q4quad_block(int type, const char *wp, int nq, const q4quad *p, __m512 *acc, __m128 *off) {
    const size_t bb = type == PL_TYPE_Q4_0 ? sizeof(block_q4_0) : sizeof(block_q4_1);
    const size_t qo = type == PL_TYPE_Q4_0 ? 2 : 4; /* nibbles after d (and m) */
    __m512i x;
    uint64_t d = 0; /* Q4_0: the 4 fp16 scales packed in a register (building them in memory and
                     * reloading them as one 8-byte word stalled on store forwarding) */
    /* block 0 always exists; lanes of missing blocks stay zero (so do their activations) */
    x = _mm512_zextsi128_si512(_mm_loadu_si128((const __m128i *)(wp + qo)));
    if (nq > 1) x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(wp + bb + qo)), 1);
    if (nq > 2) x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(wp + 2 * bb + qo)), 2);
    if (nq > 3) x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(wp + 3 * bb + qo)), 3);
    if (type == PL_TYPE_Q4_0) {
        for (int b = 0; b < nq; b++) {
            uint16_t h;
            memcpy(&h, wp + b * bb, 2);
            d |= (uint64_t)h << (16 * b);
        }
    }
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i wl = _mm512_and_si512(x, m4), wh = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
    __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, p->lo), wh, p->hi);
    if (type == PL_TYPE_Q4_0) s = _mm512_sub_epi32(s, p->c);
    __m512 dw16;
    if (type == PL_TYPE_Q4_0) {
        const __m128 dw = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)d));
        dw16 = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                                     _mm512_castps128_ps512(dw));
    } else { /* d and m sit together: one 4-byte load per block, both converted at once */
        int32_t dm;
        memcpy(&dm, wp, 4);
        __m128i v = _mm_cvtsi32_si128(dm);
        if (nq > 1) memcpy(&dm, wp + bb, 4), v = _mm_insert_epi32(v, dm, 1);
        if (nq > 2) memcpy(&dm, wp + 2 * bb, 4), v = _mm_insert_epi32(v, dm, 2);
        if (nq > 3) memcpy(&dm, wp + 3 * bb, 4), v = _mm_insert_epi32(v, dm, 3);
        const __m256 f = _mm256_cvtph_ps(v);
        /* f = d0 m0 d1 m1 d2 m2 d3 m3 */
        dw16 = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6),
                                     _mm512_castps256_ps512(f));
        const __m128 mw = _mm256_castps256_ps128(
            _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7)));
        *off = _mm_fmadd_ps(mw, p->s, *off);
    }
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw16, p->da), *acc);
}

AVX512_INLINE float hsum4(__m128 v) {
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
}

/* One GGUF-layout row (Q4_0/Q4_1): groups of 4 blocks into two accumulator chains. */
AVX512_INLINE float q4row(int type, const char *wr, int nb, const q4quad *ap) {
    const size_t bb = type == PL_TYPE_Q4_0 ? sizeof(block_q4_0) : sizeof(block_q4_1);
    const int nquad = (nb + 3) / 4;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m128 off0 = _mm_setzero_ps(), off1 = _mm_setzero_ps();
    int g = 0;
    for (; g + 2 <= nb / 4; g += 2) {
        q4quad_block(type, wr + (size_t)(4 * g) * bb, 4, ap + g, &acc0, &off0);
        q4quad_block(type, wr + (size_t)(4 * g + 4) * bb, 4, ap + g + 1, &acc1, &off1);
    }
    for (; g < nquad; g++) {
        const int nq = nb - 4 * g < 4 ? nb - 4 * g : 4;
        q4quad_block(type, wr + (size_t)(4 * g) * bb, nq, ap + g, &acc0, &off0);
    }
    const float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    return type == PL_TYPE_Q4_1 ? s + hsum4(_mm_add_ps(off0, off1)) : s;
}

/*
 * The repacked types (Q4_0R, Q4_1R, quants.h): a group of 4 blocks is one 64-byte load
 * of nibbles (block b in 128-bit lane b, as the q4quad activation expects) and one
 * 8-byte load of scales (Q4_1R: and one of minimums), where the GGUF layout needs four
 * 16-byte pieces and four scalar loads. Streaming from DRAM with two threads these rows
 * read faster than the GGUF layout's. A last group of 1-3 blocks is read
 * with masked loads: nothing past its own bytes.
 */
/* group g (nq of its 4 blocks present) of a repacked row, added into acc (Q4_1R: and off) */
AVX512_INLINE __m512 q4rgroup(int type, const uint8_t *row, int nb, int g, int nq, const q4quad *p, __m512 acc,
                              __m128 *off) {
    const int q41 = type == PL_TYPE_Q4_1R;
    const q4_block k = q4_block_at(type, row, 4 * g, nb); /* the group's first block: the rest follow it */
    __m512i x;
    __m128i dh, mh = _mm_setzero_si128();
    if (nq == 4) {
        x = _mm512_loadu_si512(k.qs);
        dh = _mm_loadl_epi64((const __m128i *)k.d);
        if (q41) mh = _mm_loadl_epi64((const __m128i *)k.m);
    } else {
        x = _mm512_maskz_loadu_epi8(((__mmask64)1 << (16 * nq)) - 1, k.qs);
        dh = _mm_maskz_loadu_epi16((__mmask8)((1u << nq) - 1), k.d);
        if (q41) mh = _mm_maskz_loadu_epi16((__mmask8)((1u << nq) - 1), k.m);
    }
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i wl = _mm512_and_si512(x, m4), wh = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
    __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, p->lo), wh, p->hi);
    if (!q41) s = _mm512_sub_epi32(s, p->c);
    const __m512 dw = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                                            _mm512_castps128_ps512(_mm_cvtph_ps(dh)));
    if (q41) *off = _mm_fmadd_ps(_mm_cvtph_ps(mh), p->s, *off);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, p->da), acc);
}

/* One repacked row, its groups in order into one accumulator: the rows stream from
 * memory, where a second accumulator chain bought nothing. */
AVX512_INLINE float q4rrow(int type, const uint8_t *wr, int nb, const q4quad *ap) {
    const int ngroup = (nb + 3) / 4, full = nb / 4;
    __m512 acc = _mm512_setzero_ps();
    __m128 off = _mm_setzero_ps();
    int g = 0;
    for (; g < full; g++) acc = q4rgroup(type, wr, nb, g, 4, ap + g, acc, &off);
    if (g < ngroup) acc = q4rgroup(type, wr, nb, g, nb - 4 * g, ap + g, acc, &off);
    const float s = _mm512_reduce_add_ps(acc);
    return type == PL_TYPE_Q4_1R ? s + hsum4(off) : s;
}

/* Rows [r0, r1) of any Q4 type (type is a constant wherever this is inlined), against
 * the activation rearranged once into q4quad groups. */
AVX512_INLINE void q4rows(int type, const void *w, size_t rb, const block_q8x *a, float *y, int r0, int r1,
                          int n) {
    const int nb = n / QK;
    q4quad stackbuf[QUADS_ON_STACK];
    q4quad *ap = q4quad_acts(a, nb, stackbuf, QUADS_ON_STACK);
    if (!ap) { /* out of memory: the AVX2 kernel needs no buffer of this size */
        pl_kernels_avx2.rows[type](w, rb, a, y, r0, r1, n);
        return;
    }
    for (int r = r0; r < r1; r++) {
        const uint8_t *wr = ROW(w, rb, r);
        if (q4_repacked(type)) {
            prefetch_ahead_past_end(wr, rb);
            y[r] = q4rrow(type, wr, nb, ap);
        } else {
            prefetch_ahead((const char *)wr, rb, ROW(w, rb, r1));
            y[r] = q4row(type, (const char *)wr, nb, ap);
        }
    }
    if (ap != stackbuf) free(ap);
}

AVX512 static void rows_q4_0(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) {
    q4rows(PL_TYPE_Q4_0, w, rb, (const block_q8x *)act, y, r0, r1, n);
}

AVX512 static void rows_q4_1(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) {
    q4rows(PL_TYPE_Q4_1, w, rb, (const block_q8x *)act, y, r0, r1, n);
}

/* ------------------------------------- one token in the tile's order (invariant decode) */

/*
 * qtile() gives a row, for any token, the chain acc = fma(isum_b, d_w * d_a, acc) (Q4_1:
 * then acc = fma(m_w, s_a, acc)) over its blocks b in order, isum_b the block's exact
 * integer dot product; so a token's result does not depend on the batch. These rows
 * kernels compute the same chain for one token without packing 16 rows first (what
 * makes the tile slow for a single token): the integer sums may come any way (they are
 * exact), the float steps are the tile's, one row at a time.
 */

/* The integer dot products of 4 blocks (quad p) with nq of their weight blocks from `row`
 * (any Q4 layout; Q4_0 types with the "- 8" taken off), into isum[0..3]. */
AVX512_INLINE void q4quad_isums(int type, const void *row, int nb, int b0, int nq, const q4quad *p, int32_t *isum) {
    __m512i x = _mm512_setzero_si512();
    for (int b = 0; b < nq; b++) {
        const q4_block k = q4_block_at(type, row, b0 + b, nb);
        x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)k.qs), 0);
        x = _mm512_alignr_epi32(x, x, 4); /* block b ends in lane b, as q4quad_prep places it */
    }
    for (int b = nq; b < 4; b++) x = _mm512_alignr_epi32(x, x, 4);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i wl = _mm512_and_si512(x, m4), wh = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
    __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, p->lo), wh, p->hi);
    if (q4_base(type) == PL_TYPE_Q4_0) s = _mm512_sub_epi32(s, p->c);
    s = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_CDAB));
    s = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_BADC)); /* lane 4b: block b's sum */
    _mm_storeu_si128((__m128i *)isum, _mm512_castsi512_si128(_mm512_permutexvar_epi32(
                                          _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s)));
}

AVX512_INLINE void q4rows_invariant(int type, const void *w, size_t rb, const block_q8x *a, float *y, int r0,
                                    int r1, int n) {
    const int nb = n / QK, q41 = q4_base(type) == PL_TYPE_Q4_1;
    q4quad stackbuf[QUADS_ON_STACK];
    q4quad *ap = q4quad_acts(a, nb, stackbuf, QUADS_ON_STACK);
    if (!ap) { /* out of memory: the tile itself needs no buffer of this size */
        qtile(type, w, rb, a, 0, y, 0, r0, r1, 1, n);
        return;
    }
    /* two rows at a time: each row's chain is serial, two chains keep the FMA unit busy */
    for (int r = r0; r < r1; r += 2) {
        const int nr = r + 1 < r1 ? 2 : 1;
        const uint8_t *wr[2] = {ROW(w, rb, r), ROW(w, rb, r + nr - 1)};
        prefetch_ahead_past_end(wr[0], rb);
        if (nr == 2) prefetch_ahead_past_end(wr[1], rb);
        float acc[2] = {0.0f, 0.0f};
        for (int b0 = 0; b0 < nb; b0 += 4) {
            const int nq = nb - b0 < 4 ? nb - b0 : 4;
            int32_t isum[2][4];
            q4quad_isums(type, wr[0], nb, b0, nq, ap + b0 / 4, isum[0]);
            q4quad_isums(type, wr[1], nb, b0, nq, ap + b0 / 4, isum[1]);
            for (int b = 0; b < nq; b++) {
                const float da = a[b0 + b].d, sa = a[b0 + b].s;
                for (int i = 0; i < 2; i++) {
                    const q4_block k = q4_block_at(type, wr[i], b0 + b, nb);
                    acc[i] = fmaf((float)isum[i][b], _cvtsh_ss(*k.d) * da, acc[i]);
                    if (q41) acc[i] = fmaf(_cvtsh_ss(*k.m), sa, acc[i]);
                }
            }
        }
        y[r] = acc[0];
        if (nr == 2) y[r + 1] = acc[1];
    }
    if (ap != stackbuf) free(ap);
}

/*
 * The repacked layouts (decode's) the tile's way round: 16 rows at once, one per lane, so
 * each step of the chain is one vector FMA for 16 rows (the tile's own instruction on the
 * same operands) instead of a scalar FMA per row. Per quad of blocks each row's integer
 * dot products come out as 16 int32 partial sums (block b in lanes 4b..4b+3); three rounds
 * of adds with unpack/shuffle steps turn the 16 rows' vectors into one vector per block
 * holding every row's exact block sum. The rows' scales (and minimums) are gathered 8
 * rows to a register and their fp16 lanes picked out per block.
 */
#define PANEL_AHEAD 16 /* rows: the next panel's lines are asked for while this one runs */

/* fp16 value b of each of 16 rows' 4-value groups (lo: rows 0-7, hi: rows 8-15, 8 bytes a row) as floats */
AVX512_INLINE __m512 halves_by_row(__m512i lo, __m512i hi, int b) {
    const __m512i idx = _mm512_zextsi256_si512(_mm256_add_epi16(
        _mm256_setr_epi16(0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60), _mm256_set1_epi16((short)b)));
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(lo, idx, hi)));
}

AVX512_INLINE void q4rrows_invariant(int type, const void *w, size_t rb, const block_q8x *a, float *y, int r0,
                                     int r1, int n) {
    const int nb = n / QK, q41 = type == PL_TYPE_Q4_1R, nquad = (nb + 3) / 4;
    const size_t qs_at = (size_t)(q41 ? 4 : 2) * nb; /* where a row's nibbles start (quants.h) */
    q4quad stackbuf[QUADS_ON_STACK];
    q4quad *ap = q4quad_acts(a, nb, stackbuf, QUADS_ON_STACK);
    if (!ap) {
        qtile(type, w, rb, a, 0, y, 0, r0, r1, 1, n);
        return;
    }
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int r = r0; r < r1; r += 16) {
        const int nr = r1 - r < 16 ? r1 - r : 16;
        const __mmask16 keep = nr == 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
        const uint8_t *wr[16];
        for (int i = 0; i < 16; i++) wr[i] = ROW(w, rb, r + (i < nr ? i : nr - 1)); /* missing lanes: the last row */
        /* the scales (minimums) of rows 0-7 and 8-15: gathered 8 bytes (4 blocks) a row, per quad */
        const __m512i off_lo = _mm512_setr_epi64(wr[0] - wr[0], wr[1] - wr[0], wr[2] - wr[0], wr[3] - wr[0],
                                                 wr[4] - wr[0], wr[5] - wr[0], wr[6] - wr[0], wr[7] - wr[0]);
        const __m512i off_hi = _mm512_setr_epi64(wr[8] - wr[0], wr[9] - wr[0], wr[10] - wr[0], wr[11] - wr[0],
                                                 wr[12] - wr[0], wr[13] - wr[0], wr[14] - wr[0], wr[15] - wr[0]);
        const uint8_t *ahead = (const uint8_t *)ROW(w, rb, r + PANEL_AHEAD);
        if (r + PANEL_AHEAD < r1)
            for (size_t o = 0; o < qs_at; o += 64)
                for (int i = 0; i < 16; i++) _mm_prefetch((const char *)ahead + i * rb + o, _MM_HINT_T0);
        __m512 acc = _mm512_setzero_ps();
        for (int g = 0; g < nquad; g++) {
            const int nq = nb - 4 * g < 4 ? nb - 4 * g : 4;
            const q4quad *p = ap + g;
            const __mmask64 qmask = nq == 4 ? ~(__mmask64)0 : ((__mmask64)1 << (16 * nq)) - 1;
            __m512i sv[16], v[4];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                const uint8_t *qs = wr[i] + qs_at + 64 * (size_t)g;
                if (r + PANEL_AHEAD < r1) _mm_prefetch((const char *)qs + PANEL_AHEAD * rb, _MM_HINT_T0);
                const __m512i x = nq == 4 ? _mm512_loadu_si512(qs) : _mm512_maskz_loadu_epi8(qmask, qs);
                const __m512i wl = _mm512_and_si512(x, m4), wh = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
                sv[i] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, p->lo), wh, p->hi);
                if (!q41) sv[i] = _mm512_sub_epi32(sv[i], p->c);
            }
            quad_sums_by_row(sv, v);
            /* 8 bytes from block 4g's scale on: past the row's last block they read the next
             * array of the same row (minimums or nibbles), lanes no block uses */
            const __m512i d_lo = _mm512_i64gather_epi64(off_lo, wr[0] + 8 * (size_t)g, 1);
            const __m512i d_hi = _mm512_i64gather_epi64(off_hi, wr[0] + 8 * (size_t)g, 1);
            __m512i m_lo = _mm512_setzero_si512(), m_hi = _mm512_setzero_si512();
            if (q41) {
                m_lo = _mm512_i64gather_epi64(off_lo, wr[0] + 2 * (size_t)nb + 8 * (size_t)g, 1);
                m_hi = _mm512_i64gather_epi64(off_hi, wr[0] + 2 * (size_t)nb + 8 * (size_t)g, 1);
            }
            for (int b = 0; b < nq; b++) {
                const block_q8x *ab = a + 4 * g + b;
                const __m512 dd = _mm512_mul_ps(halves_by_row(d_lo, d_hi, b), _mm512_set1_ps(ab->d));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v[b]), dd, acc);
                if (q41) acc = _mm512_fmadd_ps(halves_by_row(m_lo, m_hi, b), _mm512_set1_ps(ab->s), acc);
            }
        }
        _mm512_mask_storeu_ps(y + r, keep, acc);
    }
    if (ap != stackbuf) free(ap);
}

#define Q4_ROWS_INVARIANT(NAME, TYPE)                                                                       \
    AVX512 static void rows_inv_##NAME(const void *w, size_t rb, const void *act, float *y, int r0, int r1,   \
                                       int n) {                                                              \
        q4rows_invariant(TYPE, w, rb, (const block_q8x *)act, y, r0, r1, n);                                  \
    }

Q4_ROWS_INVARIANT(q4_0, PL_TYPE_Q4_0)
Q4_ROWS_INVARIANT(q4_1, PL_TYPE_Q4_1)
AVX512 static void rows_inv_q4_0r(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) {
    q4rrows_invariant(PL_TYPE_Q4_0R, w, rb, (const block_q8x *)act, y, r0, r1, n);
}

AVX512 static void rows_inv_q4_1r(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) {
    q4rrows_invariant(PL_TYPE_Q4_1R, w, rb, (const block_q8x *)act, y, r0, r1, n);
}

/* sum of an activation block's 32 bytes (exact) */
AVX512_INLINE int32_t block_sum_q8(const block_q8x *ab) {
    __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)ab->qs));
    __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    return _mm_cvtsi128_si32(s4);
}

/*
 * Q8_0 the same way round: 16 rows in the lanes, two blocks per step. A row's two blocks
 * are one zmm of weight bytes made unsigned (+128, as the tile packs them) against the
 * two activation blocks: 8 int32 partial sums per block, reduced across the 16 rows' vectors
 * into one vector per block (lane = row), from which the tile's 128 x sum(activation)
 * comes off before the chain step acc = fma(isum, d_w * d_a, acc).
 */
/* s[i] (row i): block 0's partial sums in lanes 0-7, block 1's in 8-15 -> v[0], v[1] (lane = row) */
AVX512_INLINE void pair_sums_by_row(const __m512i s[16], __m512i v[2]) {
    __m512i t[8], u[4];
    for (int k = 0; k < 8; k++)
        t[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(s[2 * k], s[2 * k + 1]),
                                _mm512_unpackhi_epi32(s[2 * k], s[2 * k + 1]));
    for (int j = 0; j < 4; j++) /* 128-bit lane l: half l % 2 of block l / 2, rows 4j..4j+3 */
        u[j] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * j], t[2 * j + 1]),
                                _mm512_unpackhi_epi64(t[2 * j], t[2 * j + 1]));
    const __m512i y01 = _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                         _mm512_shuffle_i32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i y23 = _mm512_add_epi32(_mm512_shuffle_i32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                         _mm512_shuffle_i32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
    v[0] = _mm512_shuffle_i32x4(y01, y23, _MM_SHUFFLE(2, 0, 2, 0));
    v[1] = _mm512_shuffle_i32x4(y01, y23, _MM_SHUFFLE(3, 1, 3, 1));
}

AVX512 static void rows_inv_q8_0(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) {
    const int nb = n / QK;
    const block_q8x *a = (const block_q8x *)act;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int r = r0; r < r1; r += 16) {
        const int nr = r1 - r < 16 ? r1 - r : 16;
        const __mmask16 keep = nr == 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
        const block_q8_0 *wb[16];
        for (int i = 0; i < 16; i++) wb[i] = (const block_q8_0 *)ROW(w, rb, r + (i < nr ? i : nr - 1));
        const __m512i off = _mm512_setr_epi32(
            (int)((const char *)wb[0] - (const char *)wb[0]), (int)((const char *)wb[1] - (const char *)wb[0]),
            (int)((const char *)wb[2] - (const char *)wb[0]), (int)((const char *)wb[3] - (const char *)wb[0]),
            (int)((const char *)wb[4] - (const char *)wb[0]), (int)((const char *)wb[5] - (const char *)wb[0]),
            (int)((const char *)wb[6] - (const char *)wb[0]), (int)((const char *)wb[7] - (const char *)wb[0]),
            (int)((const char *)wb[8] - (const char *)wb[0]), (int)((const char *)wb[9] - (const char *)wb[0]),
            (int)((const char *)wb[10] - (const char *)wb[0]), (int)((const char *)wb[11] - (const char *)wb[0]),
            (int)((const char *)wb[12] - (const char *)wb[0]), (int)((const char *)wb[13] - (const char *)wb[0]),
            (int)((const char *)wb[14] - (const char *)wb[0]), (int)((const char *)wb[15] - (const char *)wb[0]));
        const char *ahead = (const char *)ROW(w, rb, r + PANEL_AHEAD);
        const int prefetch = r + PANEL_AHEAD < r1;
        __m512 acc = _mm512_setzero_ps();
        for (int b = 0; b < nb; b += 2) {
            const int two = b + 1 < nb;
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)a[b].qs);
            const __m512i ab = two ? _mm512_inserti64x4(_mm512_castsi256_si512(a0),
                                                        _mm256_loadu_si256((const __m256i *)a[b + 1].qs), 1)
                                   : _mm512_zextsi256_si512(a0);
            __m512i sv[16], v[2];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)wb[i][b].qs);
                const __m512i x = two ? _mm512_inserti64x4(_mm512_castsi256_si512(w0),
                                                           _mm256_loadu_si256((const __m256i *)wb[i][b + 1].qs), 1)
                                      : _mm512_zextsi256_si512(w0);
                if (prefetch) _mm_prefetch(ahead + i * rb + (size_t)b * sizeof(block_q8_0), _MM_HINT_T0);
                sv[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(x, flip), ab);
            }
            pair_sums_by_row(sv, v);
            for (int k = 0; k < 1 + two; k++) {
                const block_q8x *ak = a + b + k;
                const __m512i d16 = _mm512_i32gather_epi32(off, (const char *)&wb[0][b + k].d, 1);
                const __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(d16)); /* low 16 bits: the scale */
                const __m512i si = _mm512_sub_epi32(v[k], _mm512_set1_epi32(128 * block_sum_q8(ak)));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(dw, _mm512_set1_ps(ak->d)), acc);
            }
        }
        _mm512_mask_storeu_ps(y + r, keep, acc);
    }
}

/* ---------------------------------------------------------------- attention */

/* Unscaled scores of J <= 3 query heads (q0, hd floats apart) against NB key blocks
 * from blk (kernels.h): q[d] x 16 keys of dimension d for every d, one zmm per block
 * and head: 3 x NB independent multiply-add chains. The n_next blocks after them are
 * asked for meanwhile: in decode the cache has been pushed out of every cache level by
 * the weights streamed since the last token, and these short per-head runs leave the
 * hardware prefetcher little time to ramp up (see attention() in forward.c). */
AVX512_INLINE void block_scores(int k_type, const float *q0, int hd, const char *blk, int J, int NB, int n_next,
                                float scores[3][4 * PL_KV_BLOCK]) {
    const size_t row_bytes = (size_t)PL_KV_BLOCK * (k_type == PL_TYPE_F16 ? 2 : 4), blk_bytes = hd * row_bytes;
    __m512 acc[3][4];
    for (int j = 0; j < 3; j++)
        for (int b = 0; b < 4; b++) acc[j][b] = _mm512_setzero_ps();
    for (int d = 0; d < hd; d++) {
        __m512 kv[4];
        if ((d * row_bytes) % 64 == 0)
            for (int b = 0; b < n_next; b++) _mm_prefetch(blk + (NB + b) * blk_bytes + d * row_bytes, _MM_HINT_T0);
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) kv[b] = load16(k_type, blk + b * blk_bytes + d * row_bytes, 0, 0xffff);
#pragma GCC unroll 3
        for (int j = 0; j < J; j++) {
            const __m512 qd = _mm512_set1_ps(q0[(size_t)j * hd + d]);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) acc[j][b] = _mm512_fmadd_ps(kv[b], qd, acc[j][b]);
        }
    }
    for (int j = 0; j < J; j++)
        for (int b = 0; b < NB; b++) _mm512_storeu_ps(scores[j] + b * PL_KV_BLOCK, acc[j][b]);
}

AVX512_INLINE void key_scores(int k_type, const float *q0, int hd, const void *k, int n_pos, float *att, int J) {
    const size_t blk_bytes = (size_t)hd * PL_KV_BLOCK * (k_type == PL_TYPE_F16 ? 2 : 4);
    float scores[3][4 * PL_KV_BLOCK];
    for (int p0 = 0; p0 < n_pos;) {
        const char *blk = (const char *)k + (size_t)(p0 / PL_KV_BLOCK) * blk_bytes;
        const int left = (n_pos - p0 + PL_KV_BLOCK - 1) / PL_KV_BLOCK; /* blocks still to do */
        const int NB = left >= 4 ? 4 : left >= 2 ? 2 : 1, n_next = left - NB < NB ? left - NB : NB;
        if (NB == 4) block_scores(k_type, q0, hd, blk, J, 4, n_next, scores);
        else if (NB == 2) block_scores(k_type, q0, hd, blk, J, 2, n_next, scores);
        else block_scores(k_type, q0, hd, blk, J, 1, n_next, scores);
        const int n = n_pos - p0 < NB * PL_KV_BLOCK ? n_pos - p0 : NB * PL_KV_BLOCK; /* past n_pos: stale keys */
        for (int j = 0; j < J; j++) memcpy(att + (size_t)j * n_pos + p0, scores[j], (size_t)n * sizeof(float));
        p0 += NB * PL_KV_BLOCK;
    }
}

/* out[j][c..c+16*NC) = sum_s p[j][s] * V[s][c..] for J <= 3 heads: 3 x NC chains; the
 * row VALUE_AHEAD positions on is asked for meanwhile (see block_scores). */
enum { VALUE_AHEAD = 8 };
AVX512_INLINE void values_pass(int v_type, const float *p0, const char *v, size_t row_bytes, int n_pos, int hd,
                               float *out, int J, int NC, int c) {
    const size_t col = (size_t)c * (v_type == PL_TYPE_F16 ? 2 : 4), span = (size_t)NC * 16 * (v_type == PL_TYPE_F16 ? 2 : 4);
    __m512 acc[3][4];
    for (int j = 0; j < 3; j++)
        for (int i = 0; i < 4; i++) acc[j][i] = _mm512_setzero_ps();
    for (int s = 0; s < n_pos; s++) {
        const char *vr = v + (size_t)s * row_bytes;
        __m512 vv[4];
        if (s + VALUE_AHEAD < n_pos)
            for (size_t o = 0; o < span; o += 64) _mm_prefetch(vr + VALUE_AHEAD * row_bytes + col + o, _MM_HINT_T0);
#pragma GCC unroll 4
        for (int i = 0; i < NC; i++) vv[i] = load16(v_type, vr, c + 16 * i, 0xffff);
#pragma GCC unroll 3
        for (int j = 0; j < J; j++) {
            const __m512 pj = _mm512_set1_ps(p0[(size_t)j * n_pos + s]);
#pragma GCC unroll 4
            for (int i = 0; i < NC; i++) acc[j][i] = _mm512_fmadd_ps(pj, vv[i], acc[j][i]);
        }
    }
    for (int j = 0; j < J; j++)
        for (int i = 0; i < NC; i++) _mm512_storeu_ps(out + (size_t)j * hd + c + 16 * i, acc[j][i]);
}

/* out[j] = sum_s p[j][s] * V[s] for J <= 3 heads: 64 values (4 zmm, 12 chains) per pass */
AVX512_INLINE void weighted_values(int v_type, const float *p0, const void *v, size_t v_stride, int n_pos, int hd,
                                   float *out, int J) {
    const size_t row_bytes = v_stride * (v_type == PL_TYPE_F16 ? 2 : 4);
    int c = 0;
    for (; c + 64 <= hd; c += 64) values_pass(v_type, p0, v, row_bytes, n_pos, hd, out, J, 4, c);
    for (; c + 16 <= hd; c += 16) values_pass(v_type, p0, v, row_bytes, n_pos, hd, out, J, 1, c);
    for (; c < hd; c++) /* head sizes that are not a multiple of 16 */
        for (int j = 0; j < J; j++) {
            float o = 0.0f;
            for (int s = 0; s < n_pos; s++) o += p0[(size_t)j * n_pos + s] * load1(v_type, (const char *)v + (size_t)s * row_bytes, c);
            out[(size_t)j * hd + c] = o;
        }
}

/* pl_attend_avx2's job with 16-lane vectors: scores 3 heads x 64 positions per pass,
 * values 3 heads x 64 columns per pass. */
DEFINE_X86_ATTEND(attend, AVX512 static)

/* ------------------------------------------------------------------ the set */

static pl_kernel_set avx512_set;

/* Filled when the library loads (before any thread can ask for it). */
__attribute__((constructor)) static void fill_avx512_set(void) {
    avx512_set = pl_kernels_avx2;
    avx512_set.name = "avx512";
    avx512_set.tile[PL_TYPE_F32] = tile_f32;
    avx512_set.tile[PL_TYPE_F16] = tile_f16;
    avx512_set.tile[PL_TYPE_BF16] = tile_bf16;
    avx512_set.tile[PL_TYPE_Q8_0] = tile_q8_0;
    avx512_set.tile[PL_TYPE_Q4_0] = tile_q4_0;
    avx512_set.tile[PL_TYPE_Q4_1] = tile_q4_1;
    avx512_set.tile[PL_TYPE_Q4_0R] = tile_q4_0r;
    avx512_set.tile[PL_TYPE_Q4_1R] = tile_q4_1r;
    avx512_set.rows_invariant[PL_TYPE_Q8_0] = rows_inv_q8_0;
    avx512_set.rows_invariant[PL_TYPE_Q4_0] = rows_inv_q4_0;
    avx512_set.rows_invariant[PL_TYPE_Q4_1] = rows_inv_q4_1;
    avx512_set.rows_invariant[PL_TYPE_Q4_0R] = rows_inv_q4_0r;
    avx512_set.rows_invariant[PL_TYPE_Q4_1R] = rows_inv_q4_1r;
    avx512_set.rows[PL_TYPE_Q4_0] = rows_q4_0;
    avx512_set.rows[PL_TYPE_Q4_1] = rows_q4_1;
    /* decode of these types takes the tile's arithmetic too: as fast as a row-at-a-time
     * kernel, and a sequence's logits then do not depend on its batch in either mode */
    avx512_set.rows[PL_TYPE_Q8_0] = rows_inv_q8_0;
    avx512_set.rows[PL_TYPE_Q4_0R] = rows_inv_q4_0r;
    avx512_set.rows[PL_TYPE_Q4_1R] = rows_inv_q4_1r;
    const int panels[3] = {PL_TYPE_Q4_0P, PL_TYPE_Q4_1P, PL_TYPE_Q8_0P};
    const pl_tile_fn ptiles[3] = {tile_q4_0p, tile_q4_1p, tile_q8_0p};
    const pl_rows_fn prows[3] = {rows_q4_0p, rows_q4_1p, rows_q8_0p};
    for (int i = 0; i < 3; i++) { /* one kernel for any number of tokens: invariant in either mode */
        avx512_set.tile[panels[i]] = ptiles[i];
        avx512_set.rows[panels[i]] = prows[i];
        avx512_set.rows_invariant[panels[i]] = prows[i];
    }
    avx512_set.attend = attend;
    pl_kq_fill_avx512(&avx512_set); /* kquants_avx512.c */
    pl_kqr_fill_avx512(&avx512_set); /* kquants_repack.c */
}

const pl_kernel_set *pl_kernels_avx512(void) { return &avx512_set; }

#endif
