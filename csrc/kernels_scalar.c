/*
 * kernels_scalar.c - the reference kernels. Plain C, one dot product per row,
 * written to be obviously right; the SIMD paths must agree with these.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "internal.h"
#include "kernels.h"

/* Quantize activations to 8 bits per 32-value block, scale = max|x| / 127. A block holding
 * a NaN or an infinity (a broken model file) becomes d = s = NaN with zero quants, on every
 * path: every product it enters is then NaN and the sampler reports it, where converting
 * the NaN to an integer would give an arbitrary finite result (undefined in C). */
static void quantize_q8x(const float *x, block_q8x *y, int n) {
    for (int b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        float amax = 0.0f;
        int finite = 1;
        for (int j = 0; j < QK; j++) {
            const float a = fabsf(xb[j]);
            finite &= a <= FLT_MAX; /* false for NaN too */
            amax = fmaxf(amax, a);
        }
        if (!finite) {
            memset(y[b].qs, 0, QK);
            y[b].d = y[b].s = NAN;
            continue;
        }
        float d = amax / 127.0f;
        /* a block of tiny values (max below 127 FLT_MIN, ~1.5e-36) quantizes to zeros: for a
         * subnormal d, 1/d can overflow and 0 * inf would be NaN (same on every path) */
        float id = d >= FLT_MIN ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            int q = (int)nearbyintf(xb[j] * id); /* round half to even, like the SIMD paths */
            y[b].qs[j] = (int8_t)q;
            sum += q;
        }
        y[b].d = d;
        y[b].s = d * (float)sum;
    }
}

static float dot_f32(const float *w, const float *x, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += w[i] * x[i];
    return sum;
}

static float dot_f16(const pl_fp16 *w, const float *x, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += fp16_to_f32(w[i]) * x[i];
    return sum;
}

static float dot_bf16(const pl_bf16 *w, const float *x, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += bf16_to_f32(w[i]) * x[i];
    return sum;
}

static float dot_q8_0(const block_q8_0 *w, const block_q8x *x, int n) {
    float sum = 0.0f;
    for (int b = 0; b < n / QK; b++) {
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += w[b].qs[j] * x[b].qs[j];
        sum += fp16_to_f32(w[b].d) * x[b].d * (float)sumi;
    }
    return sum;
}

/*
 * Q4_0: sum_j d*(q_j - 8) * dx*qx_j.  Q4_1: sum_j (d*q_j + m) * dx*qx_j = d*dx*sum(q*qx) + m * s.
 * Each block is found where its layout keeps it (q4_block_at: GGUF's, or the repacked
 * Q4_0R / Q4_1R rows of quants.h).
 */
static float dot_q4(int type, const void *w, const block_q8x *x, int n) {
    const int nb = n / QK;
    float sum = 0.0f;
    for (int b = 0; b < nb; b++) {
        const q4_block k = q4_block_at(type, w, b, nb);
        const int zero = k.m ? 0 : 8;
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            sumi += ((k.qs[j] & 0x0f) - zero) * x[b].qs[j];
            sumi += ((k.qs[j] >> 4) - zero) * x[b].qs[j + QK / 2];
        }
        sum += fp16_to_f32(*k.d) * x[b].d * (float)sumi + (k.m ? fp16_to_f32(*k.m) * x[b].s : 0.0f);
    }
    return sum;
}
static float dot_q4_0(const void *w, const block_q8x *x, int n) { return dot_q4(PL_TYPE_Q4_0, w, x, n); }
static float dot_q4_1(const void *w, const block_q8x *x, int n) { return dot_q4(PL_TYPE_Q4_1, w, x, n); }
static float dot_q4_0r(const void *w, const block_q8x *x, int n) { return dot_q4(PL_TYPE_Q4_0R, w, x, n); }
static float dot_q4_1r(const void *w, const block_q8x *x, int n) { return dot_q4(PL_TYPE_Q4_1R, w, x, n); }

/* Q5_0: d*(q - 16) * dx*qx;  Q5_1: (d*q + m) * dx*qx, the offset through s as in Q4_1. */
static float dot_q5(const void *w, int has_m, const block_q8x *x, int n) {
    const size_t bb = has_m ? sizeof(block_q5_1) : sizeof(block_q5_0);
    float sum = 0.0f;
    for (int b = 0; b < n / QK; b++) {
        const uint8_t *blk = (const uint8_t *)w + bb * b;
        pl_fp16 d, m = 0;
        memcpy(&d, blk, 2);
        if (has_m) memcpy(&m, blk + 2, 2);
        const uint8_t *qh = blk + (has_m ? 4 : 2), *qs = qh + 4;
        const uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
        const int zero = has_m ? 0 : 16;
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            sumi += (((qs[j] & 0x0f) | (int)((h >> j) & 1) << 4) - zero) * x[b].qs[j];
            sumi += (((qs[j] >> 4) | (int)((h >> (j + QK / 2)) & 1) << 4) - zero) * x[b].qs[j + QK / 2];
        }
        sum += fp16_to_f32(d) * x[b].d * (float)sumi + (has_m ? fp16_to_f32(m) * x[b].s : 0.0f);
    }
    return sum;
}
static float dot_q5_0(const void *w, const block_q8x *x, int n) { return dot_q5(w, 0, x, n); }
static float dot_q5_1(const void *w, const block_q8x *x, int n) { return dot_q5(w, 1, x, n); }

static float dot_iq4_nl(const block_iq4_nl *w, const block_q8x *x, int n) {
    float sum = 0.0f;
    for (int b = 0; b < n / QK; b++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            sumi += IQ4_VALUES[w[b].qs[j] & 0x0f] * x[b].qs[j];
            sumi += IQ4_VALUES[w[b].qs[j] >> 4] * x[b].qs[j + QK / 2];
        }
        sum += fp16_to_f32(w[b].d) * x[b].d * (float)sumi;
    }
    return sum;
}

/*
 * Super-block types: value i = d*scale[k]*q[i] - dmin*min[k], k = i / sub. Over one
 * activation block (32 values, one or two sub-blocks) the dot is
 *   d * dx * sum_k scale[k] * sum(q*qx over k)  -  dmin * dx * sum_k min[k] * sum(qx over k),
 * both sums over k taken in integers.
 */
static float superblock_acc(const pl_superblock *u, const block_q8x *x, float sum) {
    for (int a = 0; a < QK_K / QK; a++) {
        const block_q8x *xa = &x[a];
        int isum = 0, msum = 0;
        for (int k0 = 0; k0 < QK; k0 += u->sub) {
            const int k = (a * QK + k0) / u->sub;
            int qdot = 0, xsum = 0;
            for (int j = k0; j < k0 + u->sub; j++) {
                qdot += u->q[a * QK + j] * xa->qs[j];
                xsum += xa->qs[j];
            }
            isum += u->scale[k] * qdot;
            msum += u->min[k] * xsum;
        }
        sum += u->d * xa->d * (float)isum - u->dmin * xa->d * (float)msum;
    }
    return sum;
}

static float dot_superblocks(int type, const void *w, const block_q8x *x, int n) {
    pl_superblock u;
    float sum = 0.0f;
    for (int sb = 0; sb < n / QK_K; sb++) {
        unpack_superblock(type, w, sb, &u);
        sum = superblock_acc(&u, x + sb * (QK_K / QK), sum);
    }
    return sum;
}

/* The batched form: each super-block is unpacked once for all the tokens, where rows() per
 * token would unpack it n_tok times. Every y is summed in rows()' order, so the two agree exactly. */
static void tile_superblocks(int type, const void *w, size_t row_bytes, const void *act, size_t act_stride,
                             float *y, size_t y_stride, int r0, int r1, int n_tok, int n) {
    pl_superblock u;
    for (int r = r0; r < r1; r++) {
        const char *row = (const char *)w + (size_t)r * row_bytes;
        for (int t = 0; t < n_tok; t++) y[(size_t)t * y_stride + r] = 0.0f;
        for (int sb = 0; sb < n / QK_K; sb++) {
            unpack_superblock(type, row, sb, &u);
            for (int t = 0; t < n_tok; t++) {
                const block_q8x *x = (const block_q8x *)((const char *)act + (size_t)t * act_stride);
                y[(size_t)t * y_stride + r] = superblock_acc(&u, x + sb * (QK_K / QK), y[(size_t)t * y_stride + r]);
            }
        }
    }
}
static float dot_q2_k(const void *w, const block_q8x *x, int n) { return dot_superblocks(PL_TYPE_Q2_K, w, x, n); }
static float dot_q3_k(const void *w, const block_q8x *x, int n) { return dot_superblocks(PL_TYPE_Q3_K, w, x, n); }
static float dot_q4_k(const void *w, const block_q8x *x, int n) { return dot_superblocks(PL_TYPE_Q4_K, w, x, n); }
static float dot_q5_k(const void *w, const block_q8x *x, int n) { return dot_superblocks(PL_TYPE_Q5_K, w, x, n); }
static float dot_q6_k(const void *w, const block_q8x *x, int n) { return dot_superblocks(PL_TYPE_Q6_K, w, x, n); }
static float dot_iq4_xs(const void *w, const block_q8x *x, int n) { return dot_superblocks(PL_TYPE_IQ4_XS, w, x, n); }

/* Q4_KR, Q6_KR (quants.h): each super-block read back as the Q4_K / Q6_K block it was, then as that. */
static void rows_kr(int type, const void *w, size_t row_bytes, const void *act, float *y, int r0, int r1, int n) {
    block_q6_k b; /* the larger of the two */
    pl_superblock u;
    for (int r = r0; r < r1; r++) {
        float sum = 0.0f;
        for (int sb = 0; sb < n / QK_K; sb++) {
            if (type == PL_TYPE_Q4_KR) q4kr_block(w, row_bytes, r, sb, (block_q4_k *)(void *)&b);
            else q6kr_block(w, row_bytes, r, sb, &b);
            unpack_superblock(q4_base(type), &b, 0, &u);
            sum = superblock_acc(&u, (const block_q8x *)act + sb * (QK_K / QK), sum);
        }
        y[r] = sum;
    }
}
/* Q4_0P, Q4_1P, Q8_0P (quants.h): each block read back into the file's layout, then as that
 * (the same float steps as the file type's rows). */
static void rows_panel(int type, const void *w, size_t row_bytes, const void *act, float *y, int r0, int r1, int n) {
    const block_q8x *x = (const block_q8x *)act;
    block_q8_0 b; /* the largest of the three */
    for (int r = r0; r < r1; r++) {
        float sum = 0.0f;
        for (int k = 0; k < n / QK; k++) {
            q_panel_blocks(type, w, row_bytes, r, k, 1, &b);
            sum += type == PL_TYPE_Q8_0P ? dot_q8_0(&b, x + k, QK) : dot_q4(q4_base(type), &b, x + k, QK);
        }
        y[r] = sum;
    }
}
static void rows_q4_0p(const void *w, size_t row_bytes, const void *act, float *y, int r0, int r1, int n) {
    rows_panel(PL_TYPE_Q4_0P, w, row_bytes, act, y, r0, r1, n);
}
static void rows_q4_1p(const void *w, size_t row_bytes, const void *act, float *y, int r0, int r1, int n) {
    rows_panel(PL_TYPE_Q4_1P, w, row_bytes, act, y, r0, r1, n);
}
static void rows_q8_0p(const void *w, size_t row_bytes, const void *act, float *y, int r0, int r1, int n) {
    rows_panel(PL_TYPE_Q8_0P, w, row_bytes, act, y, r0, r1, n);
}
static void rows_q4_kr(const void *w, size_t row_bytes, const void *act, float *y, int r0, int r1, int n) {
    rows_kr(PL_TYPE_Q4_KR, w, row_bytes, act, y, r0, r1, n);
}
static void rows_q6_kr(const void *w, size_t row_bytes, const void *act, float *y, int r0, int r1, int n) {
    rows_kr(PL_TYPE_Q6_KR, w, row_bytes, act, y, r0, r1, n);
}

#define DEFINE_TILE_SUPERBLOCKS(NAME, TYPE)                                                               \
    static void tile_##NAME(const void *w, size_t row_bytes, const void *act, size_t act_stride, float *y, \
                            size_t y_stride, int r0, int r1, int n_tok, int n) {                         \
        tile_superblocks(TYPE, w, row_bytes, act, act_stride, y, y_stride, r0, r1, n_tok, n);             \
    }
DEFINE_TILE_SUPERBLOCKS(q2_k, PL_TYPE_Q2_K)
DEFINE_TILE_SUPERBLOCKS(q3_k, PL_TYPE_Q3_K)
DEFINE_TILE_SUPERBLOCKS(q4_k, PL_TYPE_Q4_K)
DEFINE_TILE_SUPERBLOCKS(q5_k, PL_TYPE_Q5_K)
DEFINE_TILE_SUPERBLOCKS(q6_k, PL_TYPE_Q6_K)
DEFINE_TILE_SUPERBLOCKS(iq4_xs, PL_TYPE_IQ4_XS)

/* One rows() function per type: the loop over rows is the same, only the dot differs. */
#define DEFINE_ROWS(NAME, WTYPE, ATYPE)                                                     \
    static void rows_##NAME(const void *w, size_t row_bytes, const void *act, float *y,   \
                            int r0, int r1, int n) {                                       \
        for (int r = r0; r < r1; r++)                                                      \
            y[r] = dot_##NAME((const WTYPE *)((const char *)w + (size_t)r * row_bytes),   \
                              (const ATYPE *)act, n);                                      \
    }

DEFINE_ROWS(f32, float, float)
DEFINE_ROWS(f16, pl_fp16, float)
DEFINE_ROWS(bf16, pl_bf16, float)
DEFINE_ROWS(q8_0, block_q8_0, block_q8x)
DEFINE_ROWS(q4_0, void, block_q8x)
DEFINE_ROWS(q4_1, void, block_q8x)
DEFINE_ROWS(q4_0r, void, block_q8x)
DEFINE_ROWS(q4_1r, void, block_q8x)
DEFINE_ROWS(q5_0, void, block_q8x)
DEFINE_ROWS(q5_1, void, block_q8x)
DEFINE_ROWS(iq4_nl, block_iq4_nl, block_q8x)
DEFINE_ROWS(q2_k, void, block_q8x)
DEFINE_ROWS(q3_k, void, block_q8x)
DEFINE_ROWS(q4_k, void, block_q8x)
DEFINE_ROWS(q5_k, void, block_q8x)
DEFINE_ROWS(q6_k, void, block_q8x)
DEFINE_ROWS(iq4_xs, void, block_q8x)

/* element i of a KV cache row of type PL_TYPE_F32 or PL_TYPE_F16 */
static float kv_at(int type, const void *row, size_t i) {
    return type == PL_TYPE_F16 ? fp16_to_f32(((const pl_fp16 *)row)[i]) : ((const float *)row)[i];
}

/* out = softmax(q . K[s] * scale for s < n_pos) . V, for each head of the group. */
static void attend(const float *q, int group, int hd, int k_type, const void *k, int v_type, const void *v,
                   size_t v_stride, int n_pos, float scale, float *out, float *att) {
    for (int j = 0; j < group; j++) {
        const float *qj = q + (size_t)j * hd;
        float *aj = att + (size_t)j * n_pos, *oj = out + (size_t)j * hd;
        float max = -INFINITY;
        for (int s = 0; s < n_pos; s++) {
            float d = 0.0f;
            for (int i = 0; i < hd; i++)
                d += kv_at(k_type, k, ((size_t)(s / PL_KV_BLOCK) * hd + i) * PL_KV_BLOCK + s % PL_KV_BLOCK) * qj[i];
            aj[s] = d * scale;
            max = aj[s] > max ? aj[s] : max;
        }
        float sum = 0.0f;
        for (int s = 0; s < n_pos; s++) sum += (aj[s] = expf(aj[s] - max));
        for (int i = 0; i < hd; i++) oj[i] = 0.0f;
        for (int s = 0; s < n_pos; s++) {
            const float a = aj[s] / sum;
            for (int i = 0; i < hd; i++) oj[i] += a * kv_at(v_type, v, (size_t)s * v_stride + i);
        }
    }
}

static void to_f16(const float *x, pl_fp16 *y, int n) {
    for (int i = 0; i < n; i++) y[i] = f32_to_fp16(x[i]);
}

static void silu_mul(float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

const pl_kernel_set pl_kernels_scalar = {
    .name = "scalar",
    .quantize_q8x = quantize_q8x,
    .rows = {
        [PL_TYPE_F32] = rows_f32,
        [PL_TYPE_F16] = rows_f16,
        [PL_TYPE_BF16] = rows_bf16,
        [PL_TYPE_Q8_0] = rows_q8_0,
        [PL_TYPE_Q4_0] = rows_q4_0,
        [PL_TYPE_Q4_1] = rows_q4_1,
        [PL_TYPE_Q4_0R] = rows_q4_0r,
        [PL_TYPE_Q4_1R] = rows_q4_1r,
        [PL_TYPE_Q4_KR] = rows_q4_kr,
        [PL_TYPE_Q6_KR] = rows_q6_kr,
        [PL_TYPE_Q4_0P] = rows_q4_0p,
        [PL_TYPE_Q4_1P] = rows_q4_1p,
        [PL_TYPE_Q8_0P] = rows_q8_0p,
        [PL_TYPE_Q5_0] = rows_q5_0,
        [PL_TYPE_Q5_1] = rows_q5_1,
        [PL_TYPE_IQ4_NL] = rows_iq4_nl,
        [PL_TYPE_Q2_K] = rows_q2_k,
        [PL_TYPE_Q3_K] = rows_q3_k,
        [PL_TYPE_Q4_K] = rows_q4_k,
        [PL_TYPE_Q5_K] = rows_q5_k,
        [PL_TYPE_Q6_K] = rows_q6_k,
        [PL_TYPE_IQ4_XS] = rows_iq4_xs,
    },
    .tile = {
        [PL_TYPE_Q2_K] = tile_q2_k,
        [PL_TYPE_Q3_K] = tile_q3_k,
        [PL_TYPE_Q4_K] = tile_q4_k,
        [PL_TYPE_Q5_K] = tile_q5_k,
        [PL_TYPE_Q6_K] = tile_q6_k,
        [PL_TYPE_IQ4_XS] = tile_iq4_xs,
    },
    .attend = attend,
    .silu_mul = silu_mul,
    .to_f16 = to_f16,
};
