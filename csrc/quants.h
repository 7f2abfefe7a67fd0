/*
 * quants.h - tensor storage formats, byte for byte as GGML lays them out in GGUF.
 *
 * Q8_0:  32 values = fp16 scale d, 32 x int8 q;            x = d * q
 * Q4_0:  32 values = fp16 scale d, 16 bytes of nibbles;    x = d * (q - 8)
 * Q4_1:  32 values = fp16 scale d, fp16 min m, 16 bytes;   x = d * q + m
 * In the 4-bit formats byte j holds value j in its low nibble and value j+16
 * in its high nibble.
 *
 * Q4_0R, Q4_1R (pyllama's, made at load time from Q4_0 / Q4_1 matrices): the same
 * bytes per row, regrouped: a row of nb blocks holds the nb scales d, then (Q4_1R)
 * the nb minimums m, then the nb x 16 nibble bytes. In the GGUF layout a 2-byte scale
 * interrupts every 16 bytes of nibbles, so a kernel needs several small loads per cache
 * line; the regrouped rows take one 64-byte load of nibbles per 4 blocks, and decode
 * streams them faster from DRAM.
 *
 * Q5_0, Q5_1, IQ4_NL and the 256-value K-quants / IQ4_XS below are used as the file has them,
 * except Q4_K and Q6_K matrices on CPUs with AVX-512 VNNI: regrouped 8 rows at a time
 * (Q4_KR, Q6_KR, after q4_repack_row below).
 *
 * Activations: every quantized weight type, these included, multiplies block_q8x activations
 * (kernels.h: 32 int8 values, a float scale d and s = d * sum(q)), one block per 32 weights.
 * llama.cpp quantizes K-quant activations to its 256-value Q8_K instead; one 32-value format
 * for all types means a layer input is quantized once for every matrix of a mixed-type layer
 * (a Q4_K_M file mixes Q4_K, Q6_K, Q5_0, Q8_0 within a layer). The 16-value sub-blocks of
 * Q2_K, Q3_K and Q6_K take the two halves of an activation block: the integer dot products
 * (and, for Q2_K's minimums, the integer sums of the activations) of each half are combined
 * with the sub-block scales in integers, and only the block's total meets the float scales.
 */
#ifndef PL_QUANTS_H
#define PL_QUANTS_H

#include <stdint.h>
#include <string.h>

#include "pyllama.h"

#define QK 32

typedef uint16_t pl_fp16;
typedef uint16_t pl_bf16;

typedef struct { pl_fp16 d; int8_t qs[QK]; } block_q8_0;
typedef struct { pl_fp16 d; uint8_t qs[QK / 2]; } block_q4_0;
typedef struct { pl_fp16 d; pl_fp16 m; uint8_t qs[QK / 2]; } block_q4_1;

_Static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");
_Static_assert(sizeof(block_q4_1) == 20, "Q4_1 block is 20 bytes");

/*
 * 5-bit blocks of 32 (Q5_0, Q5_1): the low nibbles as in Q4 (byte j: values j and j+16),
 * the fifth bits in qh read as a little-endian uint32 (bit j: value j).
 * Q5_0: x = d * (q - 16);  Q5_1: x = d * q + m.
 */
typedef struct { pl_fp16 d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;
typedef struct { pl_fp16 d; pl_fp16 m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1;
_Static_assert(sizeof(block_q5_0) == 22, "Q5_0 block is 22 bytes");
_Static_assert(sizeof(block_q5_1) == 24, "Q5_1 block is 24 bytes");

/*
 * IQ4_NL: 32 values, 4-bit indices (laid out as Q4_0's nibbles) into the fixed non-linear
 * table below; x = d * IQ4_VALUES[q].
 */
typedef struct { pl_fp16 d; uint8_t qs[QK / 2]; } block_iq4_nl;
_Static_assert(sizeof(block_iq4_nl) == 18, "IQ4_NL block is 18 bytes");
static const int8_t IQ4_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/*
 * K-quants: super-blocks of QK_K = 256 values (a row length must be a multiple of 256),
 * split into sub-blocks of 16 or 32 values, each with its own quantized scale.
 * The layouts and the meaning of every bit are ggml's (ggml-common.h, dequantize_row_* in
 * ggml-quants.c); quants.c's scalar dequantizers are pyllama's definition of them.
 *
 * Q2_K: 16 sub-blocks of 16; scales[i]: low nibble scale, high nibble min;
 *       x = d * sc * q - dmin * m, q 2-bit.
 * Q3_K: 16 sub-blocks of 16; 6-bit scales packed in 12 bytes, used as sc - 32; q 2 low bits in
 *       qs, the third bit in hmask (bit clear: subtract 4); x = d * (sc - 32) * q.
 * Q4_K: 8 sub-blocks of 32; 6-bit scales and mins packed in 12 bytes; x = d * sc * q - dmin * m.
 * Q5_K: as Q4_K with a fifth bit per value in qh.
 * Q6_K: 16 sub-blocks of 16; int8 scales; q = 4 low bits (ql) | 2 high bits (qh) << 4;
 *       x = d * sc * (q - 32).
 * IQ4_XS: 8 sub-blocks of 32; 6-bit scales (low 4 bits in scales_l, high 2 in scales_h),
 *       used as sc - 32; x = d * (sc - 32) * IQ4_VALUES[q].
 */
#define QK_K 256
#define K_SCALE_SIZE 12
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; pl_fp16 d; pl_fp16 dmin; } block_q2_k;
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; pl_fp16 d; } block_q3_k;
typedef struct { pl_fp16 d; pl_fp16 dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; } block_q4_k;
typedef struct {
    pl_fp16 d;
    pl_fp16 dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_k;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; pl_fp16 d; } block_q6_k;
typedef struct { pl_fp16 d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2]; } block_iq4_xs;
_Static_assert(sizeof(block_q2_k) == 84, "Q2_K block is 84 bytes");
_Static_assert(sizeof(block_q3_k) == 110, "Q3_K block is 110 bytes");
_Static_assert(sizeof(block_q4_k) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(block_q5_k) == 176, "Q5_K block is 176 bytes");
_Static_assert(sizeof(block_q6_k) == 210, "Q6_K block is 210 bytes");
_Static_assert(sizeof(block_iq4_xs) == 136, "IQ4_XS block is 136 bytes");

/* IEEE half <-> float without relying on compiler extensions (exact for every half). */
static inline float fp16_to_f32(pl_fp16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            mant &= 0x3ff;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* float -> half, round to nearest even (used when writing files / KV cache). */
static inline pl_fp16 f32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000) /* inf or nan */
        return (pl_fp16)(sign | 0x7c00 | (absx > 0x7f800000 ? 0x200 : 0));
    if (absx >= 0x477ff000) /* rounds to >= 65520: overflow to inf */
        return (pl_fp16)(sign | 0x7c00);
    if (absx < 0x38800000) { /* result is subnormal or zero */
        float a;
        memcpy(&a, &absx, 4);
        /* scale so that the half subnormal unit (2^-24) becomes 1, then round to even */
        float scaled = a * 16777216.0f;
        uint32_t q = (uint32_t)scaled;
        float rem = scaled - (float)q;
        if (rem > 0.5f || (rem == 0.5f && (q & 1))) q++;
        return (pl_fp16)(sign | q);
    }
    uint32_t mant = absx & 0x7fffff;
    uint32_t exp = (absx >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (pl_fp16)(sign | h);
}

static inline float bf16_to_f32(pl_bf16 h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* The GGUF type a repacked type was made from (other types: themselves). */
static inline int q4_base(int type) {
    return type == PL_TYPE_Q4_0R || type == PL_TYPE_Q4_0P ? PL_TYPE_Q4_0
         : type == PL_TYPE_Q4_1R || type == PL_TYPE_Q4_1P ? PL_TYPE_Q4_1
         : type == PL_TYPE_Q8_0P ? PL_TYPE_Q8_0
         : type == PL_TYPE_Q4_KR ? PL_TYPE_Q4_K : type == PL_TYPE_Q6_KR ? PL_TYPE_Q6_K : type;
}
static inline int q4_repacked(int type) { return type == PL_TYPE_Q4_0R || type == PL_TYPE_Q4_1R; }
/* the 16-row panel layouts (below) */
static inline int q_paneled(int type) {
    return type == PL_TYPE_Q4_0P || type == PL_TYPE_Q4_1P || type == PL_TYPE_Q8_0P;
}
/* every id that only the loader makes (a file that has one is rejected) */
static inline int pl_type_repacked(int type) {
    return q4_repacked(type) || q_paneled(type) || type == PL_TYPE_Q4_KR || type == PL_TYPE_Q6_KR;
}

/* Where block b of a Q4 row (nb blocks, either layout) keeps its scale, minimum (Q4_1) and nibbles. */
typedef struct {
    const pl_fp16 *d, *m;
    const uint8_t *qs;
} q4_block;

static inline q4_block q4_block_at(int type, const void *row, int b, int nb) {
    const uint8_t *r = (const uint8_t *)row;
    q4_block k;
    if (q4_repacked(type)) {
        const int has_m = type == PL_TYPE_Q4_1R;
        k.d = (const pl_fp16 *)(r + 2 * (size_t)b);
        k.m = has_m ? (const pl_fp16 *)(r + 2 * ((size_t)nb + b)) : NULL;
        k.qs = r + (size_t)(has_m ? 4 : 2) * nb + 16 * (size_t)b;
    } else {
        const int q41 = type == PL_TYPE_Q4_1;
        const size_t bb = q41 ? sizeof(block_q4_1) : sizeof(block_q4_0);
        k.d = (const pl_fp16 *)(r + bb * b);
        k.m = q41 ? (const pl_fp16 *)(r + bb * b + 2) : NULL;
        k.qs = r + bb * b + (q41 ? 4 : 2);
    }
    return k;
}

/* Regroup one Q4_0 / Q4_1 row of nb blocks into its repacked layout, in place (tmp: the row's size). */
void q4_repack_row(int type, void *row, int nb, void *tmp);

/*
 * Q4_0P, Q4_1P, Q8_0P (pyllama's, made at load time from Q4_0 / Q4_1 / Q8_0 matrices whose row
 * count is a multiple of 16, on x86 CPUs with AVX-512 VNNI): rows in panels of 16, a panel's
 * 16 x nb blocks regrouped by block index b into one panel block of the same bytes as its 16
 * blocks (16 x 18, 20 or 34), in this order:
 *   d of rows 0..15 (16 fp16), Q4_1P: m of rows 0..15 (16 fp16),
 *   Q4: nibble byte 4h + j (h = 0..3, j = 0..3) of row r at qs[h][r][j];
 *   Q8_0P: value byte 4g + j (g = 0..7) of row r at qs[g][r][j].
 * So one 64-byte vector qs[h] holds, per row (32-bit lane), values 4h..4h+3 in its low nibbles
 * and 16 + 4h..+3 in its high ones (Q8_0P: qs[g] values 4g..4g+3), and one fp16 vector the
 * 16 rows' scales: the AVX-512 kernels multiply 16 rows by 4 activation bytes with one
 * vpdpbusd straight from the weights, for one token as for a batch, with no transposing.
 * Row r of a panelled matrix (row 0 at w, rows rb bytes apart as in the file) lives in panel
 * r / 16, at w + (r / 16) * 16 * rb.
 */
#define PANEL_ROWS 16
typedef struct { pl_fp16 d[PANEL_ROWS]; uint8_t qs[4][PANEL_ROWS][4]; } block_q4_0p;
typedef struct { pl_fp16 d[PANEL_ROWS], m[PANEL_ROWS]; uint8_t qs[4][PANEL_ROWS][4]; } block_q4_1p;
typedef struct { pl_fp16 d[PANEL_ROWS]; int8_t qs[8][PANEL_ROWS][4]; } block_q8_0p;
_Static_assert(sizeof(block_q4_0p) == PANEL_ROWS * sizeof(block_q4_0), "a Q4_0P panel block is 16 Q4_0 blocks");
_Static_assert(sizeof(block_q4_1p) == PANEL_ROWS * sizeof(block_q4_1), "a Q4_1P panel block is 16 Q4_1 blocks");
_Static_assert(sizeof(block_q8_0p) == PANEL_ROWS * sizeof(block_q8_0), "a Q8_0P panel block is 16 Q8_0 blocks");

/* The panel type made from Q4_0, Q4_1 or Q8_0 (-1 for others). */
static inline int q_panel_type(int type) {
    return type == PL_TYPE_Q4_0 ? PL_TYPE_Q4_0P : type == PL_TYPE_Q4_1 ? PL_TYPE_Q4_1P
         : type == PL_TYPE_Q8_0 ? PL_TYPE_Q8_0P : -1;
}
/* Regroup 16 rows of nb blocks of a Q4_0 / Q4_1 / Q8_0 matrix (rows rb bytes apart, from `rows`)
 * into their panel, in place (tmp: 16 x rb bytes). */
void q_panel_repack(int type, void *rows, size_t rb, int nb, void *tmp);
/* Blocks b0..b0+nb-1 of row r of a panelled matrix (row 0 at w, rows rb bytes apart) in its file
 * type's layout, into out. */
void q_panel_blocks(int type, const void *w, size_t rb, int r, int b0, int nb, void *out);
/* n values of row r of a matrix of any type (row 0 at w, rows rb bytes apart), as floats: the
 * panel layouts are not row by row. */
void dequantize_matrix_row(int type, const void *w, size_t rb, int64_t r, float *dst, int64_t n);

/*
 * Q4_KR (pyllama's, made at load time from Q4_K matrices whose row count is a multiple of 8,
 * on x86 CPUs with AVX-512 VNNI): rows in groups of 8, a group's 8 x nsb super-blocks regrouped
 * so that the prefill tiles and decode rows read 8 rows at once as SIMD lanes (one 32-bit lane
 * per row and 4 consecutive values) with no unpacking or transposing per call. A group takes
 * the same bytes as its 8 rows did (8 x 144 per super-block index i), in this order:
 *   d of rows 0..7 (8 fp16), dmin of rows 0..7 (8 fp16),
 *   scale byte k (0..11) of rows 0..7 for k = 0..11 (96 bytes: byte 8k + row),
 *   the nibbles: qs byte 32c + 4g + j (c = 0..3, g = 0..7, j = 0..3) of row r at 256c + 32g + 4r + j.
 * A 32-byte chunk (c, g) thus holds, per row, values 64c + 4g..+3 (low nibbles) and
 * 64c + 32 + 4g..+3 (high nibbles); its 8 rows' scale bytes side by side let the 6-bit scales
 * and minimums of all 8 rows be decoded together.
 */
#define Q4KR_ROWS 8
typedef struct {
    pl_fp16 d[Q4KR_ROWS], dmin[Q4KR_ROWS];
    uint8_t scales[K_SCALE_SIZE][Q4KR_ROWS];
    uint8_t qs[4][8][Q4KR_ROWS][4];
} block_q4_kr;
_Static_assert(sizeof(block_q4_kr) == Q4KR_ROWS * sizeof(block_q4_k), "a Q4_KR group block is 8 Q4_K blocks");

/* Regroup 8 Q4_K rows of nsb super-blocks (rows rb bytes apart, from `rows`) into Q4_KR, in place
 * (tmp: 8 x rb bytes). */
void q4k_repack_group(void *rows, size_t rb, int nsb, void *tmp);
/* Super-block sb of row r of a Q4_KR matrix (row 0 at w, rows rb bytes apart), as the Q4_K block it was. */
void q4kr_block(const void *w, size_t rb, int r, int sb, block_q4_k *out);

/*
 * Q6_KR: Q6_K regrouped the same way (same conditions), per super-block index i of a group:
 *   ql byte 64n + 32h + 4g + j (n, h = 0..1, g = 0..7, j = 0..3) of row r at ((n * 2 + h) * 8 + g) * 32 + 4r + j,
 *   qh byte 32n + 4g + j of row r at 1024 + (n * 8 + g) * 32 + 4r + j,
 *   scale s (0..15) of rows 0..7 at 1536 + 8s + r, then d of rows 0..7 (8 fp16).
 * Chunk (n, g) of qh and chunks (n, 0, g), (n, 1, g) of ql give, per row, values
 * 128n + 32m + 4g..+3 for m = 0..3 (ql's low nibbles for m = 0, 1, high ones for 2, 3; qh's
 * bit pair m).
 */
typedef struct {
    uint8_t ql[2][2][8][Q4KR_ROWS][4];
    uint8_t qh[2][8][Q4KR_ROWS][4];
    int8_t scales[QK_K / 16][Q4KR_ROWS];
    pl_fp16 d[Q4KR_ROWS];
} block_q6_kr;
_Static_assert(sizeof(block_q6_kr) == Q4KR_ROWS * sizeof(block_q6_k), "a Q6_KR group block is 8 Q6_K blocks");

void q6k_repack_group(void *rows, size_t rb, int nsb, void *tmp);
void q6kr_block(const void *w, size_t rb, int r, int sb, block_q6_k *out);

/*
 * A K-quant or IQ4_XS super-block unpacked to integers: value i is
 * (d * scale[i / sub]) * q[i] - (dmin * min[i / sub]), the float operations in that order
 * (the gguf package's and ggml's order, so dequantization is bit-exact). The scalar
 * dequantizer and the scalar dot products both start from this.
 */
typedef struct {
    float d, dmin;      /* dmin = 0 for the types without minimums */
    int sub;            /* values per scale: 16 or 32 */
    int8_t scale[16];   /* signed: Q3_K and IQ4_XS store sc - 32, Q6_K int8 scales */
    uint8_t min[16];    /* Q2_K (4-bit), Q4_K, Q5_K (6-bit); 0 elsewhere */
    int8_t q[QK_K];     /* Q3_K -4..3, Q6_K -32..31, IQ4_XS the IQ4_VALUES entry */
} pl_superblock;

/* 1 for the types whose blocks hold QK_K values and unpack through pl_superblock. */
int is_superblock_type(int type);
/* Unpack block `b` (0-based) of a row of such a type. */
void unpack_superblock(int type, const void *row, int b, pl_superblock *u);

/* scalar dequantizers: the reference every other path is compared with */
void dequantize_row(int type, const void *src, float *dst, int64_t n);

#endif
