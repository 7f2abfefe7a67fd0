/*
 * quants.c - scalar dequantization of every supported tensor type.
 * These are the definitions of the formats; the fast kernels never call them
 * per token except to look up one embedding row.
 */
#include "internal.h"
#include "quants.h"

static void dequantize_q8_0(const block_q8_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < QK; j++) y[i * QK + j] = d * b[i].qs[j];
    }
}

static void dequantize_q4_0(const block_q4_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[i * QK + j] = d * ((b[i].qs[j] & 0x0f) - 8);
            y[i * QK + j + QK / 2] = d * ((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void dequantize_q4_1(const block_q4_1 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = fp16_to_f32(b[i].d);
        float m = fp16_to_f32(b[i].m);
        for (int j = 0; j < QK / 2; j++) {
            y[i * QK + j] = d * (b[i].qs[j] & 0x0f) + m;
            y[i * QK + j + QK / 2] = d * (b[i].qs[j] >> 4) + m;
        }
    }
}

void dequantize_row(int type, const void *src, float *dst, int64_t n) {
    switch (type) {
    case PL_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case PL_TYPE_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = fp16_to_f32(((const pl_fp16 *)src)[i]);
        break;
    case PL_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(((const pl_bf16 *)src)[i]);
        break;
    case PL_TYPE_Q8_0: dequantize_q8_0(src, dst, n / QK); break;
    case PL_TYPE_Q4_0: dequantize_q4_0(src, dst, n / QK); break;
    case PL_TYPE_Q4_1: dequantize_q4_1(src, dst, n / QK); break;
    }
}

int pl_dequantize(int type, const void *src, float *dst, int64_t n) {
    if (!pl_type_supported(type)) {
        pl_set_error("cannot dequantize tensor type %s (%d)", pl_type_name(type), type);
        return -1;
    }
    if (pl_type_nbytes(type, n) < 0) {
        pl_set_error("%lld elements is not a whole number of %s blocks", (long long)n, pl_type_name(type));
        return -1;
    }
    dequantize_row(type, src, dst, n);
    return 0;
}
