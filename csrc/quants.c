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

/* one row of a repacked type (n values) */
static void dequantize_q4r(int type, const void *row, float *y, int64_t n) {
    const int nb = (int)(n / QK);
    for (int b = 0; b < nb; b++) {
        const q4_block k = q4_block_at(type, row, b, nb);
        const float d = fp16_to_f32(*k.d), m = k.m ? fp16_to_f32(*k.m) : 0.0f;
        const int zero = k.m ? 0 : 8;
        for (int j = 0; j < QK / 2; j++) {
            y[b * QK + j] = d * ((k.qs[j] & 0x0f) - zero) + m;
            y[b * QK + j + QK / 2] = d * ((k.qs[j] >> 4) - zero) + m;
        }
    }
}

void q4_repack_row(int type, void *row, int nb, void *tmp) {
    const int repacked = type == PL_TYPE_Q4_1 ? PL_TYPE_Q4_1R : PL_TYPE_Q4_0R;
    memcpy(tmp, row, (size_t)pl_type_nbytes(type, (int64_t)nb * QK));
    for (int b = 0; b < nb; b++) { /* both layouts as q4_block_at places them */
        const q4_block from = q4_block_at(type, tmp, b, nb), to = q4_block_at(repacked, row, b, nb);
        memcpy((void *)to.d, from.d, sizeof *from.d);
        if (from.m) memcpy((void *)to.m, from.m, sizeof *from.m);
        memcpy((void *)to.qs, from.qs, QK / 2);
    }
}

/* n values of a type; a repacked type's layout is per row, so n must be one row there */
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
    case PL_TYPE_Q4_0R:
    case PL_TYPE_Q4_1R: dequantize_q4r(type, src, dst, n); break;
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
