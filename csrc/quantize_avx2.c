/*
 * quantize_avx2.c - the hot parts of quantize.c with AVX2, giving bit for bit the bytes
 * its scalar code gives (tests/test_quantize.py compares the two).
 *
 * The K-quant scale searches are chains of float sums, one per sub-block, whose order of
 * additions decides the rounding and so the result. Running the 8 sub-blocks of a super-block
 * in the 8 lanes of a vector keeps every chain's order (lane j does exactly sub-block j's
 * scalar operations, as separate IEEE multiplies and adds) while doing 8 chains at once.
 * Multiply-adds are not fused here for that reason (no "fma" in the target, no contraction).
 *
 * Like the kernel files, each function carries its target attribute; quantize.c calls them
 * only when the kernel set in use is AVX2 or AVX-512 (cpuid checked by dispatch.c).
 */
#if defined(__x86_64__) || defined(_M_X64)

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include <immintrin.h>
#include <string.h>

#include "internal.h"
#include "quants.h"

#define QAVX2 __attribute__((target("avx2,f16c")))
#define QAVX2_INLINE static inline __attribute__((always_inline, target("avx2,f16c")))

/* quantize.c's round_int per lane: ties to even for |f| < 2^22 */
QAVX2_INLINE __m256i round8(__m256 f) {
    const __m256i bits = _mm256_castps_si256(_mm256_add_ps(f, _mm256_set1_ps(12582912.f)));
    return _mm256_sub_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}

QAVX2_INLINE __m256i clamp8(__m256i v, int hi) {
    return _mm256_min_epi32(_mm256_max_epi32(v, _mm256_setzero_si256()), _mm256_set1_epi32(hi));
}

/*
 * quantize.c's fit_k4 weights and fit_scale_min(32, nmax, ..., step 0.1, squared error) for
 * sub-blocks 0..7 of the super-block x, sub-block j in lane j: sc[j], mn[j] and the 32 q of
 * each (q + 32 j).
 */
QAVX2 void pl_fit_k4_avx2(const float *x, int nmax, float first, int n_steps, uint8_t *q, float *sc, float *mn) {
    __m256 xt[32], w[32];
    __m256i best_q[32], trial[32];
    for (int i = 0; i < 32; i++)
        xt[i] = _mm256_setr_ps(x[i], x[32 + i], x[64 + i], x[96 + i], x[128 + i], x[160 + i], x[192 + i], x[224 + i]);
    __m256 ss = _mm256_setzero_ps();
    for (int i = 0; i < 32; i++) ss = _mm256_add_ps(ss, _mm256_mul_ps(xt[i], xt[i]));
    const __m256 rms = _mm256_sqrt_ps(_mm256_div_ps(ss, _mm256_set1_ps(32.f)));
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 lo = xt[0], hi = xt[0], sw = _mm256_setzero_ps(), swx = _mm256_setzero_ps();
    for (int i = 0; i < 32; i++) {
        w[i] = _mm256_add_ps(rms, _mm256_and_ps(xt[i], absmask));
        lo = _mm256_min_ps(xt[i], lo);
        hi = _mm256_max_ps(xt[i], hi);
        sw = _mm256_add_ps(sw, w[i]);
        swx = _mm256_add_ps(swx, _mm256_mul_ps(w[i], xt[i]));
    }
    const __m256 zero = _mm256_setzero_ps();
    lo = _mm256_blendv_ps(lo, zero, _mm256_cmp_ps(lo, zero, _CMP_GT_OQ)); /* lo > 0 ? 0 : lo (-0 stays) */
    const __m256 flat = _mm256_cmp_ps(hi, lo, _CMP_EQ_OQ);
    const __m256 iscale0 = _mm256_div_ps(_mm256_set1_ps((float)nmax), _mm256_sub_ps(hi, lo));
    __m256 scale = _mm256_div_ps(_mm256_set1_ps(1.f), iscale0), offset = lo, best = zero;
    for (int i = 0; i < 32; i++) {
        best_q[i] = clamp8(round8(_mm256_mul_ps(iscale0, _mm256_sub_ps(xt[i], lo))), nmax);
        const __m256 e = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, _mm256_cvtepi32_ps(best_q[i])), lo), xt[i]);
        best = _mm256_add_ps(best, _mm256_mul_ps(w[i], _mm256_mul_ps(e, e)));
    }
    const __m256 top = _mm256_add_ps(_mm256_set1_ps((float)nmax), _mm256_set1_ps(first));
    for (int k = 0; k <= n_steps; k++) {
        const __m256 iscale = _mm256_div_ps(_mm256_add_ps(top, _mm256_set1_ps(0.1f * (float)k)), _mm256_sub_ps(hi, offset));
        __m256 sl = zero, sl2 = zero, sxl = zero;
        for (int i = 0; i < 32; i++) {
            trial[i] = clamp8(round8(_mm256_mul_ps(iscale, _mm256_sub_ps(xt[i], offset))), nmax);
            const __m256 wl = _mm256_mul_ps(w[i], _mm256_cvtepi32_ps(trial[i]));
            sl = _mm256_add_ps(sl, wl);
            sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(wl, _mm256_cvtepi32_ps(trial[i])));
            sxl = _mm256_add_ps(sxl, _mm256_mul_ps(wl, xt[i]));
        }
        const __m256 det = _mm256_sub_ps(_mm256_mul_ps(sw, sl2), _mm256_mul_ps(sl, sl));
        const __m256 ok = _mm256_cmp_ps(det, zero, _CMP_GT_OQ);
        if (_mm256_testz_ps(ok, ok)) continue;
        __m256 s = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sw, sxl), _mm256_mul_ps(swx, sl)), det);
        __m256 m = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sl2, swx), _mm256_mul_ps(sl, sxl)), det);
        const __m256 pos = _mm256_cmp_ps(m, zero, _CMP_GT_OQ); /* the offset may only lower values */
        m = _mm256_blendv_ps(m, zero, pos);
        s = _mm256_blendv_ps(s, _mm256_div_ps(sxl, sl2), pos);
        __m256 err = zero;
        for (int i = 0; i < 32; i++) {
            const __m256 e = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(s, _mm256_cvtepi32_ps(trial[i])), m), xt[i]);
            err = _mm256_add_ps(err, _mm256_mul_ps(w[i], _mm256_mul_ps(e, e)));
        }
        const __m256 better = _mm256_and_ps(ok, _mm256_cmp_ps(err, best, _CMP_LT_OQ));
        if (_mm256_testz_ps(better, better)) continue;
        best = _mm256_blendv_ps(best, err, better);
        scale = _mm256_blendv_ps(scale, s, better);
        offset = _mm256_blendv_ps(offset, m, better);
        const __m256i bi = _mm256_castps_si256(better);
        for (int i = 0; i < 32; i++) best_q[i] = _mm256_blendv_epi8(best_q[i], trial[i], bi);
    }
    /* a flat sub-block: q = 0, min = -lo, scale 0 */
    scale = _mm256_blendv_ps(scale, zero, flat);
    offset = _mm256_blendv_ps(offset, lo, flat);
    const __m256i flat_i = _mm256_castps_si256(flat);
    int32_t qv[32][8];
    for (int i = 0; i < 32; i++) _mm256_storeu_si256((__m256i *)qv[i], _mm256_andnot_si256(flat_i, best_q[i]));
    for (int j = 0; j < 8; j++)
        for (int i = 0; i < 32; i++) q[32 * j + i] = (uint8_t)qv[i][j];
    _mm256_storeu_ps(sc, scale);
    _mm256_storeu_ps(mn, _mm256_xor_ps(offset, _mm256_set1_ps(-0.f))); /* -offset */
}

/*
 * quantize.c's fit_scale_symmetric(16, nmax, ..., n_trials, refine) for 8 sub-blocks of 16 at
 * once (x: 128 values, sub-block j in lane j): sc[j] and the 16 q of each (q + 16 j). A lane
 * that a refining pass leaves unchanged would stay so in every later pass: running passes
 * until no lane changes is each lane's own stopping rule.
 */
QAVX2 void pl_fit_symmetric16_avx2(const float *x, int nmax, int n_trials, int refine, uint8_t *q, float *sc) {
    __m256 xt[16], w[16], wx[16];
    __m256i l[16], best_l[16];
    const __m256 zero = _mm256_setzero_ps(), absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 amax = zero, max = zero;
    for (int i = 0; i < 16; i++) {
        xt[i] = _mm256_setr_ps(x[i], x[16 + i], x[32 + i], x[48 + i], x[64 + i], x[80 + i], x[96 + i], x[112 + i]);
        w[i] = _mm256_mul_ps(xt[i], xt[i]);
        wx[i] = _mm256_mul_ps(w[i], xt[i]);
        const __m256 a = _mm256_and_ps(xt[i], absmask), gt = _mm256_cmp_ps(a, amax, _CMP_GT_OQ);
        amax = _mm256_blendv_ps(amax, a, gt);
        max = _mm256_blendv_ps(max, xt[i], gt);
    }
    const __m256 tiny = _mm256_cmp_ps(_mm256_and_ps(max, absmask), _mm256_set1_ps(1e-15f), _CMP_LT_OQ);
    const __m256i lo = _mm256_set1_epi32(-nmax), hi = _mm256_set1_epi32(nmax - 1);
    __m256 best_sxl = zero, best_sl2 = zero, have = zero;
    for (int i = 0; i < 16; i++) best_l[i] = _mm256_setzero_si256();
    for (int k = -n_trials; k <= n_trials; k++) {
        const __m256 iscale = _mm256_div_ps(_mm256_set1_ps(-((float)nmax + 0.1f * (float)k)), max);
        __m256 sxl = zero, sl2 = zero;
        for (int i = 0; i < 16; i++) {
            l[i] = _mm256_min_epi32(_mm256_max_epi32(round8(_mm256_mul_ps(iscale, xt[i])), lo), hi);
            const __m256 lf = _mm256_cvtepi32_ps(l[i]);
            sxl = _mm256_add_ps(sxl, _mm256_mul_ps(wx[i], lf));
            sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(w[i], lf), lf));
        }
        const __m256 gain = _mm256_cmp_ps(_mm256_mul_ps(_mm256_mul_ps(sxl, sxl), best_sl2),
                                          _mm256_mul_ps(_mm256_mul_ps(best_sxl, best_sxl), sl2), _CMP_GT_OQ);
        /* sl2 > 0 && (the first fit || a better one) */
        const __m256 first = _mm256_xor_ps(have, _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
        const __m256 take = _mm256_and_ps(_mm256_cmp_ps(sl2, zero, _CMP_GT_OQ), _mm256_or_ps(first, gain));
        if (_mm256_testz_ps(take, take)) continue;
        have = _mm256_or_ps(have, take);
        best_sxl = _mm256_blendv_ps(best_sxl, sxl, take);
        best_sl2 = _mm256_blendv_ps(best_sl2, sl2, take);
        const __m256i ti = _mm256_castps_si256(take);
        for (int i = 0; i < 16; i++) best_l[i] = _mm256_blendv_epi8(best_l[i], l[i], ti);
    }
    for (int pass = 0; refine && pass < 5; pass++) {
        __m256 changed = zero;
        for (int i = 0; i < 16; i++) {
            const __m256 bl = _mm256_cvtepi32_ps(best_l[i]);
            const __m256 sxl_o = _mm256_sub_ps(best_sxl, _mm256_mul_ps(wx[i], bl));
            const __m256 sl2_o = _mm256_sub_ps(best_sl2, _mm256_mul_ps(w[i], _mm256_cvtepi32_ps(_mm256_mullo_epi32(best_l[i], best_l[i]))));
            const __m256i nl = _mm256_min_epi32(
                _mm256_max_epi32(round8(_mm256_div_ps(_mm256_mul_ps(xt[i], sl2_o), sxl_o)), lo), hi);
            const __m256 nlf = _mm256_cvtepi32_ps(nl);
            const __m256 sxl = _mm256_add_ps(sxl_o, _mm256_mul_ps(wx[i], nlf));
            const __m256 sl2 = _mm256_add_ps(sl2_o, _mm256_mul_ps(w[i], _mm256_cvtepi32_ps(_mm256_mullo_epi32(nl, nl))));
            const __m256 moved = _mm256_andnot_ps(_mm256_cmp_ps(sxl_o, zero, _CMP_EQ_OQ),
                                                  _mm256_castsi256_ps(_mm256_xor_si256(_mm256_cmpeq_epi32(nl, best_l[i]),
                                                                                       _mm256_set1_epi32(-1))));
            const __m256 gain = _mm256_cmp_ps(_mm256_mul_ps(_mm256_mul_ps(sxl, sxl), best_sl2),
                                              _mm256_mul_ps(_mm256_mul_ps(best_sxl, best_sxl), sl2), _CMP_GT_OQ);
            const __m256 take = _mm256_and_ps(_mm256_and_ps(moved, have),
                                              _mm256_and_ps(_mm256_cmp_ps(sl2, zero, _CMP_GT_OQ), gain));
            best_l[i] = _mm256_blendv_epi8(best_l[i], nl, _mm256_castps_si256(take));
            best_sxl = _mm256_blendv_ps(best_sxl, sxl, take);
            best_sl2 = _mm256_blendv_ps(best_sl2, sl2, take);
            changed = _mm256_or_ps(changed, take);
        }
        if (_mm256_testz_ps(changed, changed)) break;
    }
    /* a tiny sub-block, or one no trial fitted: q = nmax (the zero), scale 0 */
    const __m256 none = _mm256_or_ps(tiny, _mm256_andnot_ps(have, _mm256_castsi256_ps(_mm256_set1_epi32(-1))));
    const __m256i none_i = _mm256_castps_si256(none);
    int32_t qv[16][8];
    for (int i = 0; i < 16; i++)
        _mm256_storeu_si256((__m256i *)qv[i], _mm256_add_epi32(_mm256_andnot_si256(none_i, best_l[i]), _mm256_set1_epi32(nmax)));
    for (int j = 0; j < 8; j++)
        for (int i = 0; i < 16; i++) q[16 * j + i] = (uint8_t)qv[i][j];
    _mm256_storeu_ps(sc, _mm256_blendv_ps(_mm256_div_ps(best_sxl, best_sl2), zero, none));
}

/* n halves to floats (F16C converts every half exactly, as fp16_to_f32 does) */
QAVX2 void pl_f16_to_f32_avx2(const pl_fp16 *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = fp16_to_f32(src[i]);
}

#endif
