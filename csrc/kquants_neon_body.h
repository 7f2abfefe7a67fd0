/*
 * kquants_neon_body.h - the rows and tiles of kquants_neon.c, written once and included
 * there twice: with KQ_SDOT 1 (functions suffixed _sdot, built for the dot-product
 * extension) and KQ_SDOT 0 (suffixed _plain, baseline NEON). Only the integer dot
 * products differ; kquants_neon.c's opening comment says how the kernels work.
 */
#if KQ_SDOT
#define KQ_FN(name) name##_sdot
#define KQ_ATTR DOTPROD
#else
#define KQ_FN(name) name##_plain
#define KQ_ATTR
#endif

/* int32 lanes summing to the dot of 16 int8 values (products fit int16: |v| <= 128, |a| <= 127) */
KQ_ATTR INLINE int32x4_t KQ_FN(kq_dot16)(int8x16_t v, int8x16_t a) {
#if KQ_SDOT
    return sdot(vdupq_n_s32(0), v, a);
#else
    return vpadalq_s16(vpaddlq_s16(vmull_s8(vget_low_s8(v), vget_low_s8(a))), vmull_high_s8(v, a));
#endif
}

/* the same for 32 values */
KQ_ATTR INLINE int32x4_t KQ_FN(kq_dot32)(int8x16_t v0, int8x16_t a0, int8x16_t v1, int8x16_t a1) {
#if KQ_SDOT
    return sdot(sdot(vdupq_n_s32(0), v0, a0), v1, a1);
#else
    int32x4_t s = vpaddlq_s16(vmull_s8(vget_low_s8(v0), vget_low_s8(a0)));
    s = vpadalq_s16(s, vmull_high_s8(v0, a0));
    s = vpadalq_s16(s, vmull_s8(vget_low_s8(v1), vget_low_s8(a1)));
    return vpadalq_s16(s, vmull_high_s8(v1, a1));
#endif
}

/* R (1 or 2) rows from row r against one activation */
KQ_ATTR INLINE void KQ_FN(kq_rows_r)(int T, int R, const void *w, size_t rb, const block_q8x *a, float *y, int r,
                                     int n) {
    float32x4_t acc[2];
    float off[2];
    const uint8_t *row[2];
    for (int i = 0; i < R; i++) {
        acc[i] = vdupq_n_f32(0.0f);
        off[i] = 0.0f;
        row[i] = (const uint8_t *)ROW(w, rb, r + i);
    }
    if (!KQ_SUPER(T)) {
        for (int b = 0; b < n / QK; b++) {
            const int8x16_t a0 = vld1q_s8(a[b].qs), a1 = vld1q_s8(a[b].qs + 16);
            for (int i = 0; i < R; i++) {
                const uint8_t *blk = row[i] + (size_t)b * KQ_BYTES(T);
                int8x16_t lo, hi;
                kq_values(T, blk, 0, &lo, &hi);
                const int32x4_t p = KQ_FN(kq_dot32)(lo, a0, hi, a1);
                acc[i] = vfmaq_n_f32(acc[i], vcvtq_f32_s32(p), half_at(blk) * a[b].d);
                if (T == PL_TYPE_Q5_1) off[i] += half_at(blk + 2) * a[b].s;
            }
        }
    } else {
        for (int sb = 0; sb < n / QK_K; sb++) {
            kq_hdr h[2];
            const uint8_t *blk[2];
            for (int i = 0; i < R; i++) {
                blk[i] = row[i] + (size_t)sb * KQ_BYTES(T);
                kq_header(T, blk[i], &h[i]);
            }
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                const block_q8x *ab = a + sb * (QK_K / QK) + j;
                const int8x16_t a0 = vld1q_s8(ab->qs), a1 = vld1q_s8(ab->qs + 16);
                /* Q2_K's minimums meet the sums of each half of the activation */
                const int s0 = T == PL_TYPE_Q2_K ? vaddlvq_s8(a0) : 0, s1 = T == PL_TYPE_Q2_K ? vaddlvq_s8(a1) : 0;
                for (int i = 0; i < R; i++) {
                    int8x16_t lo, hi;
                    kq_values(T, blk[i], j, &lo, &hi);
                    int32x4_t p;
                    if (KQ_HALVES(T) == 2)
                        p = vmlaq_n_s32(vmulq_n_s32(KQ_FN(kq_dot16)(lo, a0), h[i].sc[2 * j]), KQ_FN(kq_dot16)(hi, a1),
                                        h[i].sc[2 * j + 1]);
                    else
                        p = vmulq_n_s32(KQ_FN(kq_dot32)(lo, a0, hi, a1), h[i].sc[j]);
                    acc[i] = vfmaq_n_f32(acc[i], vcvtq_f32_s32(p), h[i].d * ab->d);
                    if (T == PL_TYPE_Q4_K || T == PL_TYPE_Q5_K)
                        off[i] -= h[i].dmin * (float)h[i].mn[j] * ab->s;
                    else if (T == PL_TYPE_Q2_K)
                        off[i] -= h[i].dmin * ab->d * (float)(h[i].mn[2 * j] * s0 + h[i].mn[2 * j + 1] * s1);
                }
            }
        }
    }
    for (int i = 0; i < R; i++) y[r + i] = vaddvq_f32(acc[i]) + off[i];
}

KQ_ATTR INLINE void KQ_FN(kq_rows)(int T, const void *w, size_t rb, const block_q8x *a, float *y, int r0, int r1,
                                   int n) {
    int r = r0;
    for (; r + 2 <= r1; r += 2) KQ_FN(kq_rows_r)(T, 2, w, rb, a, y, r, n);
    if (r < r1) KQ_FN(kq_rows_r)(T, 1, w, rb, a, y, r, n);
}

#if KQ_SDOT

/* 4 rows (lanes) x TT tokens (<= 4) over nb packed blocks, added into acc */
KQ_ATTR INLINE void kq_panel_sdot(int T, int TT, const kq_pack4 *pk, int nb, const block_q8x *const *a,
                                  float32x4_t *acc) {
    for (int b = 0; b < nb; b++) {
        const kq_pack4 *p = pk + b;
        for (int t = 0; t < TT; t++) {
            const block_q8x *ab = a[t] + b;
            const int8x16_t a0 = vld1q_s8(ab->qs), a1 = vld1q_s8(ab->qs + 16);
            const int32x4_t s0 = sdot_lanes4(vdupq_n_s32(0), p->q, a0);
            float32x4_t f;
            if (KQ_HALVES(T) == 1) {
                f = vmulq_f32(vcvtq_f32_s32(sdot_lanes4(s0, p->q + 4, a1)), p->d[0]);
            } else {
                const int32x4_t s1 = sdot_lanes4(vdupq_n_s32(0), p->q + 4, a1);
                f = vfmaq_f32(vmulq_f32(vcvtq_f32_s32(s0), p->d[0]), vcvtq_f32_s32(s1), p->d[1]);
            }
            acc[t] = vfmaq_n_f32(acc[t], f, ab->d);
            if (KQ_HAS_M(T)) {
                if (KQ_HALVES(T) == 1) {
                    acc[t] = vfmaq_n_f32(acc[t], p->m[0], ab->s);
                } else {
                    acc[t] = vfmaq_n_f32(acc[t], p->m[0], ab->d * (float)vaddlvq_s8(a0));
                    acc[t] = vfmaq_n_f32(acc[t], p->m[1], ab->d * (float)vaddlvq_s8(a1));
                }
            }
        }
    }
}

/* rows: the rows function of the type, for the rows past the last 4 and for fewer than 4 tokens */
KQ_ATTR INLINE void kq_tile_sdot(int T, pl_rows_fn rows, const void *w, size_t rb, const void *act, size_t as,
                                 float *y, size_t ys, int r0, int r1, int nt, int n) {
    const int nbt = n / QK;
    int r = r0;
    if (nt >= 4) {
        kq_pack4 pk[KQ_KCHUNK];
        for (; r + 4 <= r1; r += 4) {
            for (int b0 = 0; b0 < nbt; b0 += KQ_KCHUNK) {
                const int nb = nbt - b0 < KQ_KCHUNK ? nbt - b0 : KQ_KCHUNK;
                kq_pack_rows(T, (const uint8_t *)w, rb, r, b0, nb, pk);
                for (int t = 0; t < nt; t += 4) {
                    const int TT = nt - t < 4 ? nt - t : 4;
                    const block_q8x *a[4];
                    float32x4_t acc[4];
                    for (int k = 0; k < TT; k++) {
                        a[k] = (const block_q8x *)((const char *)act + (size_t)(t + k) * as) + b0;
                        acc[k] = b0 ? vld1q_f32(y + (size_t)(t + k) * ys + r) : vdupq_n_f32(0.0f);
                    }
                    switch (TT) {
                    case 4: kq_panel_sdot(T, 4, pk, nb, a, acc); break;
                    case 3: kq_panel_sdot(T, 3, pk, nb, a, acc); break;
                    case 2: kq_panel_sdot(T, 2, pk, nb, a, acc); break;
                    default: kq_panel_sdot(T, 1, pk, nb, a, acc); break;
                    }
                    for (int k = 0; k < TT; k++) vst1q_f32(y + (size_t)(t + k) * ys + r, acc[k]);
                }
            }
        }
    }
    for (int t = 0; t < nt && r < r1; t++) rows(w, rb, (const char *)act + (size_t)t * as, y + (size_t)t * ys, r, r1, n);
}

#endif

#undef KQ_FN
#undef KQ_ATTR
