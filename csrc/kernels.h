/*
 * kernels.h - the matrix kernels, one set per instruction-set path.
 *
 * Every path (scalar, AVX2, AVX-512, NEON) fills the same table, and the scalar one
 * is the reference the others are tested against. The 5-bit, K-quant and IQ4 types'
 * kernels live in kquants_*.c and go into the same tables. Weight rows are used as
 * they sit in the file (GGML block layouts, see quants.h), except the Q4_0 and Q4_1
 * matrices, which the loader regroups in place into Q4_0R / Q4_1R (quants.h, model.c).
 *
 * For the quantized weight types the activation vector is first quantized to
 * block_q8x (32 values, one float scale) so dot products run on 8-bit integers.
 * All paths round with round-half-to-even (nearbyintf / _mm256_round_ps /
 * vcvtnq), so the integers agree exactly and only float summation order differs.
 */
#ifndef PL_KERNELS_H
#define PL_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "quants.h"

#define PL_TYPE_SLOTS 38 /* type ids are GGML's (0..30), then pyllama's repacked Q4 (31, 32), Q4_K and Q6_K (33, 34),
                         * and the 16-row panels of Q4_0, Q4_1, Q8_0 (35..37) */

/* An activation block: x[i] ~= d * qs[i]; s = d * sum(qs) (needed by Q4_1's offset and Q4_0's -8). */
typedef struct {
    float d;
    float s;
    int8_t qs[QK];
} block_q8x;

/*
 * y[r] = dot(row r of W, activation) for r in [r0, r1) (y is the whole output vector).
 * w points at row 0; rows are row_bytes apart; n is the row length in elements.
 * act is float* for float weight types and block_q8x* for quantized ones.
 */
typedef void (*pl_rows_fn)(const void *w, size_t row_bytes, const void *act,
                           float *y, int r0, int r1, int n);

/*
 * The batched form for prefill: for tokens t in [0, n_tok) and rows r in [r0, r1),
 * y[t * y_stride + r] = dot(row r, activation t), where activation t starts
 * act_stride bytes after activation t-1. A path may leave this NULL and the
 * caller falls back to calling rows() once per token.
 */
typedef void (*pl_tile_fn)(const void *w, size_t row_bytes, const void *act, size_t act_stride,
                           float *y, size_t y_stride, int r0, int r1, int n_tok, int n);

/*
 * Keys are cached transposed, in blocks of PL_KV_BLOCK positions: for one key/value
 * head, block b holds head_dim rows of PL_KV_BLOCK values, the keys of positions
 * b*PL_KV_BLOCK .. b*PL_KV_BLOCK+15, so element (position p, dimension d) sits at
 * ((p / PL_KV_BLOCK) * head_dim + d) * PL_KV_BLOCK + p % PL_KV_BLOCK. A query then
 * scores 16 positions with head_dim multiply-adds of q[d] into a vector of 16
 * lanes, with no horizontal sums (head_dim = 64 left a dot product per position
 * mostly summing lanes). Values stay one row per position.
 */
#define PL_KV_BLOCK 16

/*
 * Attention of the `group` query heads that share one key/value head, for one
 * token that sees cache positions 0..n_pos-1. q: the group's query heads back to
 * back (hd floats each); k: this kv head's key blocks (above); v: this kv head's
 * value at position 0, positions v_stride elements apart; k_type / v_type:
 * PL_TYPE_F32 or PL_TYPE_F16 (the KV cache's types); out: the group's outputs back
 * to back; att: scratch for group * n_pos floats. scale must be positive. Key lanes
 * past n_pos in the last block hold anything (stale keys) and must not affect the result.
 */
typedef void (*pl_attend_fn)(const float *q, int group, int hd, int k_type, const void *k, int v_type,
                             const void *v, size_t v_stride, int n_pos, float scale, float *out, float *att);

typedef struct {
    const char *name;
    /* quantize n floats (n % 32 == 0) into n/32 activation blocks */
    void (*quantize_q8x)(const float *x, block_q8x *y, int n);
    pl_rows_fn rows[PL_TYPE_SLOTS];
    pl_tile_fn tile[PL_TYPE_SLOTS];
    /* One token with exactly tile()'s float arithmetic, where tile() gives each token the same
     * result in any batch (NULL elsewhere): batch-invariant decode (pl_set_batch_invariant). */
    pl_rows_fn rows_invariant[PL_TYPE_SLOTS];
    pl_attend_fn attend;
    /* SwiGLU's activation: g[i] = silu(g[i]) * u[i] = g[i] / (1 + e^-g[i]) * u[i] */
    void (*silu_mul)(float *g, const float *u, int n);
    /* float -> IEEE half, round to nearest even (new keys and values into an F16 cache) */
    void (*to_f16)(const float *x, pl_fp16 *y, int n);
} pl_kernel_set;

/*
 * The float tiles' loop (kernels_avx2.c, kernels_neon.c): rows [r0, r1) x nt tokens through the
 * file's ftile(TYPE, rows, tokens, ...), whose counts must be constants: 4 rows x TT tokens at a
 * time, then the tokens and the rows left one by one.
 */
#define PL_FTILE_ROWS(TYPE, R, TT, w, rb, x, xs, y, ys, r, nt, n)                                            \
    do {                                                                                                     \
        int t_ = 0;                                                                                          \
        for (; t_ + (TT) <= (nt); t_ += (TT)) ftile(TYPE, R, TT, w, rb, x + t_ * xs, xs, y + t_ * ys, ys, r, n); \
        for (; t_ < (nt); t_++) ftile(TYPE, R, 1, w, rb, x + t_ * xs, xs, y + t_ * ys, ys, r, n);              \
    } while (0)
#define PL_FTILE_ALL(TYPE, TT, w, rb, x, xs, y, ys, r0, r1, nt, n)                                           \
    do {                                                                                                     \
        int r_ = (r0);                                                                                       \
        for (; r_ + 4 <= (r1); r_ += 4) PL_FTILE_ROWS(TYPE, 4, TT, w, rb, x, xs, y, ys, r_, nt, n);           \
        for (; r_ < (r1); r_++) PL_FTILE_ROWS(TYPE, 1, TT, w, rb, x, xs, y, ys, r_, nt, n);                   \
    } while (0)

/*
 * The initializer of a SIMD set (kernels_avx2.c, kernels_neon.c), from the static functions
 * of these names in its file, plus KQ_ROWS and KQ_TILE: the K-quant entries (kquants.h), and
 * ROWS_INV: the rows_invariant entries (PL_NO_ROWS_INVARIANT: none).
 */
#define PL_NO_ROWS_INVARIANT [PL_TYPE_F32] = NULL
#define PL_SIMD_KERNEL_SET(NAME, ATTEND, KQ_ROWS, KQ_TILE, ROWS_INV)                                         \
    {                                                                                                        \
        .name = NAME, .quantize_q8x = quantize_q8x,                                                          \
        .rows = {[PL_TYPE_F32] = rows_f32, [PL_TYPE_F16] = rows_f16, [PL_TYPE_BF16] = rows_bf16,             \
                 [PL_TYPE_Q8_0] = rows_q8_0, [PL_TYPE_Q4_0] = rows_q4_0, [PL_TYPE_Q4_1] = rows_q4_1,          \
                 [PL_TYPE_Q4_0R] = rows_q4_0r, [PL_TYPE_Q4_1R] = rows_q4_1r, KQ_ROWS},                      \
        .tile = {[PL_TYPE_F32] = tile_f32, [PL_TYPE_F16] = tile_f16, [PL_TYPE_BF16] = tile_bf16,             \
                 [PL_TYPE_Q8_0] = tile_q8_0, [PL_TYPE_Q4_0] = tile_q4_0, [PL_TYPE_Q4_1] = tile_q4_1,          \
                 [PL_TYPE_Q4_0R] = tile_q4_0r, [PL_TYPE_Q4_1R] = tile_q4_1r, KQ_TILE},                      \
        .rows_invariant = {ROWS_INV},                                                                        \
        .attend = ATTEND, .silu_mul = silu_mul, .to_f16 = to_f16,                                            \
    }

extern const pl_kernel_set pl_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const pl_kernel_set pl_kernels_avx2;
/* the AVX2 set with AVX-512 (F, BW, VL, VNNI) tiles, attention and Q4 rows (kernels_avx512.c) */
const pl_kernel_set *pl_kernels_avx512(void);
/* softmax(scale * a[0..n)) in place (kernels_avx2.c; used by both x86 attentions) */
void pl_softmax_scaled_avx2(float *a, int n, float scale);
#endif
#if defined(__aarch64__)
extern const pl_kernel_set pl_kernels_neon;
#endif

/* The set in use (chosen at first call from the CPU's features, or by pl_set_isa). */
const pl_kernel_set *pl_kernels(void);

/* 1 when the weight type needs block_q8x activations, 0 when it takes floats. */
int pl_type_uses_q8x(int type);

#endif
