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

/* the 32 five-bit values of a Q5 block: low nibbles as Q4's, fifth bits from qh (bit j: value j) */
static void unpack_q5(const uint8_t qh[4], const uint8_t qs[QK / 2], int q[QK]) {
    const uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
    for (int j = 0; j < QK / 2; j++) {
        q[j] = (qs[j] & 0x0f) | (int)((h >> j) & 1) << 4;
        q[j + QK / 2] = (qs[j] >> 4) | (int)((h >> (j + QK / 2)) & 1) << 4;
    }
}

static void dequantize_q5_0(const block_q5_0 *b, float *y, int64_t nb) {
    int q[QK];
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_f32(b[i].d);
        unpack_q5(b[i].qh, b[i].qs, q);
        for (int j = 0; j < QK; j++) y[i * QK + j] = d * (float)(q[j] - 16);
    }
}

static void dequantize_q5_1(const block_q5_1 *b, float *y, int64_t nb) {
    int q[QK];
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_f32(b[i].d), m = fp16_to_f32(b[i].m);
        unpack_q5(b[i].qh, b[i].qs, q);
        for (int j = 0; j < QK; j++) y[i * QK + j] = d * (float)q[j] + m;
    }
}

static void dequantize_iq4_nl(const block_iq4_nl *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[i * QK + j] = d * (float)IQ4_VALUES[b[i].qs[j] & 0x0f];
            y[i * QK + j + QK / 2] = d * (float)IQ4_VALUES[b[i].qs[j] >> 4];
        }
    }
}

/* ---- super-blocks of QK_K values ---- */

int is_superblock_type(int type) {
    switch (type) {
    case PL_TYPE_Q2_K:
    case PL_TYPE_Q3_K:
    case PL_TYPE_Q4_K:
    case PL_TYPE_Q5_K:
    case PL_TYPE_Q6_K:
    case PL_TYPE_IQ4_XS: return 1;
    default: return 0;
    }
}

/* Q4_K / Q5_K: eight 6-bit scales and eight 6-bit minimums in 12 bytes. Bytes 0-3 hold the
 * scales of sub-blocks 0-3 (low 6 bits), bytes 4-7 their minimums; sub-blocks 4-7 take their
 * low 4 bits from the nibbles of bytes 8-11 and their top 2 bits from the spare top bits of
 * bytes 0-7. */
static void scales_k4(const uint8_t s[K_SCALE_SIZE], pl_superblock *u) {
    for (int j = 0; j < 4; j++) {
        u->scale[j] = (int8_t)(s[j] & 0x3f);
        u->min[j] = s[j + 4] & 0x3f;
        u->scale[j + 4] = (int8_t)((s[j + 8] & 0x0f) | ((s[j] >> 6) << 4));
        u->min[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

static void unpack_q2_k(const block_q2_k *b, pl_superblock *u) {
    u->d = fp16_to_f32(b->d);
    u->dmin = fp16_to_f32(b->dmin);
    u->sub = 16;
    for (int i = 0; i < 16; i++) {
        u->scale[i] = (int8_t)(b->scales[i] & 0x0f);
        u->min[i] = b->scales[i] >> 4;
    }
    /* each half of 128 values: byte l of its 32 holds values l, l+32, l+64, l+96 in 2-bit fields */
    for (int h = 0; h < 2; h++)
        for (int s = 0; s < 4; s++)
            for (int l = 0; l < 32; l++) u->q[h * 128 + s * 32 + l] = (int8_t)((b->qs[h * 32 + l] >> (2 * s)) & 3);
}

static void unpack_q3_k(const block_q3_k *b, pl_superblock *u) {
    u->d = fp16_to_f32(b->d);
    u->dmin = 0.0f;
    u->sub = 16;
    /* scale i: low 4 bits from the nibbles of bytes 0-7 (low nibbles first), the top 2 bits
     * from bytes 8-11 (byte 8 + i % 4, bit pair i / 4) */
    for (int i = 0; i < 16; i++) {
        const int lo = i < 8 ? b->scales[i] & 0x0f : b->scales[i - 8] >> 4;
        const int hi = (b->scales[8 + i % 4] >> (2 * (i / 4))) & 3;
        u->scale[i] = (int8_t)((lo | hi << 4) - 32);
        u->min[i] = 0;
    }
    /* 2 low bits as in Q2_K; the third bit of value i is bit i / 32 of hmask[i % 32], and a
     * clear bit means the value is 4 lower */
    for (int h = 0; h < 2; h++)
        for (int s = 0; s < 4; s++)
            for (int l = 0; l < 32; l++) {
                const int i = h * 128 + s * 32 + l;
                const int low = (b->qs[h * 32 + l] >> (2 * s)) & 3;
                const int high = (b->hmask[l] >> (i / 32)) & 1;
                u->q[i] = (int8_t)(low - (high ? 0 : 4));
            }
}

/* Q4_K and Q5_K (qh non-NULL: fifth bit of value j * 32 + l is bit j of qh[l]) */
static void unpack_q45_k(pl_fp16 d, pl_fp16 dmin, const uint8_t *scales, const uint8_t *qh, const uint8_t *qs,
                         pl_superblock *u) {
    u->d = fp16_to_f32(d);
    u->dmin = fp16_to_f32(dmin);
    u->sub = 32;
    scales_k4(scales, u);
    for (int i = 8; i < 16; i++) u->scale[i] = u->min[i] = 0;
    /* sub-block j: the low (j even) or high (j odd) nibbles of bytes (j / 2) * 32 .. + 31 */
    for (int j = 0; j < 8; j++)
        for (int l = 0; l < 32; l++) {
            int q = (qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0f;
            if (qh) q |= ((qh[l] >> j) & 1) << 4;
            u->q[j * 32 + l] = (int8_t)q;
        }
}

static void unpack_q6_k(const block_q6_k *b, pl_superblock *u) {
    u->d = fp16_to_f32(b->d);
    u->dmin = 0.0f;
    u->sub = 16;
    for (int i = 0; i < 16; i++) {
        u->scale[i] = b->scales[i];
        u->min[i] = 0;
    }
    /* each half of 128 values: ql byte l (of 64) holds values l (low nibble) and l + 64 (high);
     * qh byte l (of 32) holds the top 2 bits of values l, l+32, l+64, l+96 */
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++)
            for (int s = 0; s < 4; s++) {
                const int low = (b->ql[h * 64 + (s % 2) * 32 + l] >> (4 * (s / 2))) & 0x0f;
                const int high = (b->qh[h * 32 + l] >> (2 * s)) & 3;
                u->q[h * 128 + s * 32 + l] = (int8_t)((low | high << 4) - 32);
            }
}

static void unpack_iq4_xs(const block_iq4_xs *b, pl_superblock *u) {
    u->d = fp16_to_f32(b->d);
    u->dmin = 0.0f;
    u->sub = 32;
    for (int j = 0; j < 8; j++) {
        const int lo = (b->scales_l[j / 2] >> (4 * (j % 2))) & 0x0f;
        const int hi = (b->scales_h >> (2 * j)) & 3;
        u->scale[j] = (int8_t)((lo | hi << 4) - 32);
        u->min[j] = 0;
        /* sub-block j as an IQ4_NL block: byte l holds values l and l + 16 */
        for (int l = 0; l < 16; l++) {
            u->q[j * 32 + l] = IQ4_VALUES[b->qs[j * 16 + l] & 0x0f];
            u->q[j * 32 + l + 16] = IQ4_VALUES[b->qs[j * 16 + l] >> 4];
        }
    }
    for (int j = 8; j < 16; j++) u->scale[j] = u->min[j] = 0;
}

void unpack_superblock(int type, const void *row, int b, pl_superblock *u) {
    const char *at = (const char *)row + (size_t)b * (size_t)pl_type_block_bytes(type);
    switch (type) {
    case PL_TYPE_Q2_K: unpack_q2_k((const block_q2_k *)at, u); break;
    case PL_TYPE_Q3_K: unpack_q3_k((const block_q3_k *)at, u); break;
    case PL_TYPE_Q4_K: {
        const block_q4_k *k = (const block_q4_k *)at;
        unpack_q45_k(k->d, k->dmin, k->scales, NULL, k->qs, u);
        break;
    }
    case PL_TYPE_Q5_K: {
        const block_q5_k *k = (const block_q5_k *)at;
        unpack_q45_k(k->d, k->dmin, k->scales, k->qh, k->qs, u);
        break;
    }
    case PL_TYPE_Q6_K: unpack_q6_k((const block_q6_k *)at, u); break;
    case PL_TYPE_IQ4_XS: unpack_iq4_xs((const block_iq4_xs *)at, u); break;
    }
}

static void dequantize_superblocks(int type, const void *src, float *y, int64_t nb) {
    pl_superblock u;
    for (int64_t b = 0; b < nb; b++) {
        unpack_superblock(type, (const char *)src + (size_t)b * (size_t)pl_type_block_bytes(type), 0, &u);
        for (int i = 0; i < QK_K; i++) {
            const float dl = u.d * (float)u.scale[i / u.sub], ml = u.dmin * (float)u.min[i / u.sub];
            y[b * QK_K + i] = dl * (float)u.q[i] - ml;
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

/* Where block b of a row's file layout keeps its scale, minimum and quants (Q4_0 / Q4_1 / Q8_0). */
static size_t file_block_bytes(int type) {
    return type == PL_TYPE_Q8_0 ? sizeof(block_q8_0) : type == PL_TYPE_Q4_1 ? sizeof(block_q4_1) : sizeof(block_q4_0);
}

/* n bytes from the file layout to the panel (to_panel) or back */
static void copy_way(uint8_t *panel_side, uint8_t *file_side, size_t n, int to_panel) {
    if (to_panel) memcpy(panel_side, file_side, n);
    else memcpy(file_side, panel_side, n);
}

/* Block b of row i between the file layout (the row at `row`) and panel block pb, either way. */
static void panel_block_copy(int type, uint8_t *row, uint8_t *pb, int i, int b, int to_panel) {
    uint8_t *blk = row + file_block_bytes(type) * (size_t)b;
    const int q41 = type == PL_TYPE_Q4_1, words = type == PL_TYPE_Q8_0 ? 8 : 4;
    const size_t qs_at = (size_t)(q41 ? 2 : 1) * PANEL_ROWS * sizeof(pl_fp16); /* after d (and m) */
    copy_way(pb + 2 * (size_t)i, blk, 2, to_panel);
    if (q41) copy_way(pb + 2 * ((size_t)PANEL_ROWS + i), blk + 2, 2, to_panel);
    uint8_t *fq = blk + (q41 ? 4 : 2);
    for (int h = 0; h < words; h++) copy_way(pb + qs_at + ((size_t)h * PANEL_ROWS + i) * 4, fq + 4 * h, 4, to_panel);
}

void q_panel_repack(int type, void *rows, size_t rb, int nb, void *tmp) {
    const size_t pbb = PANEL_ROWS * file_block_bytes(type);
    memcpy(tmp, rows, PANEL_ROWS * rb);
    for (int b = 0; b < nb; b++)
        for (int i = 0; i < PANEL_ROWS; i++)
            panel_block_copy(type, (uint8_t *)tmp + (size_t)i * rb, (uint8_t *)rows + pbb * (size_t)b, i, b, 1);
}

void q_panel_blocks(int type, const void *w, size_t rb, int r, int b0, int nb, void *out) {
    const int base = q4_base(type);
    const size_t pbb = PANEL_ROWS * file_block_bytes(base);
    uint8_t *panel = (uint8_t *)(uintptr_t)w + (size_t)(r / PANEL_ROWS) * PANEL_ROWS * rb;
    for (int b = 0; b < nb; b++)
        panel_block_copy(base, (uint8_t *)out, panel + pbb * (size_t)(b0 + b), r % PANEL_ROWS, b, 0);
}

void dequantize_matrix_row(int type, const void *w, size_t rb, int64_t r, float *dst, int64_t n) {
    if (!q_paneled(type)) {
        dequantize_row(type, (const char *)w + (size_t)r * rb, dst, n);
        return;
    }
    uint8_t row[PANEL_ROWS * sizeof(block_q8_0)]; /* a few blocks at a time */
    const int base = q4_base(type), nb = (int)(n / QK), step = (int)(sizeof row / file_block_bytes(base));
    for (int b0 = 0; b0 < nb; b0 += step) {
        const int k = nb - b0 < step ? nb - b0 : step;
        q_panel_blocks(type, w, rb, (int)r, b0, k, row);
        dequantize_row(base, row, dst + (size_t)b0 * QK, (int64_t)k * QK);
    }
}

void q4k_repack_group(void *rows, size_t rb, int nsb, void *tmp) {
    memcpy(tmp, rows, Q4KR_ROWS * rb);
    block_q4_kr *out = (block_q4_kr *)rows;
    for (int i = 0; i < nsb; i++)
        for (int r = 0; r < Q4KR_ROWS; r++) {
            const block_q4_k *b = (const block_q4_k *)((const char *)tmp + (size_t)r * rb) + i;
            out[i].d[r] = b->d;
            out[i].dmin[r] = b->dmin;
            for (int k = 0; k < K_SCALE_SIZE; k++) out[i].scales[k][r] = b->scales[k];
            for (int c = 0; c < 4; c++)
                for (int g = 0; g < 8; g++) memcpy(out[i].qs[c][g][r], b->qs + 32 * c + 4 * g, 4);
        }
}

void q4kr_block(const void *w, size_t rb, int r, int sb, block_q4_k *out) {
    const block_q4_kr *grp = (const block_q4_kr *)((const char *)w + (size_t)(r / Q4KR_ROWS) * Q4KR_ROWS * rb);
    const block_q4_kr *x = grp + sb;
    const int l = r % Q4KR_ROWS;
    out->d = x->d[l];
    out->dmin = x->dmin[l];
    for (int k = 0; k < K_SCALE_SIZE; k++) out->scales[k] = x->scales[k][l];
    for (int c = 0; c < 4; c++)
        for (int g = 0; g < 8; g++) memcpy(out->qs + 32 * c + 4 * g, x->qs[c][g][l], 4);
}

void q6k_repack_group(void *rows, size_t rb, int nsb, void *tmp) {
    memcpy(tmp, rows, Q4KR_ROWS * rb);
    block_q6_kr *out = (block_q6_kr *)rows;
    for (int i = 0; i < nsb; i++)
        for (int r = 0; r < Q4KR_ROWS; r++) {
            const block_q6_k *b = (const block_q6_k *)((const char *)tmp + (size_t)r * rb) + i;
            for (int n = 0; n < 2; n++)
                for (int g = 0; g < 8; g++) {
                    for (int h = 0; h < 2; h++) memcpy(out[i].ql[n][h][g][r], b->ql + 64 * n + 32 * h + 4 * g, 4);
                    memcpy(out[i].qh[n][g][r], b->qh + 32 * n + 4 * g, 4);
                }
            for (int k = 0; k < QK_K / 16; k++) out[i].scales[k][r] = b->scales[k];
            out[i].d[r] = b->d;
        }
}

void q6kr_block(const void *w, size_t rb, int r, int sb, block_q6_k *out) {
    const block_q6_kr *x = (const block_q6_kr *)((const char *)w + (size_t)(r / Q4KR_ROWS) * Q4KR_ROWS * rb) + sb;
    const int l = r % Q4KR_ROWS;
    for (int n = 0; n < 2; n++)
        for (int g = 0; g < 8; g++) {
            for (int h = 0; h < 2; h++) memcpy(out->ql + 64 * n + 32 * h + 4 * g, x->ql[n][h][g][l], 4);
            memcpy(out->qh + 32 * n + 4 * g, x->qh[n][g][l], 4);
        }
    for (int k = 0; k < QK_K / 16; k++) out->scales[k] = x->scales[k][l];
    out->d = x->d[l];
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
    case PL_TYPE_Q5_0: dequantize_q5_0(src, dst, n / QK); break;
    case PL_TYPE_Q5_1: dequantize_q5_1(src, dst, n / QK); break;
    case PL_TYPE_IQ4_NL: dequantize_iq4_nl(src, dst, n / QK); break;
    case PL_TYPE_Q2_K:
    case PL_TYPE_Q3_K:
    case PL_TYPE_Q4_K:
    case PL_TYPE_Q5_K:
    case PL_TYPE_Q6_K:
    case PL_TYPE_IQ4_XS: dequantize_superblocks(type, src, dst, n / QK_K); break;
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
