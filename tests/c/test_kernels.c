/*
 * test_kernels.c - checks one SIMD kernel set against the scalar reference.
 *
 * Build with the scalar kernels, quants.c, util.c and the ISA file(s), defining
 * TEST_AVX2, TEST_AVX512 or TEST_NEON (tests/c/run_x86.sh, tests/c/run_neon.sh; TEST_SCALAR
 * checks the scalar set against the double-precision dots alone). For every
 * weight type, random weights and activations:
 *   - quantize_q8x must give byte-identical blocks (same rounding),
 *   - rows() and tile() must match the scalar rows() and an independent double
 *     precision dot of the dequantized operands, within float summation error,
 *   - nothing outside [r0, r1) x [0, n_tok) of y may be written.
 * Odd row counts, row ranges not starting at 0, n not a multiple of 256 and
 * token counts on both sides of the kernels' blocking are all covered.
 * Exits 1 on the first kind of mismatch (after printing every failure).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kernels.h"

#if defined(TEST_AVX512)
#define SET (*pl_kernels_avx512())
#elif defined(TEST_AVX2)
#define SET pl_kernels_avx2
#elif defined(TEST_SCALAR) /* the reference against its own double-precision check only */
#define SET pl_kernels_scalar
#elif defined(TEST_NEON)
#define SET pl_kernels_neon
int pl_neon_has_dotprod(void);
#else
#error "define TEST_AVX2, TEST_AVX512, TEST_NEON or TEST_SCALAR"
#endif

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}
static float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(next_u32() & 0xffffff) / 16777216.0f; }
static float gauss(void) {
    float s = 0;
    for (int i = 0; i < 4; i++) s += uniform(-1, 1);
    return s;
}

static int failures = 0;
#define FAIL(...)                          \
    do {                                   \
        fprintf(stderr, "FAIL: " __VA_ARGS__); \
        fputc('\n', stderr);               \
        failures++;                        \
    } while (0)

static const int types[] = {PL_TYPE_F32,  PL_TYPE_F16,  PL_TYPE_BF16,  PL_TYPE_Q8_0, PL_TYPE_Q4_0,
                            PL_TYPE_Q4_1, PL_TYPE_Q4_0R, PL_TYPE_Q4_1R, PL_TYPE_Q5_0, PL_TYPE_Q5_1,
                            PL_TYPE_IQ4_NL, PL_TYPE_Q2_K, PL_TYPE_Q3_K, PL_TYPE_Q4_K, PL_TYPE_Q5_K,
                            PL_TYPE_Q6_K, PL_TYPE_IQ4_XS};

static int uses_q8x(int type) { return type != PL_TYPE_F32 && type != PL_TYPE_F16 && type != PL_TYPE_BF16; }

static size_t row_bytes(int type, int n) { return (size_t)pl_type_nbytes(type, n); }

/* The other block types: every byte random (all quants, packed scales and high bits),
 * then the fp16 scales set to sane values; a minimum small beside its scale. */
static void fill_blocks(int type, void *dst, int n) {
    const int bs = pl_type_block_size(type), bb = pl_type_block_bytes(type);
    for (int i = 0; i < n / bs * bb; i++) ((uint8_t *)dst)[i] = (uint8_t)next_u32();
    for (int b = 0; b < n / bs; b++) {
        void *blk = (char *)dst + (size_t)b * bb;
        const pl_fp16 d = f32_to_fp16(uniform(-0.1f, 0.1f)), dpos = f32_to_fp16(uniform(0.0005f, 0.004f));
        const pl_fp16 dmin = f32_to_fp16(uniform(0.0001f, 0.001f));
        switch (type) {
        case PL_TYPE_Q5_0: ((block_q5_0 *)blk)->d = d; break;
        case PL_TYPE_Q5_1:
            ((block_q5_1 *)blk)->d = f32_to_fp16(uniform(0.001f, 0.05f));
            ((block_q5_1 *)blk)->m = f32_to_fp16(uniform(-0.8f, 0.2f));
            break;
        case PL_TYPE_IQ4_NL: ((block_iq4_nl *)blk)->d = f32_to_fp16(uniform(-0.002f, 0.002f)); break;
        case PL_TYPE_Q2_K: ((block_q2_k *)blk)->d = dpos, ((block_q2_k *)blk)->dmin = dmin; break;
        case PL_TYPE_Q3_K: ((block_q3_k *)blk)->d = dpos; break;
        case PL_TYPE_Q4_K: ((block_q4_k *)blk)->d = dpos, ((block_q4_k *)blk)->dmin = dmin; break;
        case PL_TYPE_Q5_K: ((block_q5_k *)blk)->d = dpos, ((block_q5_k *)blk)->dmin = dmin; break;
        case PL_TYPE_Q6_K: ((block_q6_k *)blk)->d = f32_to_fp16(uniform(0.00002f, 0.0001f)); break;
        case PL_TYPE_IQ4_XS: ((block_iq4_xs *)blk)->d = f32_to_fp16(uniform(0.00005f, 0.0005f)); break;
        }
    }
}

/* random row of a type: floats from a gaussian, quant blocks as random bytes with sane scales */
static void fill_row(int type, void *dst, int n) {
    switch (type) {
    case PL_TYPE_F32:
        for (int i = 0; i < n; i++) ((float *)dst)[i] = gauss();
        break;
    case PL_TYPE_F16:
        for (int i = 0; i < n; i++) ((pl_fp16 *)dst)[i] = f32_to_fp16(gauss());
        break;
    case PL_TYPE_BF16:
        for (int i = 0; i < n; i++) {
            float f = gauss();
            uint32_t u;
            memcpy(&u, &f, 4);
            ((pl_bf16 *)dst)[i] = (pl_bf16)(u >> 16);
        }
        break;
    case PL_TYPE_Q8_0:
        for (int b = 0; b < n / QK; b++) {
            block_q8_0 *q = (block_q8_0 *)dst + b;
            q->d = f32_to_fp16(uniform(0.001f, 0.05f));
            for (int j = 0; j < QK; j++) q->qs[j] = (int8_t)(next_u32() & 0xff); /* includes -128 */
        }
        break;
    case PL_TYPE_Q4_0:
        for (int b = 0; b < n / QK; b++) {
            block_q4_0 *q = (block_q4_0 *)dst + b;
            q->d = f32_to_fp16(uniform(-0.1f, 0.1f));
            for (int j = 0; j < QK / 2; j++) q->qs[j] = (uint8_t)next_u32();
        }
        break;
    case PL_TYPE_Q4_1:
        for (int b = 0; b < n / QK; b++) {
            block_q4_1 *q = (block_q4_1 *)dst + b;
            q->d = f32_to_fp16(uniform(0.001f, 0.1f));
            q->m = f32_to_fp16(uniform(-0.8f, 0.2f));
            for (int j = 0; j < QK / 2; j++) q->qs[j] = (uint8_t)next_u32();
        }
        break;
    default: fill_blocks(type, dst, n); break;
    }
}

/* activations with awkward blocks: all zero, exact .5 ties, one huge value */
static void fill_act(float *x, int n, int variant) {
    for (int i = 0; i < n; i++) x[i] = gauss() * (variant & 1 ? 3.0f : 0.5f);
    if (n >= 64) {
        for (int j = 0; j < QK; j++) x[j] = 0.0f;
        /* amax 127 makes d = 1: the values themselves are rounded, ties included */
        for (int j = 0; j < QK; j++) x[QK + j] = (float)((j % 2 ? -1 : 1) * (j * 4 % 127)) + 0.5f;
        x[QK + 3] = 127.0f;
    }
    if (n >= 128) x[2 * QK + 5] = 1e4f;
}

static int bad(float got, float want, double mag) {
    double tol = 2e-5 * mag + 1e-6;
    return !(fabs((double)got - (double)want) <= tol); /* NaN fails */
}

/* double-precision dot of dequantized row r and dequantized activation */
static double ref_dot(int type, const void *row, const void *act, int n, double *mag) {
    float *w = malloc(n * sizeof(float)), *x = malloc(n * sizeof(float));
    dequantize_row(type, row, w, n);
    if (uses_q8x(type)) {
        const block_q8x *a = act;
        for (int i = 0; i < n; i++) x[i] = a[i / QK].d * a[i / QK].qs[i % QK];
    } else {
        memcpy(x, act, n * sizeof(float));
    }
    double s = 0, m = 0;
    for (int i = 0; i < n; i++) {
        s += (double)w[i] * x[i];
        m += fabs((double)w[i] * x[i]);
    }
    free(w);
    free(x);
    *mag = m;
    return s;
}

static void test_quantize(int n) {
    float *x = malloc(n * sizeof(float));
    block_q8x *a = malloc(n / QK * sizeof(block_q8x)), *b = malloc(n / QK * sizeof(block_q8x));
    for (int v = 0; v < 4; v++) {
        fill_act(x, n, v);
        pl_kernels_scalar.quantize_q8x(x, a, n);
        SET.quantize_q8x(x, b, n);
        for (int i = 0; i < n / QK; i++) {
            if (memcmp(a[i].qs, b[i].qs, QK) || a[i].d != b[i].d || a[i].s != b[i].s) {
                FAIL("quantize_q8x n=%d block %d: d %g vs %g, s %g vs %g", n, i, a[i].d, b[i].d, a[i].s, b[i].s);
                break;
            }
        }
    }
    free(x);
    free(a);
    free(b);
}

/* A block holding a NaN or an infinity comes out as d = s = NaN with zero quants, on the
 * reference and the SIMD path alike; a block of subnormal values (1/d would overflow) as
 * zeros; the other blocks are quantized as usual. */
static void test_quantize_nonfinite(void) {
    enum { N = 5 * QK };
    float x[N];
    block_q8x a[N / QK], b[N / QK];
    fill_act(x, N, 1);
    x[QK + 7] = NAN;
    x[2 * QK] = INFINITY;
    x[3 * QK + 31] = -INFINITY;
    for (int j = 0; j < QK; j++) x[4 * QK + j] = j % 3 ? 1e-39f * (float)(j - 16) : 0.0f;
    pl_kernels_scalar.quantize_q8x(x, a, N);
    SET.quantize_q8x(x, b, N);
    const int8_t zeros[QK] = {0};
    for (int i = 0; i < N / QK; i++) {
        for (int k = 0; k < 2; k++) {
            const block_q8x *q = k ? &b[i] : &a[i];
            const int finite = i == 0 || i == 4;
            if (finite ? !(isfinite(q->d) && isfinite(q->s) && (i == 0 || (!memcmp(q->qs, zeros, QK) && q->s == 0)))
                       : !(isnan(q->d) && isnan(q->s) && !memcmp(q->qs, zeros, QK)))
                FAIL("quantize_q8x (%s) with non-finite input, block %d: d %g s %g", k ? "SIMD" : "scalar", i, q->d,
                     q->s);
        }
    }
    if (memcmp(a[0].qs, b[0].qs, QK) || a[0].d != b[0].d || a[0].s != b[0].s)
        FAIL("quantize_q8x: the finite block beside non-finite ones differs from the scalar one");
}

/* rows() and tile() for one type and shape */
static void test_matmul(int type, int n, int rows, int r0, int r1, int nt) {
    const size_t rb = row_bytes(type, n);
    const int q8 = uses_q8x(type);
    const size_t as = q8 ? (size_t)(n / QK) * sizeof(block_q8x) : (size_t)n * sizeof(float);
    const size_t ys = (size_t)rows + 3;
    char *w = malloc(rb * rows);
    /* a repacked type: rows filled in the GGUF type it comes from, then repacked; the exact
     * reference dequantizes the GGUF rows (the repacking is under test too) */
    const int ftype = q4_base(type);
    char *wf = malloc(rb * rows), *tmp = malloc(rb);
    float *x = malloc((size_t)nt * n * sizeof(float));
    char *act = malloc(as * nt);
    float *want = malloc(ys * nt * sizeof(float)), *got = malloc(ys * nt * sizeof(float));
    for (int r = 0; r < rows; r++) {
        fill_row(ftype, wf + r * rb, n);
        memcpy(w + r * rb, wf + r * rb, rb);
        if (ftype != type) q4_repack_row(ftype, w + r * rb, n / QK, tmp);
    }
    for (int t = 0; t < nt; t++) {
        fill_act(x + (size_t)t * n, n, t);
        if (q8) pl_kernels_scalar.quantize_q8x(x + (size_t)t * n, (block_q8x *)(act + t * as), n);
        else memcpy(act + t * as, x + (size_t)t * n, n * sizeof(float));
    }
    pl_rows_fn ref = pl_kernels_scalar.rows[type];
    for (int t = 0; t < nt; t++) ref(w, rb, act + t * as, want + t * ys, r0, r1, n);

    for (int form = 0; form < 2; form++) {
        const char *fname = form ? "tile" : "rows";
        if (form == 1 && !SET.tile[type]) continue;
        const float sentinel = -12345.0f;
        for (size_t i = 0; i < ys * nt; i++) got[i] = sentinel;
        if (form == 0) {
            for (int t = 0; t < nt; t++) SET.rows[type](w, rb, act + t * as, got + t * ys, r0, r1, n);
        } else {
            SET.tile[type](w, rb, act, as, got, ys, r0, r1, nt, n);
        }
        int shown = 0;
        for (int t = 0; t < nt; t++) {
            for (size_t r = 0; r < ys; r++) {
                float g = got[t * ys + r];
                if ((int)r < r0 || (int)r >= r1) {
                    if (g != sentinel && shown++ < 3)
                        FAIL("%s %s n=%d rows [%d,%d) nt=%d: wrote y[%d][%zu] outside the range",
                             SET.name, fname, n, r0, r1, nt, t, r);
                    continue;
                }
                double mag, exact = ref_dot(ftype, wf + r * rb, act + t * as, n, &mag);
                if ((bad(g, want[t * ys + r], mag) || bad(g, (float)exact, mag)) && shown++ < 3)
                    FAIL("%s %s type %s n=%d rows [%d,%d) nt=%d: y[%d][%zu] = %.7g, scalar %.7g, exact %.7g (sum |w x| %.4g)",
                         SET.name, fname, pl_type_name(type), n, r0, r1, nt, t, r, g, want[t * ys + r], exact, mag);
            }
        }
    }
    free(w);
    free(wf);
    free(tmp);
    free(x);
    free(act);
    free(want);
    free(got);
}

/* n random values in a KV cache of `type`; vals gets the values the cache really holds */
static void *fill_kv(int type, size_t n, float *vals) {
    void *buf = malloc(n * (type == PL_TYPE_F16 ? 2 : 4));
    for (size_t i = 0; i < n; i++) {
        float x = gauss();
        if (type == PL_TYPE_F16) {
            ((pl_fp16 *)buf)[i] = f32_to_fp16(x);
            x = fp16_to_f32(((pl_fp16 *)buf)[i]);
        } else {
            ((float *)buf)[i] = x;
        }
        vals[i] = x;
    }
    return buf;
}

/* The keys of kv head `head` in the cache's transposed block layout (kernels.h); lanes
 * past n_pos in the last block are NaN, which must not reach the result. */
static void *key_blocks(int type, const float *k, size_t kv_stride, int head, int hd, int n_pos) {
    const int nb = (n_pos + PL_KV_BLOCK - 1) / PL_KV_BLOCK;
    const size_t n = (size_t)nb * hd * PL_KV_BLOCK;
    void *buf = malloc(n * (type == PL_TYPE_F16 ? 2 : 4));
    for (size_t i = 0; i < n; i++) {
        if (type == PL_TYPE_F16) ((pl_fp16 *)buf)[i] = 0x7e00;
        else ((float *)buf)[i] = NAN;
    }
    for (int s = 0; s < n_pos; s++)
        for (int d = 0; d < hd; d++) {
            const size_t at = ((size_t)(s / PL_KV_BLOCK) * hd + d) * PL_KV_BLOCK + s % PL_KV_BLOCK;
            const float x = k[s * kv_stride + (size_t)head * hd + d]; /* already representable in type */
            if (type == PL_TYPE_F16) ((pl_fp16 *)buf)[at] = f32_to_fp16(x);
            else ((float *)buf)[at] = x;
        }
    return buf;
}

/* attention of one kernel set against a double-precision softmax(q.k * scale) . v */
static void test_attend(const pl_kernel_set *set, int k_type, int v_type, int group, int hd, int n_kv, int n_pos) {
    const size_t kv_stride = (size_t)n_kv * hd;
    float *q = malloc(sizeof(float) * group * hd), *out = malloc(sizeof(float) * (group * hd + 1));
    float *k = malloc(sizeof(float) * kv_stride * n_pos), *v = malloc(sizeof(float) * kv_stride * n_pos);
    float *att = malloc(sizeof(float) * (group * n_pos + 1));
    double *p = malloc(sizeof(double) * n_pos);
    for (int i = 0; i < group * hd; i++) q[i] = gauss() * 2.0f;
    free(fill_kv(k_type, kv_stride * n_pos, k)); /* k: values as the cache holds them */
    char *vc = fill_kv(v_type, kv_stride * n_pos, v);
    const int head = n_kv > 1 ? 1 : 0; /* use the second kv head when there is one: strided value rows */
    char *kc = key_blocks(k_type, k, kv_stride, head, hd, n_pos);
    const size_t vo = (size_t)head * hd * (v_type == PL_TYPE_F16 ? 2 : 4);
    const float scale = 1.0f / sqrtf((float)hd);
    out[group * hd] = -777.0f;
    att[group * n_pos] = -777.0f;
    set->attend(q, group, hd, k_type, kc, v_type, vc + vo, kv_stride, n_pos, scale, out, att);
    if (out[group * hd] != -777.0f) FAIL("attend group=%d hd=%d n_pos=%d wrote past the output", group, hd, n_pos);
    if (att[group * n_pos] != -777.0f) FAIL("attend group=%d hd=%d n_pos=%d wrote past its scratch", group, hd, n_pos);
    int shown = 0;
    for (int j = 0; j < group; j++) {
        double mx = -1e300, sum = 0;
        for (int s = 0; s < n_pos; s++) {
            double d = 0;
            for (int i = 0; i < hd; i++) d += (double)q[j * hd + i] * k[s * kv_stride + head * hd + i];
            p[s] = d * scale;
            mx = p[s] > mx ? p[s] : mx;
        }
        for (int s = 0; s < n_pos; s++) sum += (p[s] = exp(p[s] - mx));
        for (int i = 0; i < hd; i++) {
            double o = 0, mag = 0;
            for (int s = 0; s < n_pos; s++) {
                o += p[s] / sum * v[s * kv_stride + head * hd + i];
                mag += p[s] / sum * fabs(v[s * kv_stride + head * hd + i]);
            }
            if (!(fabs(out[j * hd + i] - o) <= 2e-5 * mag + 1e-6) && shown++ < 3)
                FAIL("%s attend K %s V %s group=%d hd=%d n_pos=%d: out[%d][%d] = %.7g, want %.7g", set->name,
                     pl_type_name(k_type), pl_type_name(v_type), group, hd, n_pos, j, i, out[j * hd + i], o);
        }
    }
    free(q);
    free(out);
    free(k);
    free(v);
    free(kc);
    free(vc);
    free(att);
    free(p);
}

/* float -> half must give the scalar reference's bits (round to nearest even), subnormals and overflow included */
static void test_to_f16(int n) {
    float *x = malloc(n * sizeof(float));
    pl_fp16 *got = malloc((n + 1) * sizeof(pl_fp16)), *want = malloc(n * sizeof(pl_fp16));
    for (int i = 0; i < n; i++) {
        switch (i % 5) {
        case 0: x[i] = gauss() * 3; break;
        case 1: x[i] = gauss() * 1e-5f; break;          /* half subnormals */
        case 2: x[i] = uniform(-70000, 70000); break;   /* past the largest half */
        case 3: { /* exactly halfway between two neighbouring halves: the tie-break decides */
            pl_fp16 h = (pl_fp16)(next_u32() & 0x7bfe);
            x[i] = (fp16_to_f32(h) + fp16_to_f32((pl_fp16)(h + 1))) * 0.5f;
            break;
        }
        default: x[i] = uniform(-1, 1);
        }
    }
    got[n] = 0x5555;
    SET.to_f16(x, got, n);
    pl_kernels_scalar.to_f16(x, want, n);
    for (int i = 0; i < n; i++)
        if (got[i] != want[i] || want[i] != f32_to_fp16(x[i])) {
            FAIL("to_f16 n=%d i=%d x=%.9g: 0x%04x, want 0x%04x", n, i, x[i], got[i], want[i]);
            break;
        }
    if (got[n] != 0x5555) FAIL("to_f16 n=%d wrote past the end", n);
    free(x);
    free(got);
    free(want);
}

/* silu_mul against the scalar set, over the range the model sees and beyond (exp's clamps) */
static void test_silu_mul(int n) {
    float *g = malloc(n * sizeof(float)), *g0 = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) {
        g[i] = g0[i] = i % 17 == 0 ? uniform(-120, 120) : gauss() * 4;
        u[i] = gauss();
    }
    SET.silu_mul(g, u, n);
    pl_kernels_scalar.silu_mul(g0, u, n);
    for (int i = 0; i < n; i++)
        if (bad(g[i], g0[i], fabs((double)g0[i]) + 1e-6)) FAIL("silu_mul n=%d i=%d: %g vs %g", n, i, g[i], g0[i]);
    free(g);
    free(g0);
    free(u);
}

int main(void) {
#if defined(TEST_NEON)
    printf("NEON kernels, dot-product extension %s\n", pl_neon_has_dotprod() ? "in use" : "not present");
#else
    printf("kernel set %s\n", SET.name);
#endif
    /* 8320: past on-stack buffers; 256, 512, 768, 1536: the lengths the 256-value types take */
    static const int ns[] = {32, 64, 96, 160, 256, 288, 512, 576, 608, 768, 1056, 1536, 8320};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) test_quantize(ns[i]);
    test_quantize_nonfinite();
    static const int silu_ns[] = {1, 7, 8, 13, 1536};
    for (size_t i = 0; i < sizeof silu_ns / sizeof silu_ns[0]; i++) test_silu_mul(silu_ns[i]);
    for (size_t i = 0; i < sizeof silu_ns / sizeof silu_ns[0]; i++) test_to_f16(silu_ns[i] + 1000);

    int cases = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        int type = types[ti];
        if (!SET.rows[type]) { /* dispatch runs it on the scalar kernels */
            printf("note: %s has no rows kernel for %s yet; not tested\n", SET.name, pl_type_name(type));
            continue;
        }
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
            int n = ns[i];
            if (n % pl_type_block_size(type)) continue;
            /* 256, 512, 768 are for the 256-value types; the others have lengths enough */
            if ((n == 256 || n == 512 || n == 768) && pl_type_block_size(type) < QK_K) continue;
            /* row ranges: odd, offset, shorter and longer than the 4- and 8-row blocks and the
             * 16/32-row float panels; tokens past the panels' 12 per pass, from the 16 that use them */
            static const int shapes[][3] = {{1, 0, 1}, {3, 0, 3}, {8, 0, 8}, {13, 2, 13}, {37, 3, 36}, {40, 8, 40},
                                            {70, 5, 69}, {24, 2, 23}, {50, 0, 50}};
            static const int toks[] = {1, 2, 3, 4, 5, 8, 11, 12, 16, 33};
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
                for (size_t k = 0; k < sizeof toks / sizeof toks[0]; k++) {
                    if (n > 608 && (s < 4 || k % 2)) continue; /* keep the run short */
                    if (n > 1536 && (s != 4 || (k != 0 && k != 4))) continue; /* rows and tile, once each */
                    test_matmul(type, n, shapes[s][0], shapes[s][1], shapes[s][2], toks[k]);
                    cases++;
                }
        }
        /* the quantized types' rows past the x86 kernels' on-stack activation buffers
         * (kquants_avx2.c, kquants_avx512.c): 75 super-blocks, 600 blocks */
        if (uses_q8x(type) && type != PL_TYPE_Q8_0 && !q4_repacked(type) && q4_base(type) == type &&
            type != PL_TYPE_Q4_0 && type != PL_TYPE_Q4_1) {
            test_matmul(type, 19200, 5, 1, 4, 1);
            cases++;
        }
        /* a float row length that is not a multiple of 8 or 32; and multiples of 8 but not
         * of 32 with enough tokens for the panels (their last chunk 8 or 24 values long) */
        if (!uses_q8x(type)) {
            test_matmul(type, 37, 9, 1, 9, 5);
            test_matmul(type, 5, 5, 0, 5, 4);
            test_matmul(type, 40, 37, 3, 36, 17);
            test_matmul(type, 136, 24, 2, 23, 33);
            test_matmul(type, 280, 50, 0, 50, 16);
            cases += 5;
        }
    }
    static const int groups[] = {1, 3, 4, 5, 8}, hds[] = {64, 128, 48, 40}, npos[] = {1, 2, 7, 16, 33, 300};
    static const int kv_types[][2] = {{PL_TYPE_F32, PL_TYPE_F32}, {PL_TYPE_F16, PL_TYPE_F16}, {PL_TYPE_F16, PL_TYPE_F32}};
    const pl_kernel_set *sets[] = {&SET, &pl_kernels_scalar};
    for (int si = 0; si < 2; si++)
        for (size_t kt = 0; kt < 3; kt++)
            for (size_t g = 0; g < 5; g++)
                for (size_t h = 0; h < 4; h++)
                    for (size_t s = 0; s < 6; s++) {
                        if (si == 1 && (h % 2 || s == 5)) continue; /* the scalar set: fewer, it is slow */
                        test_attend(sets[si], kv_types[kt][0], kv_types[kt][1], groups[g], hds[h], 3, npos[s]);
                        cases++;
                    }
    test_attend(&SET, PL_TYPE_F32, PL_TYPE_F32, 2, 64, 1, 100); /* a single kv head: contiguous rows */
    test_attend(&SET, PL_TYPE_F16, PL_TYPE_F16, 2, 64, 1, 100);
    if (failures) {
        printf("%d failures\n", failures);
        return 1;
    }
    printf("ok: quantize_q8x, %d rows/tile/attention cases match the scalar reference\n", cases);
    return 0;
}
