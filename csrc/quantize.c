/*
 * quantize.c - rows of floats into GGUF block types, for `python -m pyllama.quantize`:
 * the 32-value types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) and the K-quants (Q2_K..Q6_K).
 *
 * The legacy types round every block against its extreme values, which is what the
 * format was designed around and what every GGUF writer does. The K-quants and IQ4_NL
 * have more freedom (a scale, sometimes a minimum, per sub-block, and a second-level
 * scale over those), and their quality depends on choosing them well: for a series of
 * trial scales the values are rounded to the integer grid, then the scale (and minimum)
 * that best fit those integers are solved in closed form by weighted least squares, and
 * the trial with the smallest weighted error wins. Once the sub-block scales themselves
 * have been quantized, the values are rounded again against the scales actually stored.
 *
 * pl_quantize_rows converts the source rows (F32, F16, BF16, or any type the core can
 * dequantize) one at a time into a per-thread scratch row, so a tensor never needs a full
 * float copy, and spreads the rows over OpenMP threads. Where the kernel set in use is AVX2
 * or AVX-512, the K-quant scale searches and the F16 conversion run in quantize_avx2.c,
 * which gives the same bytes as the code here (the definition) in a fraction of the time.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "quants.h"

#if defined(__x86_64__) || defined(_M_X64)
/* quantize_avx2.c: the same results as the scalar code here, bit for bit */
void pl_fit_k4_avx2(const float *x, int nmax, float first, int n_steps, uint8_t *q, float *sc, float *mn);
void pl_fit_symmetric16_avx2(const float *x, int nmax, int n_trials, int refine, uint8_t *q, float *sc);
void pl_f16_to_f32_avx2(const pl_fp16 *src, float *dst, int64_t n);
#endif

/* Below this a sub-block counts as all zeros (its scale would be denormal noise). */
#define TINY 1e-15f

/* Round to the nearest integer, ties to even, for |f| < 2^22: adding 1.5 * 2^23 moves the
 * integer part into the low mantissa bits, where float addition has already rounded it.
 * (lrintf is a library call on baseline x86-64; this is the hot operation here.) */
static inline int round_int(float f) {
    float v = f + 12582912.f;
    int32_t bits;
    memcpy(&bits, &v, 4);
    return (bits & 0x007fffff) - 0x00400000;
}

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The element with the largest magnitude, with its sign (NaN-free input assumed). */
static float signed_absmax(const float *x, int n) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) { amax = a; max = x[i]; }
    }
    return max;
}

/* ---- the 32-value legacy types ---- */

static void quantize_q8_0(const float *x, block_q8_0 *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += QK) {
        float amax = fabsf(signed_absmax(x, QK));
        float d = amax / 127.f, id = d ? 1.f / d : 0.f;
        y[b].d = f32_to_fp16(d);
        for (int i = 0; i < QK; i++) y[b].qs[i] = (int8_t)round_int(x[i] * id);
    }
}

/* Symmetric 4/5-bit blocks: the extreme value maps to -2^(bits-1) exactly, so the scale's sign
 * follows it and the opposite side keeps one more step (q in 0..2^bits-1, zero at 2^(bits-1)). */
static float symmetric_block(const float *x, int bits, uint8_t *q) {
    const int half = 1 << (bits - 1), top = (1 << bits) - 1;
    float d = signed_absmax(x, QK) / -(float)half, id = d ? 1.f / d : 0.f;
    for (int i = 0; i < QK; i++) q[i] = (uint8_t)clampi((int)(x[i] * id + half + 0.5f), 0, top);
    return d;
}

/* Affine 4/5-bit blocks: q in 0..2^bits-1 spans [min, max]. */
static float affine_block(const float *x, int bits, uint8_t *q, float *min_out) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < QK; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    const int top = (1 << bits) - 1;
    float d = (hi - lo) / top, id = d ? 1.f / d : 0.f;
    for (int i = 0; i < QK; i++) q[i] = (uint8_t)clampi((int)((x[i] - lo) * id + 0.5f), 0, top);
    *min_out = lo;
    return d;
}

/* Low nibbles: byte j holds values j and j+16. Fifth bits: bit j of a little-endian uint32. */
static void pack_nibbles(const uint8_t *q, uint8_t *qs) {
    for (int j = 0; j < QK / 2; j++) qs[j] = (uint8_t)((q[j] & 15) | (q[j + QK / 2] & 15) << 4);
}
static void pack_fifth_bits(const uint8_t *q, uint8_t qh[4]) {
    uint32_t h = 0;
    for (int j = 0; j < QK; j++) h |= (uint32_t)(q[j] >> 4 & 1) << j;
    for (int k = 0; k < 4; k++) qh[k] = (uint8_t)(h >> 8 * k);
}

static void quantize_q4_0(const float *x, block_q4_0 *y, int64_t nb) {
    uint8_t q[QK];
    for (int64_t b = 0; b < nb; b++, x += QK) {
        y[b].d = f32_to_fp16(symmetric_block(x, 4, q));
        pack_nibbles(q, y[b].qs);
    }
}

static void quantize_q5_0(const float *x, block_q5_0 *y, int64_t nb) {
    uint8_t q[QK];
    for (int64_t b = 0; b < nb; b++, x += QK) {
        y[b].d = f32_to_fp16(symmetric_block(x, 5, q));
        pack_nibbles(q, y[b].qs);
        pack_fifth_bits(q, y[b].qh);
    }
}

static void quantize_q4_1(const float *x, block_q4_1 *y, int64_t nb) {
    uint8_t q[QK];
    float m;
    for (int64_t b = 0; b < nb; b++, x += QK) {
        y[b].d = f32_to_fp16(affine_block(x, 4, q, &m));
        y[b].m = f32_to_fp16(m);
        pack_nibbles(q, y[b].qs);
    }
}

static void quantize_q5_1(const float *x, block_q5_1 *y, int64_t nb) {
    uint8_t q[QK];
    float m;
    for (int64_t b = 0; b < nb; b++, x += QK) {
        y[b].d = f32_to_fp16(affine_block(x, 5, q, &m));
        y[b].m = f32_to_fp16(m);
        pack_nibbles(q, y[b].qs);
        pack_fifth_bits(q, y[b].qh);
    }
}

/* ---- scale searches ---- */

/*
 * Fit x[i] ~ scale * q[i] - min with q[i] in 0..nmax and min >= 0 (x's that are all positive
 * get min = 0, so zero stays exactly representable), minimising sum w[i] * err^2 (abs_err:
 * sum w[i] * |err|). Trial inverse scales are (nmax + first + step*k) / (max - min) for
 * k = 0..n_steps; for each, q is rounded and (scale, min) solved by weighted least squares.
 * Each improvement also moves the point the later trials round from (and their range) to
 * the better offset, so the search walks towards it rather than staying on the raw minimum.
 * Returns the scale; *min_out gets min.
 */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *q, float *min_out,
                           float first, float step, int n_steps, int abs_err) {
    float lo = x[0], hi = x[0], sw = 0, swx = 0;
    for (int i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
        sw += w[i];
        swx += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (hi == lo) {
        memset(q, 0, (size_t)n);
        *min_out = -lo;
        return 0.f;
    }
    /* multiply by the inverse, as the trials below do: on values already on a grid the two
     * round differently at exact halves */
    float iscale0 = nmax / (hi - lo), scale = 1 / iscale0, offset = lo, best = 0;
    for (int i = 0; i < n; i++) {
        q[i] = (uint8_t)clampi(round_int(iscale0 * (x[i] - lo)), 0, nmax);
        float e = scale * q[i] + lo - x[i];
        best += w[i] * (abs_err ? fabsf(e) : e * e);
    }
    uint8_t trial[QK_K];
    for (int k = 0; k <= n_steps; k++) {
        float iscale = (nmax + first + step * k) / (hi - offset);
        float sl = 0, sl2 = 0, sxl = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(round_int(iscale * (x[i] - offset)), 0, nmax);
            trial[i] = (uint8_t)l;
            sl += w[i] * l;
            sl2 += w[i] * l * l;
            sxl += w[i] * l * x[i];
        }
        float det = sw * sl2 - sl * sl;
        if (det <= 0) continue;
        float s = (sw * sxl - swx * sl) / det;
        float m = (sl2 * swx - sl * sxl) / det;
        if (m > 0) { /* the offset may only lower values: refit the scale alone */
            m = 0;
            s = sxl / sl2;
        }
        float err = 0;
        for (int i = 0; i < n; i++) {
            float e = s * trial[i] + m - x[i];
            err += w[i] * (abs_err ? fabsf(e) : e * e);
        }
        if (err < best) {
            best = err;
            scale = s;
            offset = m;
            memcpy(q, trial, (size_t)n);
        }
    }
    *min_out = -offset;
    return scale;
}

/*
 * Fit x[i] ~ scale * (q[i] - nmax) with q[i] - nmax in -nmax..nmax-1, minimising
 * sum x[i]^2 * err^2: the inverse scale is tried at -(nmax + 0.1 k) / max for |k| <= n_trials
 * (max: the signed extreme, so it lands on the longer side of the grid) and the best
 * least-squares scale kept. refine: afterwards, give each value in turn the step that the
 * scale fitted to all the others asks for, when that lowers the error (a few passes).
 */
static float fit_scale_symmetric(int n, int nmax, const float *x, uint8_t *q, int n_trials, int refine) {
    float max = signed_absmax(x, n);
    if (fabsf(max) < TINY) {
        memset(q, nmax, (size_t)n);
        return 0.f;
    }
    int l[QK_K], best_l[QK_K];
    float best_sxl = 0, best_sl2 = 0;
    int have = 0;
    for (int k = -n_trials; k <= n_trials; k++) {
        float iscale = -(nmax + 0.1f * k) / max, sxl = 0, sl2 = 0;
        for (int i = 0; i < n; i++) {
            l[i] = clampi(round_int(iscale * x[i]), -nmax, nmax - 1);
            float w = x[i] * x[i];
            sxl += w * x[i] * l[i];
            sl2 += w * l[i] * l[i];
        }
        /* error = sum w x^2 - sxl^2 / sl2: the larger sxl^2 / sl2, the better */
        if (sl2 > 0 && (!have || sxl * sxl * best_sl2 > best_sxl * best_sxl * sl2)) {
            have = 1;
            best_sxl = sxl;
            best_sl2 = sl2;
            memcpy(best_l, l, sizeof(int) * (size_t)n);
        }
    }
    if (!have) {
        memset(q, nmax, (size_t)n);
        return 0.f;
    }
    for (int pass = 0; refine && pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            /* the scale the other values want, and the step x[i] would take under it */
            float w = x[i] * x[i];
            float sxl_o = best_sxl - w * x[i] * best_l[i], sl2_o = best_sl2 - w * (float)(best_l[i] * best_l[i]);
            if (sxl_o == 0) continue;
            int nl = clampi(round_int(x[i] * sl2_o / sxl_o), -nmax, nmax - 1);
            if (nl == best_l[i]) continue;
            float sxl = sxl_o + w * x[i] * nl, sl2 = sl2_o + w * (float)(nl * nl);
            if (sl2 > 0 && sxl * sxl * best_sl2 > best_sxl * best_sxl * sl2) {
                best_l[i] = nl;
                best_sxl = sxl;
                best_sl2 = sl2;
                changed = 1;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) q[i] = (uint8_t)(best_l[i] + nmax);
    return best_sxl / best_sl2;
}

/* ---- K-quants ---- */

/* fit_scale_symmetric for the 16 sub-blocks of 16 of a super-block (simd: quantize_avx2.c's) */
static void fit_symmetric16(const float *x, int nmax, int n_trials, int refine, uint8_t *q, float sc[16], int simd) {
#if defined(__x86_64__) || defined(_M_X64)
    if (simd) {
        pl_fit_symmetric16_avx2(x, nmax, n_trials, refine, q, sc);
        pl_fit_symmetric16_avx2(x + 128, nmax, n_trials, refine, q + 128, sc + 8);
        return;
    }
#endif
    for (int j = 0; j < 16; j++) sc[j] = fit_scale_symmetric(16, nmax, x + 16 * j, q + 16 * j, n_trials, refine);
}

/* The 6-bit scale and minimum of sub-block j in the 12 bytes of Q4_K / Q5_K. */
static void put_scale_min_k4(int j, int sc, int m, uint8_t *s) {
    if (j < 4) {
        s[j] = (uint8_t)sc;
        s[j + 4] = (uint8_t)m;
    } else {
        s[j + 4] = (uint8_t)((sc & 15) | (m & 15) << 4);
        s[j - 4] |= (uint8_t)((sc >> 4) << 6);
        s[j] |= (uint8_t)((m >> 4) << 6);
    }
}
static void get_scale_min_k4(int j, const uint8_t *s, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
        *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

/*
 * Q4_K and Q5_K: 8 sub-blocks of 32, each fitted as scale * q - min (q up to nmax), then the
 * 8 scales and 8 minimums quantized to 6 bits against their maxima and the values rounded
 * again with the stored scales. Weights rms(x) + |x| favour the large values without
 * ignoring the small ones.
 */
static void fit_k4_superblock(const float *x, int nmax, float first, int n_steps, uint8_t *q, pl_fp16 *d_out,
                              pl_fp16 *dmin_out, uint8_t scales[K_SCALE_SIZE], int simd) {
    float sc[8], mn[8], w[32], max_sc = 0, max_mn = 0;
#if defined(__x86_64__) || defined(_M_X64)
    if (simd) pl_fit_k4_avx2(x, nmax, first, n_steps, q, sc, mn);
#endif
    for (int j = 0; j < 8; j++) {
        if (!simd) {
            const float *xs = x + 32 * j;
            float ss = 0;
            for (int i = 0; i < 32; i++) ss += xs[i] * xs[i];
            float rms = sqrtf(ss / 32);
            for (int i = 0; i < 32; i++) w[i] = rms + fabsf(xs[i]);
            sc[j] = fit_scale_min(32, nmax, xs, w, q + 32 * j, &mn[j], first, 0.1f, n_steps, 0);
        }
        max_sc = sc[j] > max_sc ? sc[j] : max_sc;
        max_mn = mn[j] > max_mn ? mn[j] : max_mn;
    }
    float isc = max_sc > 0 ? 63.f / max_sc : 0.f, imn = max_mn > 0 ? 63.f / max_mn : 0.f;
    memset(scales, 0, K_SCALE_SIZE);
    for (int j = 0; j < 8; j++)
        put_scale_min_k4(j, clampi(round_int(isc * sc[j]), 0, 63), clampi(round_int(imn * mn[j]), 0, 63), scales);
    *d_out = f32_to_fp16(max_sc / 63.f);
    *dmin_out = f32_to_fp16(max_mn / 63.f);
    const float d = fp16_to_f32(*d_out), dmin = fp16_to_f32(*dmin_out);
    for (int j = 0; j < 8; j++) {
        int s, m;
        get_scale_min_k4(j, scales, &s, &m);
        float ds = d * s, dm = dmin * m;
        if (ds == 0) continue;
        for (int i = 0; i < 32; i++) q[32 * j + i] = (uint8_t)clampi(round_int((x[32 * j + i] + dm) / ds), 0, nmax);
    }
}

/* value 64c + i in the low nibble of qs[32c + i], value 64c + 32 + i in its high nibble */
static void pack_k_nibbles(const uint8_t *q, uint8_t *qs) {
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < 32; i++)
            qs[32 * c + i] = (uint8_t)((q[64 * c + i] & 15) | (q[64 * c + 32 + i] & 15) << 4);
}

static void quantize_q4_k(const float *x, block_q4_k *y, int64_t nb, int simd) {
    uint8_t q[QK_K];
    for (int64_t b = 0; b < nb; b++, x += QK_K) {
        fit_k4_superblock(x, 15, -1.f, 20, q, &y[b].d, &y[b].dmin, y[b].scales, simd);
        pack_k_nibbles(q, y[b].qs);
    }
}

static void quantize_q5_k(const float *x, block_q5_k *y, int64_t nb, int simd) {
    uint8_t q[QK_K];
    for (int64_t b = 0; b < nb; b++, x += QK_K) {
        fit_k4_superblock(x, 31, -0.5f, 15, q, &y[b].d, &y[b].dmin, y[b].scales, simd);
        pack_k_nibbles(q, y[b].qs);
        /* the fifth bit of value 32s + i is bit s of qh[i] */
        memset(y[b].qh, 0, sizeof y[b].qh);
        for (int v = 0; v < QK_K; v++) y[b].qh[v % 32] |= (uint8_t)((q[v] >> 4 & 1) << (v / 32));
    }
}

/* 256 values of 0..3 into Q2_K's / Q3_K's qs: value 128h + 32s + i in bits 2s of qs[32h + i]. */
static void pack_2bit(const uint8_t *q, uint8_t *qs) {
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 32; i++) {
            const uint8_t *v = q + 128 * h + i;
            qs[32 * h + i] = (uint8_t)(v[0] | v[32] << 2 | v[64] << 4 | v[96] << 6);
        }
}

/*
 * Q2_K: 16 sub-blocks of 16, fitted as scale * q - min with q in 0..3 (weights |x|, absolute
 * error: with four levels the squared error lets outliers pull the grid too far), then
 * scales and minimums to 4 bits each.
 */
static void quantize_q2_k(const float *x, block_q2_k *y, int64_t nb) {
    uint8_t q[QK_K];
    for (int64_t b = 0; b < nb; b++, x += QK_K) {
        float sc[16], mn[16], w[16], max_sc = 0, max_mn = 0;
        for (int j = 0; j < 16; j++) {
            for (int i = 0; i < 16; i++) w[i] = fabsf(x[16 * j + i]);
            sc[j] = fit_scale_min(16, 3, x + 16 * j, w, q + 16 * j, &mn[j], -0.5f, 0.1f, 15, 1);
            max_sc = sc[j] > max_sc ? sc[j] : max_sc;
            max_mn = mn[j] > max_mn ? mn[j] : max_mn;
        }
        float isc = max_sc > 0 ? 15.f / max_sc : 0.f, imn = max_mn > 0 ? 15.f / max_mn : 0.f;
        for (int j = 0; j < 16; j++)
            y[b].scales[j] = (uint8_t)(clampi(round_int(isc * sc[j]), 0, 15) | clampi(round_int(imn * mn[j]), 0, 15) << 4);
        y[b].d = f32_to_fp16(max_sc / 15.f);
        y[b].dmin = f32_to_fp16(max_mn / 15.f);
        const float d = fp16_to_f32(y[b].d), dmin = fp16_to_f32(y[b].dmin);
        for (int j = 0; j < 16; j++) {
            float ds = d * (y[b].scales[j] & 15), dm = dmin * (y[b].scales[j] >> 4);
            if (ds == 0) continue;
            for (int i = 0; i < 16; i++) q[16 * j + i] = (uint8_t)clampi(round_int((x[16 * j + i] + dm) / ds), 0, 3);
        }
        pack_2bit(q, y[b].qs);
    }
}

/* the value of v[0..n) that is largest in magnitude (the first of equals), 0 for none */
static float largest_magnitude(const float *v, int n) {
    float m = 0;
    for (int j = 0; j < n; j++)
        if (fabsf(v[j]) > fabsf(m)) m = v[j];
    return m;
}

/*
 * Q3_K: 16 sub-blocks of 16 with q - 4 in -4..3, fitted symmetrically (one trial scale, then
 * refined: on this coarse grid more trial scales chosen by the x^2-weighted error raise the
 * plain error), then the signed scales to 6 bits against the one of largest magnitude (so it
 * lands on -32).
 */
static void quantize_q3_k(const float *x, block_q3_k *y, int64_t nb, int simd) {
    uint8_t q[QK_K];
    for (int64_t b = 0; b < nb; b++, x += QK_K) {
        float sc[16];
        fit_symmetric16(x, 4, 0, 1, q, sc, simd);
        const float max_sc = largest_magnitude(sc, 16);
        memset(y[b].scales, 0, sizeof y[b].scales);
        int ls[16] = {0};
        if (max_sc != 0) {
            float isc = -32.f / max_sc;
            for (int j = 0; j < 16; j++) ls[j] = clampi(round_int(isc * sc[j]), -32, 31);
            y[b].d = f32_to_fp16(1.f / isc);
        } else {
            y[b].d = f32_to_fp16(0.f);
        }
        /* 6-bit codes ls + 32: low 4 bits in the nibbles of bytes 0..7 (j and j - 8),
         * high 2 bits of code j at bits 2 * (j / 4) of byte 8 + j % 4 */
        for (int j = 0; j < 16; j++) {
            int code = ls[j] + 32;
            y[b].scales[j % 8] |= (uint8_t)((code & 15) << (j < 8 ? 0 : 4));
            y[b].scales[8 + j % 4] |= (uint8_t)((code >> 4) << (2 * (j / 4)));
        }
        const float d = fp16_to_f32(y[b].d);
        for (int j = 0; j < 16; j++) {
            float ds = d * ls[j];
            if (ds == 0) continue; /* keep the fitted q (its values are ~0 anyway) */
            for (int i = 0; i < 16; i++) q[16 * j + i] = (uint8_t)(clampi(round_int(x[16 * j + i] / ds), -4, 3) + 4);
        }
        /* value v: low 2 bits as in Q2_K; third bit (set: q >= 4) at bit v / 32 of hmask[v % 32] */
        memset(y[b].hmask, 0, sizeof y[b].hmask);
        for (int v = 0; v < QK_K; v++)
            if (q[v] > 3) {
                y[b].hmask[v % 32] |= (uint8_t)(1 << (v / 32));
                q[v] -= 4;
            }
        pack_2bit(q, y[b].qs);
    }
}

/* Q6_K: 16 sub-blocks of 16 with q - 32 in -32..31, int8 scales against the largest (-> -128). */
static void quantize_q6_k(const float *x, block_q6_k *y, int64_t nb, int simd) {
    uint8_t q[QK_K];
    for (int64_t b = 0; b < nb; b++, x += QK_K) {
        float sc[16];
        fit_symmetric16(x, 32, 9, 1, q, sc, simd);
        const float max_sc = largest_magnitude(sc, 16);
        if (fabsf(max_sc) < TINY) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        float isc = -128.f / max_sc;
        y[b].d = f32_to_fp16(1.f / isc);
        for (int j = 0; j < 16; j++) y[b].scales[j] = (int8_t)clampi(round_int(isc * sc[j]), -128, 127);
        const float d = fp16_to_f32(y[b].d);
        for (int j = 0; j < 16; j++) {
            float ds = d * y[b].scales[j];
            if (ds == 0) continue;
            for (int i = 0; i < 16; i++) q[16 * j + i] = (uint8_t)(clampi(round_int(x[16 * j + i] / ds), -32, 31) + 32);
        }
        /* per 128 values (h): 4 low bits of v = 128h + 32s + i in ql[64h + 32(s&1) + i] (high nibble
         * for s >= 2), 2 high bits at bits 2s of qh[32h + i] */
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 32; i++) {
                const uint8_t *v = q + 128 * h + i;
                y[b].ql[64 * h + i] = (uint8_t)((v[0] & 15) | (v[64] & 15) << 4);
                y[b].ql[64 * h + 32 + i] = (uint8_t)((v[32] & 15) | (v[96] & 15) << 4);
                y[b].qh[32 * h + i] = (uint8_t)(v[0] >> 4 | (v[32] >> 4) << 2 | (v[64] >> 4) << 4 | (v[96] >> 4) << 6);
            }
    }
}

/* ---- IQ4_NL ---- */

/* below[k]: index of the last IQ4_VALUES entry <= k - 128, for k - 128 in -127..112 (the
 * table is sorted), so the nearest entry to any v is found with one lookup and one comparison. */
typedef struct {
    uint8_t below[256];
} iq4_lookup;

static void iq4_lookup_init(iq4_lookup *t) {
    int j = 0;
    for (int k = 0; k < 256; k++) {
        while (j < 15 && IQ4_VALUES[j + 1] <= k - 128) j++;
        t->below[k] = (uint8_t)j;
    }
}

/* Index of the table entry nearest to v (ties to the larger). */
static inline int nearest_iq4(const iq4_lookup *t, float v) {
    if (v <= IQ4_VALUES[0]) return 0;
    if (v >= IQ4_VALUES[15]) return 15;
    int f = (int)v;
    f -= v < (float)f; /* floor */
    int lo = t->below[f + 128];
    return v - IQ4_VALUES[lo] < IQ4_VALUES[lo + 1] - v ? lo : lo + 1;
}

/* One block of 32: try scales that put the extreme value near either end of the table, fit
 * d by weighted least squares (weights x^2) for each rounding, keep the best. (Trying as many
 * scales on the +113 side as on the -127 side wins in the weighted error but loses in the
 * plain one.) */
static void quantize_iq4_nl(const float *x, block_iq4_nl *y, int64_t nb) {
    uint8_t q[QK];
    float w[QK];
    iq4_lookup t;
    iq4_lookup_init(&t);
    for (int64_t b = 0; b < nb; b++, x += QK) {
        for (int i = 0; i < QK; i++) w[i] = x[i] * x[i];
        float max = signed_absmax(x, QK);
        if (fabsf(max) < TINY) {
            y[b].d = 0;
            memset(y[b].qs, 0x88, sizeof y[b].qs); /* index 8 is the value nearest zero */
            continue;
        }
        float best_d = 0, best_sqx = 0, best_sq2 = 0;
        int have = 0;
        for (int k = -8; k <= 7; k++) {
            /* the extreme value near the table's -127 end (15 steps around it), and once on
             * the +127 side, where it clamps to the table's end (+113) */
            float id = k < -7 ? -IQ4_VALUES[0] / max : (IQ4_VALUES[0] + k) / max;
            float sqx = 0, sq2 = 0;
            for (int i = 0; i < QK; i++) {
                float qv = IQ4_VALUES[nearest_iq4(&t, id * x[i])];
                sqx += w[i] * qv * x[i];
                sq2 += w[i] * qv * qv;
            }
            if (sq2 > 0 && (!have || sqx * sqx * best_sq2 > best_sqx * best_sqx * sq2)) {
                have = 1;
                best_sqx = sqx;
                best_sq2 = sq2;
                best_d = sqx / sq2;
            }
        }
        y[b].d = f32_to_fp16(best_d);
        float d = fp16_to_f32(y[b].d), id = d ? 1.f / d : 0.f;
        for (int i = 0; i < QK; i++) q[i] = (uint8_t)nearest_iq4(&t, id * x[i]);
        pack_nibbles(q, y[b].qs);
    }
}

/* ---- the public entry points ---- */

typedef struct {
    int type, block, bytes;
} quant_type;

static const quant_type QUANT_TYPES[] = {
    {PL_TYPE_Q4_0, QK, sizeof(block_q4_0)},    {PL_TYPE_Q4_1, QK, sizeof(block_q4_1)},
    {PL_TYPE_Q5_0, QK, sizeof(block_q5_0)},    {PL_TYPE_Q5_1, QK, sizeof(block_q5_1)},
    {PL_TYPE_Q8_0, QK, sizeof(block_q8_0)},    {PL_TYPE_IQ4_NL, QK, sizeof(block_iq4_nl)},
    {PL_TYPE_Q2_K, QK_K, sizeof(block_q2_k)},  {PL_TYPE_Q3_K, QK_K, sizeof(block_q3_k)},
    {PL_TYPE_Q4_K, QK_K, sizeof(block_q4_k)},  {PL_TYPE_Q5_K, QK_K, sizeof(block_q5_k)},
    {PL_TYPE_Q6_K, QK_K, sizeof(block_q6_k)},
};

static const quant_type *find_quant_type(int type) {
    for (size_t i = 0; i < sizeof QUANT_TYPES / sizeof QUANT_TYPES[0]; i++)
        if (QUANT_TYPES[i].type == type) return &QUANT_TYPES[i];
    return NULL;
}

int64_t pl_quantize_row_bytes(int type, int64_t n_per_row) {
    const quant_type *t = find_quant_type(type);
    if (!t || n_per_row <= 0 || n_per_row % t->block) return -1;
    return n_per_row / t->block * t->bytes;
}

/* simd: use quantize_avx2.c (same bytes) */
static void quantize_row(int type, const float *x, void *dst, int64_t n, int simd) {
    switch (type) {
    case PL_TYPE_Q4_0: quantize_q4_0(x, dst, n / QK); break;
    case PL_TYPE_Q4_1: quantize_q4_1(x, dst, n / QK); break;
    case PL_TYPE_Q5_0: quantize_q5_0(x, dst, n / QK); break;
    case PL_TYPE_Q5_1: quantize_q5_1(x, dst, n / QK); break;
    case PL_TYPE_Q8_0: quantize_q8_0(x, dst, n / QK); break;
    case PL_TYPE_IQ4_NL: quantize_iq4_nl(x, dst, n / QK); break;
    case PL_TYPE_Q2_K: quantize_q2_k(x, dst, n / QK_K); break;
    case PL_TYPE_Q3_K: quantize_q3_k(x, dst, n / QK_K, simd); break;
    case PL_TYPE_Q4_K: quantize_q4_k(x, dst, n / QK_K, simd); break;
    case PL_TYPE_Q5_K: quantize_q5_k(x, dst, n / QK_K, simd); break;
    case PL_TYPE_Q6_K: quantize_q6_k(x, dst, n / QK_K, simd); break;
    }
}

/* A NaN or infinity would poison a whole block's scale: refuse it by name of the row. */
static int row_is_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

int pl_quantize_rows(int src_type, const void *src, int dst_type, void *dst, int64_t n_rows, int64_t n_per_row,
                     int n_threads) {
    pl_clear_error();
    int64_t dst_row = pl_quantize_row_bytes(dst_type, n_per_row);
    if (dst_row < 0) {
        pl_set_error("cannot quantize rows of %lld values to %s (%d): not a target type, or the row is not a "
                     "whole number of its blocks", (long long)n_per_row, pl_type_name(dst_type), dst_type);
        return -1;
    }
    if (!pl_type_supported(src_type) || src_type == PL_TYPE_Q4_0R || src_type == PL_TYPE_Q4_1R) {
        pl_set_error("cannot read source tensor type %s (%d)", pl_type_name(src_type), src_type);
        return -1;
    }
    int64_t src_row = pl_type_nbytes(src_type, n_per_row);
    if (src_row < 0) {
        pl_set_error("a row of %lld values is not a whole number of %s blocks", (long long)n_per_row,
                     pl_type_name(src_type));
        return -1;
    }
    if (n_rows < 0 || n_per_row > (1 << 30)) {
        pl_set_error("bad tensor shape: %lld rows of %lld", (long long)n_rows, (long long)n_per_row);
        return -1;
    }
    if (n_threads < 1) n_threads = 1;
    const int isa = pl_current_isa(), simd = isa == PL_ISA_AVX2 || isa == PL_ISA_AVX512;
    int64_t bad_row = -1;
    int oom = 0;
#pragma omp parallel num_threads(n_threads)
    {
        float *buf = malloc((size_t)n_per_row * sizeof(float));
        if (!buf) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(dynamic, 16)
        for (int64_t r = 0; r < n_rows; r++) {
            if (!buf) continue;
            const uint8_t *s = (const uint8_t *)src + r * src_row;
#if defined(__x86_64__) || defined(_M_X64)
            if (simd && src_type == PL_TYPE_F16) pl_f16_to_f32_avx2((const pl_fp16 *)s, buf, n_per_row);
            else
#endif
                dequantize_row(src_type, s, buf, n_per_row);
            if (!row_is_finite(buf, n_per_row)) {
#pragma omp critical(pl_quantize_bad)
                if (bad_row < 0 || r < bad_row) bad_row = r;
                continue;
            }
            quantize_row(dst_type, buf, (uint8_t *)dst + r * dst_row, n_per_row, simd);
        }
        free(buf);
    }
    if (oom) {
        pl_set_error("out of memory for a row buffer of %lld floats", (long long)n_per_row);
        return -1;
    }
    if (bad_row >= 0) {
        pl_set_error("row %lld holds a NaN or infinity", (long long)bad_row);
        return -1;
    }
    return 0;
}
