/*
 * kernels_neon.c - the AArch64 kernels: NEON, plus the dot-product extension
 * (SDOT, Armv8.2 "dotprod") when the CPU has it.
 *
 * NEON itself is part of every AArch64 CPU, so the file is built for baseline
 * armv8-a; the SDOT functions carry a target attribute and are only called when
 * the CPU reports the extension (Linux: AT_HWCAP & HWCAP_ASIMDDP; Apple: always).
 * PYLLAMA_NEON_NODOT=1 in the environment forces the plain NEON path (tests).
 *
 * Same shapes as the AVX2 file:
 *  - rows(): one activation, 4 rows per pass sharing the activation loads.
 *  - tile(): float types use a 4 rows x 4 tokens register tile; quantized
 *    types (with SDOT) repack 4 rows so that each 32-bit lane holds 4 values of
 *    one row, and "sdot by element" multiplies the 4 rows by one 4-byte group of
 *    the activation: the result lanes are the 4 rows, no horizontal sums.
 *
 * Quantized weights are unpacked to signed bytes (Q4_0: q - 8, Q4_1: q,
 * Q8_0: as is), so every integer dot is int8 x int8 and exact.
 */
#if defined(__aarch64__)

#include <arm_neon.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kquants_neon.h"
#include "pyllama.h"
#include "simd_neon.h"

#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

/* ------------------------------------------------------------ CPU features */

static int dotprod_state = -1; /* -1: not yet known */

int pl_neon_has_dotprod(void) {
    if (dotprod_state < 0) {
        int has = 0;
#if defined(__APPLE__)
        has = 1;
#elif defined(__linux__)
        has = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
        const char *e = getenv("PYLLAMA_NEON_NODOT");
        if (e && *e && strcmp(e, "0")) has = 0;
        dotprod_state = has;
    }
    return dotprod_state;
}

/* ------------------------------------------------------------------ helpers */

/* Where block b of a quantized row (nb blocks) keeps its values, scale and (Q4_1) minimum:
 * GGUF's interleaved blocks, or a repacked Q4 row (quants.h). */
typedef struct {
    const void *qs;
    const pl_fp16 *d, *m;
} wblock;

INLINE wblock wblock_at(int type, const void *row, int b, int nb) {
    wblock k;
    if (type == PL_TYPE_Q8_0) {
        const block_q8_0 *q = (const block_q8_0 *)row + b;
        k.qs = q->qs;
        k.d = &q->d;
        k.m = NULL;
    } else {
        const q4_block q = q4_block_at(type, row, b, nb);
        k.qs = q.qs;
        k.d = q.d;
        k.m = q.m;
    }
    return k;
}

/* the 32 values of a weight block (its qs) as signed bytes: lo = values 0..15, hi = 16..31;
 * type: Q8_0, Q4_0 or Q4_1 (a repacked type's base) */
INLINE void unpack(int type, const void *qsp, int8x16_t *lo, int8x16_t *hi) {
    if (type == PL_TYPE_Q8_0) {
        const int8_t *qs = qsp;
        *lo = vld1q_s8(qs);
        *hi = vld1q_s8(qs + 16);
    } else {
        const uint8_t *qs = qsp;
        uint8x16_t v = vld1q_u8(qs);
        int8x16_t l = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
        int8x16_t h = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
        if (type == PL_TYPE_Q4_0) {
            l = vsubq_s8(l, vdupq_n_s8(8));
            h = vsubq_s8(h, vdupq_n_s8(8));
        }
        *lo = l;
        *hi = h;
    }
}


/* 32 int8 products as 4 int32 lanes, without SDOT (products fit int16: |w| <= 128, |a| <= 127) */
INLINE int32x4_t dot32_plain(int8x16_t w0, int8x16_t a0, int8x16_t w1, int8x16_t a1) {
    int16x8_t p0 = vmull_s8(vget_low_s8(w0), vget_low_s8(a0));
    int16x8_t p1 = vmull_high_s8(w0, a0);
    int16x8_t p2 = vmull_s8(vget_low_s8(w1), vget_low_s8(a1));
    int16x8_t p3 = vmull_high_s8(w1, a1);
    int32x4_t s = vpaddlq_s16(p0);
    s = vpadalq_s16(s, p1);
    s = vpadalq_s16(s, p2);
    return vpadalq_s16(s, p3);
}

/* ------------------------------------------------------- activation quantize */

static void quantize_q8x(const float *x, block_q8x *y, int n) {
    for (int b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        float32x4_t v[8];
        float32x4_t m = vdupq_n_f32(0.0f);
        uint32x4_t ok = vdupq_n_u32(~0u);
        for (int j = 0; j < 8; j++) {
            v[j] = vld1q_f32(xb + 4 * j);
            m = vmaxq_f32(m, vabsq_f32(v[j]));
            ok = vandq_u32(ok, vcleq_f32(vabsq_f32(v[j]), vdupq_n_f32(FLT_MAX))); /* false for NaN, inf */
        }
        if (vminvq_u32(ok) == 0) { /* a NaN or an infinity: the block becomes NaN (kernels_scalar.c says why) */
            memset(y[b].qs, 0, QK);
            y[b].d = y[b].s = NAN;
            continue;
        }
        float amax = vmaxvq_f32(m);
        float d = amax / 127.0f;
        float id = d >= FLT_MIN ? 1.0f / d : 0.0f; /* below FLT_MIN 1/d can overflow: 0 * inf = NaN */
        int32x4_t sum = vdupq_n_s32(0);
        for (int j = 0; j < 8; j += 2) {
            int32x4_t i0 = vcvtnq_s32_f32(vmulq_n_f32(v[j], id)); /* round half to even */
            int32x4_t i1 = vcvtnq_s32_f32(vmulq_n_f32(v[j + 1], id));
            sum = vaddq_s32(sum, vaddq_s32(i0, i1));
            int16x8_t h = vcombine_s16(vqmovn_s32(i0), vqmovn_s32(i1));
            vst1_s8(y[b].qs + 4 * j, vqmovn_s16(h));
        }
        y[b].d = d;
        y[b].s = d * (float)vaddvq_s32(sum);
    }
}

/* ------------------------------------------------------------ float weights */

INLINE float32x4_t load4(int type, const void *w, int k) {
    if (type == PL_TYPE_F32) return vld1q_f32((const float *)w + k);
    uint16x4_t h = vld1_u16((const uint16_t *)w + k);
    if (type == PL_TYPE_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

INLINE float load1(int type, const void *w, int k) {
    if (type == PL_TYPE_F32) return ((const float *)w)[k];
    if (type == PL_TYPE_F16) return half(((const uint16_t *)w)[k]);
    return bf16_to_f32(((const uint16_t *)w)[k]);
}

/* R rows x T tokens (R, T <= 4), one accumulator each; n any length */
INLINE void ftile(int type, int R, int T, const void *w, size_t rb, const float *x, size_t xs, float *y,
                  size_t ys, int r, int n) {
    float32x4_t acc[4][4];
    for (int i = 0; i < R; i++)
        for (int t = 0; t < T; t++) acc[i][t] = vdupq_n_f32(0.0f);
    int k = 0;
    for (; k + 4 <= n; k += 4) {
        float32x4_t xv[4];
        for (int t = 0; t < T; t++) xv[t] = vld1q_f32(x + t * xs + k);
        for (int i = 0; i < R; i++) {
            float32x4_t wv = load4(type, ROW(w, rb, r + i), k);
            for (int t = 0; t < T; t++) acc[i][t] = vfmaq_f32(acc[i][t], wv, xv[t]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int t = 0; t < T; t++) {
            float s = vaddvq_f32(acc[i][t]);
            for (int j = k; j < n; j++) s += load1(type, ROW(w, rb, r + i), j) * x[t * xs + j];
            y[t * ys + r + i] = s;
        }
}

#define FLOAT_KERNELS(NAME, TYPE)                                                                        \
    static void rows_##NAME(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) { \
        int r = r0;                                                                                      \
        for (; r + 4 <= r1; r += 4) ftile(TYPE, 4, 1, w, rb, (const float *)act, 0, y, 0, r, n);          \
        for (; r < r1; r++) ftile(TYPE, 1, 1, w, rb, (const float *)act, 0, y, 0, r, n);                  \
    }                                                                                                    \
    static void tile_##NAME(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys,    \
                            int r0, int r1, int nt, int n) {                                             \
        const float *x = (const float *)act;                                                             \
        const size_t xs = as / sizeof(float);                                                            \
        PL_FTILE_ALL(TYPE, 4, w, rb, x, xs, y, ys, r0, r1, nt, n);                                       \
    }

FLOAT_KERNELS(f32, PL_TYPE_F32)
FLOAT_KERNELS(f16, PL_TYPE_F16)
FLOAT_KERNELS(bf16, PL_TYPE_BF16)

/* --------------------------------------------------- quantized weights: rows */

/*
 * R rows (<= 4) against one activation. Per block: an int32x4 of 32 products,
 * converted and scaled by dw * da into a float accumulator; Q4_1 adds m * s.
 * DOT selects SDOT or the widening-multiply fallback.
 */
#define QROWS_BODY(DOT)                                                                           \
    float32x4_t acc[4];                                                                           \
    float off[4];                                                                                 \
    for (int i = 0; i < R; i++) {                                                                 \
        acc[i] = vdupq_n_f32(0.0f);                                                               \
        off[i] = 0.0f;                                                                            \
    }                                                                                             \
    const int nb = n / QK, base = q4_base(type);                                                  \
    for (int b = 0; b < nb; b++) {                                                                \
        const int8x16_t a0 = vld1q_s8(a[b].qs), a1 = vld1q_s8(a[b].qs + 16);                      \
        for (int i = 0; i < R; i++) {                                                             \
            const wblock k = wblock_at(type, ROW(w, rb, r + i), b, nb);                           \
            int8x16_t w0, w1;                                                                     \
            unpack(base, k.qs, &w0, &w1);                                                         \
            int32x4_t p = DOT(w0, a0, w1, a1);                                                    \
            acc[i] = vfmaq_n_f32(acc[i], vcvtq_f32_s32(p), half(*k.d) * a[b].d);                  \
            if (base == PL_TYPE_Q4_1) off[i] += half(*k.m) * a[b].s;                              \
        }                                                                                         \
    }                                                                                             \
    for (int i = 0; i < R; i++) y[r + i] = vaddvq_f32(acc[i]) + off[i];

INLINE void qrows_plain(int type, int R, const void *w, size_t rb, const block_q8x *a, float *y, int r, int n) {
    QROWS_BODY(dot32_plain)
}


DOTPROD INLINE int32x4_t dot32_sdot(int8x16_t w0, int8x16_t a0, int8x16_t w1, int8x16_t a1) {
    return sdot(sdot(vdupq_n_s32(0), w0, a0), w1, a1);
}

DOTPROD INLINE void qrows_sdot(int type, int R, const void *w, size_t rb, const block_q8x *a, float *y, int r,
                               int n) {
    QROWS_BODY(dot32_sdot)
}

#define QROWS(NAME, TYPE)                                                                             \
    static void rows_##NAME##_plain(const void *w, size_t rb, const void *act, float *y, int r0, int r1, \
                                    int n) {                                                          \
        int r = r0;                                                                                   \
        for (; r + 4 <= r1; r += 4) qrows_plain(TYPE, 4, w, rb, act, y, r, n);                        \
        for (; r < r1; r++) qrows_plain(TYPE, 1, w, rb, act, y, r, n);                                \
    }                                                                                                 \
    DOTPROD static void rows_##NAME##_sdot(const void *w, size_t rb, const void *act, float *y, int r0, \
                                           int r1, int n) {                                           \
        int r = r0;                                                                                   \
        for (; r + 4 <= r1; r += 4) qrows_sdot(TYPE, 4, w, rb, act, y, r, n);                         \
        for (; r < r1; r++) qrows_sdot(TYPE, 1, w, rb, act, y, r, n);                                 \
    }                                                                                                 \
    static void rows_##NAME(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n) { \
        if (pl_neon_has_dotprod()) rows_##NAME##_sdot(w, rb, act, y, r0, r1, n);                      \
        else rows_##NAME##_plain(w, rb, act, y, r0, r1, n);                                           \
    }

QROWS(q8_0, PL_TYPE_Q8_0)
QROWS(q4_0, PL_TYPE_Q4_0)
QROWS(q4_1, PL_TYPE_Q4_1)
QROWS(q4_0r, PL_TYPE_Q4_0R)
QROWS(q4_1r, PL_TYPE_Q4_1R)

/* --------------------------------------------------- quantized weights: tile */

/* 4 rows of one block: q[g] = values 4g..4g+3 of rows 0..3 (row i in 32-bit lane i) */
typedef struct {
    int8x16_t q[8];
    float32x4_t d, m;
} pack4;

#define KCHUNK 32 /* 4 rows x 32 blocks = 5 KB of packed weights */
#define PANEL 4

/* nbr: blocks per row (where a repacked row keeps its parts) */
INLINE void pack_rows(int type, const void *w, size_t rb, int r, int b0, int nb, int nbr, pack4 *pk) {
    const int base = q4_base(type);
    for (int b = 0; b < nb; b++) {
        int8_t v[4][QK];
        float d[4], m[4];
        for (int i = 0; i < 4; i++) {
            const wblock k = wblock_at(type, ROW(w, rb, r + i), b0 + b, nbr);
            int8x16_t lo, hi;
            unpack(base, k.qs, &lo, &hi);
            vst1q_s8(v[i], lo);
            vst1q_s8(v[i] + 16, hi);
            d[i] = half(*k.d);
            m[i] = base == PL_TYPE_Q4_1 ? half(*k.m) : 0.0f;
        }
        for (int g = 0; g < 8; g++) {
            int8_t t[16];
            for (int i = 0; i < 4; i++) memcpy(t + 4 * i, v[i] + 4 * g, 4);
            pk[b].q[g] = vld1q_s8(t);
        }
        pk[b].d = vld1q_f32(d);
        pk[b].m = vld1q_f32(m);
    }
}

/* 4 rows (lanes) x T tokens (<= 4) over nb packed blocks, added into acc */
DOTPROD INLINE void qpanel(int type, int T, const pack4 *pk, int nb, const block_q8x *const *a,
                           float32x4_t *acc) {
    for (int b = 0; b < nb; b++) {
        const pack4 *p = pk + b;
        for (int t = 0; t < T; t++) {
            const block_q8x *ab = a[t] + b;
            const int8x16_t a0 = vld1q_s8(ab->qs), a1 = vld1q_s8(ab->qs + 16);
            const int32x4_t s = sdot_lanes4(sdot_lanes4(vdupq_n_s32(0), p->q, a0), p->q + 4, a1);
            acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(s), vmulq_n_f32(p->d, ab->d));
            if (type == PL_TYPE_Q4_1) acc[t] = vfmaq_n_f32(acc[t], p->m, ab->s);
        }
    }
}

DOTPROD INLINE void qtile_sdot(int type, pl_rows_fn rows, const void *w, size_t rb, const void *act, size_t as,
                               float *y, size_t ys, int r0, int r1, int nt, int n) {
    const int nbt = n / QK, base = q4_base(type); /* base: the arithmetic; type: where blocks are */
    int r = r0;
    if (nt >= 4) {
        pack4 pk[KCHUNK];
        for (; r + PANEL <= r1; r += PANEL) {
            for (int b0 = 0; b0 < nbt; b0 += KCHUNK) {
                int nb = nbt - b0 < KCHUNK ? nbt - b0 : KCHUNK;
                pack_rows(type, w, rb, r, b0, nb, nbt, pk);
                for (int t = 0; t < nt; t += 4) {
                    int T = nt - t < 4 ? nt - t : 4;
                    const block_q8x *a[4];
                    float32x4_t acc[4];
                    for (int j = 0; j < T; j++) {
                        a[j] = (const block_q8x *)((const char *)act + (size_t)(t + j) * as) + b0;
                        acc[j] = b0 ? vld1q_f32(y + (t + j) * ys + r) : vdupq_n_f32(0.0f);
                    }
                    switch (T) {
                    case 4: qpanel(base, 4, pk, nb, a, acc); break;
                    case 3: qpanel(base, 3, pk, nb, a, acc); break;
                    case 2: qpanel(base, 2, pk, nb, a, acc); break;
                    default: qpanel(base, 1, pk, nb, a, acc); break;
                    }
                    for (int j = 0; j < T; j++) vst1q_f32(y + (t + j) * ys + r, acc[j]);
                }
            }
        }
    }
    for (int t = 0; t < nt && r < r1; t++)
        rows(w, rb, (const char *)act + (size_t)t * as, y + t * ys, r, r1, n);
}

#define QTILE(NAME, TYPE)                                                                             \
    DOTPROD static void tile_##NAME##_sdot(const void *w, size_t rb, const void *act, size_t as, float *y, \
                                           size_t ys, int r0, int r1, int nt, int n) {                \
        qtile_sdot(TYPE, rows_##NAME##_sdot, w, rb, act, as, y, ys, r0, r1, nt, n);                   \
    }                                                                                                 \
    static void tile_##NAME(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys,  \
                            int r0, int r1, int nt, int n) {                                          \
        if (pl_neon_has_dotprod()) {                                                                  \
            tile_##NAME##_sdot(w, rb, act, as, y, ys, r0, r1, nt, n);                                 \
        } else {                                                                                      \
            /* row blocks small enough to stay in cache while every token passes */                   \
            for (int rbk = r0; rbk < r1; rbk += 16) {                                                 \
                int re = rbk + 16 < r1 ? rbk + 16 : r1;                                               \
                for (int t = 0; t < nt; t++)                                                          \
                    rows_##NAME##_plain(w, rb, (const char *)act + (size_t)t * as, y + t * ys, rbk, re, n); \
            }                                                                                         \
        }                                                                                             \
    }

QTILE(q8_0, PL_TYPE_Q8_0)
QTILE(q4_0, PL_TYPE_Q4_0)
QTILE(q4_1, PL_TYPE_Q4_1)
QTILE(q4_0r, PL_TYPE_Q4_0R)
QTILE(q4_1r, PL_TYPE_Q4_1R)

/* ---------------------------------------------------------------- attention */

/* e^x for 4 lanes: 2^n * 2^f with f in [-0.5, 0.5] and a degree-6 polynomial (about 2 ulp) */
INLINE float32x4_t exp4(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.33654f)), vdupq_n_f32(88.37626f));
    float32x4_t t = vmulq_n_f32(x, 1.44269504088896341f);
    float32x4_t n = vrndnq_f32(t);
    float32x4_t f = vsubq_f32(t, n);
    float32x4_t p = vdupq_n_f32(1.535336188319500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.339887440266574e-3f), p, f);
    p = vfmaq_f32(vdupq_n_f32(9.618437357674640e-3f), p, f);
    p = vfmaq_f32(vdupq_n_f32(5.550332471162809e-2f), p, f);
    p = vfmaq_f32(vdupq_n_f32(2.402264791363012e-1f), p, f);
    p = vfmaq_f32(vdupq_n_f32(6.931472028550421e-1f), p, f);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, f);
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

/* g = silu(g) * u, four lanes at once */
static void silu_mul(float *g, const float *u, int n) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t x = vld1q_f32(g + i);
        float32x4_t s = vdivq_f32(x, vaddq_f32(one, exp4(vnegq_f32(x))));
        vst1q_f32(g + i, vmulq_f32(s, vld1q_f32(u + i)));
    }
    for (; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

INLINE void softmax_scaled(float *a, int n, float scale) {
    float32x4_t mx = vdupq_n_f32(-INFINITY);
    int s = 0;
    for (; s + 4 <= n; s += 4) mx = vmaxq_f32(mx, vld1q_f32(a + s));
    float m = vmaxvq_f32(mx);
    for (; s < n; s++) m = a[s] > m ? a[s] : m;
    const float ms = m * scale;
    float32x4_t sum = vdupq_n_f32(0.0f);
    for (s = 0; s + 4 <= n; s += 4) {
        float32x4_t e = exp4(vsubq_f32(vmulq_n_f32(vld1q_f32(a + s), scale), vdupq_n_f32(ms)));
        vst1q_f32(a + s, e);
        sum = vaddq_f32(sum, e);
    }
    float tail = 0.0f;
    if (s < n) {
        float buf[4] = {0, 0, 0, 0};
        for (int k = 0; k < n - s; k++) buf[k] = a[s + k] * scale - ms;
        vst1q_f32(buf, exp4(vld1q_f32(buf)));
        for (int k = 0; k < n - s; k++) {
            a[s + k] = buf[k];
            tail += buf[k];
        }
    }
    const float inv = 1.0f / (vaddvq_f32(sum) + tail);
    for (s = 0; s + 4 <= n; s += 4) vst1q_f32(a + s, vmulq_n_f32(vld1q_f32(a + s), inv));
    for (; s < n; s++) a[s] *= inv;
}

/* out[j] = sum_s p[j][s] * V[s] for the J <= 4 heads whose probabilities start at p0,
 * 8 values per pass; v_type is a constant wherever this is inlined */
INLINE void weighted_values(int v_type, const float *p0, int J, const void *v, size_t v_stride, int n_pos, int hd,
                            float *out) {
    const size_t row_bytes = v_stride * (v_type == PL_TYPE_F16 ? 2 : 4);
    int c = 0;
    for (; c + 8 <= hd; c += 8) {
        float32x4_t acc[4][2];
        for (int j = 0; j < 4; j++) acc[j][0] = acc[j][1] = vdupq_n_f32(0.0f);
        for (int s = 0; s < n_pos; s++) {
            const void *vr = (const char *)v + (size_t)s * row_bytes;
            if (s + 8 < n_pos && (c * (v_type == PL_TYPE_F16 ? 2 : 4)) % 64 == 0) /* once per line; see key_scores */
                __builtin_prefetch((const char *)vr + 8 * row_bytes + (size_t)c * (v_type == PL_TYPE_F16 ? 2 : 4));
            float32x4_t v0 = load4(v_type, vr, c), v1 = load4(v_type, vr, c + 4);
            for (int j = 0; j < J; j++) {
                float pj = p0[(size_t)j * n_pos + s];
                acc[j][0] = vfmaq_n_f32(acc[j][0], v0, pj);
                acc[j][1] = vfmaq_n_f32(acc[j][1], v1, pj);
            }
        }
        for (int j = 0; j < J; j++) {
            vst1q_f32(out + (size_t)j * hd + c, acc[j][0]);
            vst1q_f32(out + (size_t)j * hd + c + 4, acc[j][1]);
        }
    }
    for (; c < hd; c++)
        for (int j = 0; j < J; j++) {
            float o = 0.0f;
            for (int s = 0; s < n_pos; s++) o += p0[(size_t)j * n_pos + s] * load1(v_type, (const char *)v + (size_t)s * row_bytes, c);
            out[(size_t)j * hd + c] = o;
        }
}

/* Unscaled scores of J <= 3 query heads against the first n_pos keys of one head's
 * key blocks (kernels.h): per block, q[d] x 16 keys of dimension d, for every d. The
 * block two on is asked for meanwhile, as the x86 kernels do (decode's cache has been
 * pushed out by the weights streamed since the last token; on x86 this and the
 * per-thread head runs of forward.c's attention() shortened a token at a few hundred
 * positions; not measured on ARM hardware). */
INLINE void key_scores(int k_type, const float *q0, int J, int hd, const void *k, int n_pos, float *att) {
    const size_t row_bytes = (size_t)PL_KV_BLOCK * (k_type == PL_TYPE_F16 ? 2 : 4);
    for (int p0 = 0; p0 < n_pos; p0 += PL_KV_BLOCK) {
        const char *blk = (const char *)k + (size_t)(p0 / PL_KV_BLOCK) * hd * row_bytes;
        float32x4_t acc[3][4];
        for (int j = 0; j < 3; j++)
            for (int i = 0; i < 4; i++) acc[j][i] = vdupq_n_f32(0.0f);
        const char *ahead = p0 + 2 * PL_KV_BLOCK < n_pos ? blk + 2 * (size_t)hd * row_bytes : NULL;
        for (int d = 0; d < hd; d++) {
            const void *row = blk + (size_t)d * row_bytes;
            float32x4_t kv[4];
            if (ahead && (d * row_bytes) % 64 == 0) __builtin_prefetch(ahead + (size_t)d * row_bytes);
            for (int i = 0; i < 4; i++) kv[i] = load4(k_type, row, 4 * i);
            for (int j = 0; j < J; j++) {
                const float qd = q0[(size_t)j * hd + d];
                for (int i = 0; i < 4; i++) acc[j][i] = vfmaq_n_f32(acc[j][i], kv[i], qd);
            }
        }
        const int n = n_pos - p0 < PL_KV_BLOCK ? n_pos - p0 : PL_KV_BLOCK;
        for (int j = 0; j < J; j++) {
            float tmp[PL_KV_BLOCK];
            for (int i = 0; i < 4; i++) vst1q_f32(tmp + 4 * i, acc[j][i]);
            memcpy(att + (size_t)j * n_pos + p0, tmp, (size_t)n * sizeof(float)); /* lanes past n_pos: stale keys */
        }
    }
}

/* The same job as pl_attend_avx2 (see kernels.h): scores from the transposed key
 * blocks, vectorised softmax, weighted value sum 4 heads x 8 values per pass. */
void pl_attend_neon(const float *q, int group, int hd, int k_type, const void *k, int v_type, const void *v,
                    size_t v_stride, int n_pos, float scale, float *out, float *att) {
    for (int j0 = 0; j0 < group; j0 += 3) {
        const int J = group - j0 < 3 ? group - j0 : 3;
        if (k_type == PL_TYPE_F16) key_scores(PL_TYPE_F16, q + (size_t)j0 * hd, J, hd, k, n_pos, att + (size_t)j0 * n_pos);
        else key_scores(PL_TYPE_F32, q + (size_t)j0 * hd, J, hd, k, n_pos, att + (size_t)j0 * n_pos);
    }
    for (int j = 0; j < group; j++) softmax_scaled(att + (size_t)j * n_pos, n_pos, scale);
    for (int j0 = 0; j0 < group; j0 += 4) {
        const int J = group - j0 < 4 ? group - j0 : 4;
        const float *p0 = att + (size_t)j0 * n_pos;
        if (v_type == PL_TYPE_F16) weighted_values(PL_TYPE_F16, p0, J, v, v_stride, n_pos, hd, out + (size_t)j0 * hd);
        else weighted_values(PL_TYPE_F32, p0, J, v, v_stride, n_pos, hd, out + (size_t)j0 * hd);
    }
}

/* vcvt_f16_f32 rounds by the FPCR mode, round to nearest even unless a program changed it */
static void to_f16(const float *x, pl_fp16 *y, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; i++) y[i] = f32_to_fp16(x[i]);
}

/* the K-quant entries: kquants_neon.c */
const pl_kernel_set pl_kernels_neon =
    PL_SIMD_KERNEL_SET("neon", pl_attend_neon, PL_KQ_TYPES(PL_KQ_ROWS_NEON), PL_KQ_TYPES(PL_KQ_TILE_NEON),
                       PL_NO_ROWS_INVARIANT);

#endif
