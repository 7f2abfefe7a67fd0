/*
 * simd_x86.h - pieces shared by the x86 kernel files (kernels_avx2.c, kquants_avx2.c, kernels_avx512.c...).
 *
 * Functions carry the AVX2 target attribute; the AVX-512 file's functions, whose
 * targets include AVX2, inline them as well.
 */
#ifndef PL_SIMD_X86_H
#define PL_SIMD_X86_H

#include <immintrin.h>
#include <stdint.h>

#include "pyllama.h"
#include "quants.h"

#if defined(__GNUC__)
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))
#else
#define AVX2
#define AVX2_INLINE static inline
#endif

#define ROW(w, rb, r) ((const void *)((const char *)(w) + (size_t)(r) * (rb)))

AVX2_INLINE float half(uint16_t h) { return _cvtsh_ss(h); }

/* Element k of a row of a float type (F32, F16 or BF16) */
AVX2_INLINE float load1(int type, const void *w, size_t k) {
    if (type == PL_TYPE_F32) return ((const float *)w)[k];
    if (type == PL_TYPE_F16) return half(((const uint16_t *)w)[k]);
    return bf16_to_f32(((const uint16_t *)w)[k]);
}

/*
 * Decode streams each thread's rows once. Before a row is read, ask for the bytes
 * PREFETCH_BYTES further on (the same row's length of them, up to `end`): each thread's
 * share of a matrix is a short burst after a barrier, too short for the hardware
 * prefetcher's ramp-up to hide. always_inline, as the helper below: see there.
 */
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 4096
#endif
/* The F16 and BF16 rows ask 4x as far ahead: on the Intel VM, in the minutes when 4 KB
 * pages are slow, F16 decode gained most from 16 KB (8 KB less, 32-64 KB no more), and
 * nothing was lost in the fast minutes; Q8_0 and Q4 rows lose from a longer distance. The
 * F32 rows do best with none: their long rows keep the hardware prefetcher going, and the
 * extra requests only compete with it. */
#define PREFETCH_BYTES_F16 (4 * PREFETCH_BYTES)
static inline __attribute__((always_inline)) void prefetch_at(const void *row, size_t row_bytes, const void *end,
                                                              size_t ahead) {
    const char *p = (const char *)row + ahead, *e = (const char *)end;
    for (size_t o = 0; o < row_bytes && p + o < e; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}
static inline __attribute__((always_inline)) void prefetch_ahead(const void *row, size_t row_bytes, const void *end) {
    prefetch_at(row, row_bytes, end, PREFETCH_BYTES);
}

/*
 * The float packed panels (kernels_avx2.c, kernels_avx512.c) walk their rows in blocks of
 * `block` rows and `chunk` values; while one chunk is computed, ask for the bytes of the
 * next (the rest of this block's rows, else the next block's first chunk), which packing
 * would otherwise read straight from L3 or DRAM (a quarter of the time at 64 tokens).
 */
static inline __attribute__((always_inline)) void prefetch_next_chunk(int type, const void *w, size_t rb, int r,
                                                                      int r1, int k0, int n, int block, int chunk) {
    if (k0 + chunk >= n) {
        r += block;
        k0 = 0;
    } else {
        k0 += chunk;
    }
    const int nr = r1 - r < block ? r1 - r : block, es = type == PL_TYPE_F32 ? 4 : 2;
    const size_t bytes = (size_t)(n - k0 < chunk ? n - k0 : chunk) * es;
    for (int i = 0; i < nr; i++)
        for (size_t o = 0; o < bytes; o += 64)
            _mm_prefetch((const char *)ROW(w, rb, r + i) + (size_t)k0 * es + o, _MM_HINT_T1);
}

/* The same, not stopped at `end`: past a thread's last row lie the next burst's or the
 * next matrix's rows, and a prefetch never faults. The repacked Q4 rows stream faster
 * so; for the other rows it changed nothing measurable.
 * always_inline: GCC finds a function that only prefetches to be "const", and where it
 * does not inline the call it deletes it (so it did in the Q4 rows kernels). */
static inline __attribute__((always_inline)) void prefetch_ahead_past_end(const void *row, size_t row_bytes) {
    const char *p = (const char *)row + PREFETCH_BYTES;
    for (size_t o = 0; o < row_bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}

/* 32 nibbles of a Q4 block as bytes 0..15: low nibbles first, then high ones */
AVX2_INLINE __m256i q4_unpack(const uint8_t *qs) {
    __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    x = _mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    return _mm256_and_si256(x, _mm256_set1_epi8(0x0f));
}

/* 8 rows of 8 dwords -> 8 vectors, vector g = dword g of every row */
AVX2_INLINE void transpose8(__m256i v[8]) {
    __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    __m256i t4 = _mm256_unpacklo_epi32(v[4], v[5]), t5 = _mm256_unpackhi_epi32(v[4], v[5]);
    __m256i t6 = _mm256_unpacklo_epi32(v[6], v[7]), t7 = _mm256_unpackhi_epi32(v[6], v[7]);
    __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    v[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
    v[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
    v[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
    v[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
    v[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
    v[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
    v[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
    v[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

/*
 * The one-token quantized rows that hold 8 rows in the lanes (kernels_avx2.c's Q8_0 and Q4,
 * kquants_avx2.c's 5-bit, K-quant and IQ4 types): what they share.
 */

/* lanes 0..n-1 of a mask vector set (n clamped to 0..8) */
AVX2_INLINE __m256i lanes_below(int n) {
    n = n < 0 ? 0 : n > 8 ? 8 : n;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Rows r..r+7 of the matrix into wr (the missing ones, past r1, the last one again); how many exist */
AVX2_INLINE int rows8(const void *w, size_t rb, int r, int r1, const uint8_t *wr[8]) {
    const int nr = r1 - r < 8 ? r1 - r : 8;
    for (int i = 0; i < 8; i++) wr[i] = (const uint8_t *)ROW(w, rb, r + (i < nr ? i : nr - 1));
    return nr;
}

/* rows: the bytes this many rows on are asked for as these are read, a line at a time (a burst of
 * a whole panel's lines at its start crowds out the loads that need them now) */
#define ROWS8_AHEAD 16

/* s[i] (row i): partial sums of two halves, lanes 0-3 and 4-7 -> *lo, *hi: lane i holds row i's
 * sum of each (integer adds: exact in any order) */
AVX2_INLINE void half_sums_by_row(const __m256i s[8], __m256i *lo, __m256i *hi) {
    __m256i t[4], u[2];
    for (int k = 0; k < 4; k++) /* rows 2k, 2k+1 interleaved, each the sum of two of its partials */
        t[k] = _mm256_add_epi32(_mm256_unpacklo_epi32(s[2 * k], s[2 * k + 1]),
                                _mm256_unpackhi_epi32(s[2 * k], s[2 * k + 1]));
    for (int j = 0; j < 2; j++) /* rows 4j..4j+3: the low half's sums in the low 128-bit lane, the high's above */
        u[j] = _mm256_add_epi32(_mm256_unpacklo_epi64(t[2 * j], t[2 * j + 1]),
                                _mm256_unpackhi_epi64(t[2 * j], t[2 * j + 1]));
    *lo = _mm256_permute2x128_si256(u[0], u[1], 0x20);
    *hi = _mm256_permute2x128_si256(u[0], u[1], 0x31);
}

/* Activation blocks b and b+1 (two == 0: b alone) arranged for one 32-byte vector holding both
 * weight blocks' nibble bytes (block b in the low 128-bit lane): lo = [a_b[0..15] | a_b+1[0..15]],
 * hi = [a_b[16..31] | a_b+1[16..31]]; c = zero x their pair sums, the weights' zero point (Q4_0: 8,
 * Q5_0: 16) taken off in the integers. */
typedef struct {
    __m256i lo, hi, c;
} act_pair;

AVX2_INLINE act_pair act_pair_at(const block_q8x *a, int b, int two, int zero) {
    const __m256i v0 = _mm256_loadu_si256((const __m256i *)a[b].qs);
    const __m256i v1 = two ? _mm256_loadu_si256((const __m256i *)a[b + 1].qs) : _mm256_setzero_si256();
    const __m256i cz = _mm256_set1_epi8((char)zero);
    act_pair p;
    p.lo = _mm256_permute2x128_si256(v0, v1, 0x20);
    p.hi = _mm256_permute2x128_si256(v0, v1, 0x31);
    p.c = _mm256_add_epi16(_mm256_maddubs_epi16(cz, p.lo), _mm256_maddubs_epi16(cz, p.hi));
    return p;
}

/*
 * The float panels' product (kernels_avx2.c: 2 x 8 rows, kernels_avx512.c: 2 x 16): both row
 * vectors x T tokens over kc packed values (p: per value, the rows of vector 0 then 1); first:
 * start from zero, else add to what y holds; m[i]: the rows of vector i that exist. A macro
 * over the including file's vector V of W floats, mask M and operations ZERO(), LOADM(m, p),
 * LOAD(p), SET1(p) (broadcast *p), FMA(a, b, c) and STOREM(p, m, v); NTOK: the most tokens.
 */
#define DEFINE_FPANEL(NAME, ATTR, V, W, M, NTOK, ZERO, LOADM, LOAD, SET1, FMA, STOREM)                    \
    ATTR void NAME(int T, const float *p, int kc, const float *x, size_t xs, float *y, size_t ys, int first, \
                   const M m[2]) {                                                                    \
        V acc[2][NTOK];                                                                               \
        _Pragma("GCC unroll 2") for (int i = 0; i < 2; i++)                                           \
        _Pragma("GCC unroll 16") for (int t = 0; t < T; t++)                                          \
            acc[i][t] = first ? ZERO() : LOADM(m[i], y + t * ys + i * W);                             \
        for (int k = 0; k < kc; k++) {                                                                \
            const V w0 = LOAD(p + (size_t)k * 2 * W), w1 = LOAD(p + (size_t)k * 2 * W + W);          \
            _Pragma("GCC unroll 16") for (int t = 0; t < T; t++) {                                    \
                const V xv = SET1(x + t * xs + k);                                                    \
                acc[0][t] = FMA(w0, xv, acc[0][t]);                                                   \
                acc[1][t] = FMA(w1, xv, acc[1][t]);                                                   \
            }                                                                                         \
        }                                                                                             \
        _Pragma("GCC unroll 2") for (int i = 0; i < 2; i++)                                           \
        _Pragma("GCC unroll 16") for (int t = 0; t < T; t++) STOREM(y + t * ys + i * W, m[i], acc[i][t]); \
    }

/* Attention: call CALL(type, J, ...) with the cache type and the head count (1..3)
 * as constants, so that inlined loops keep their accumulators in registers (a run-time
 * count spilled them on every step). */
#define SPECIALIZE(CALL, TYPE, J, ...)                                                   \
    do {                                                                                 \
        if ((TYPE) == PL_TYPE_F16) {                                                     \
            if ((J) == 3) CALL(PL_TYPE_F16, 3, __VA_ARGS__);                             \
            else if ((J) == 2) CALL(PL_TYPE_F16, 2, __VA_ARGS__);                        \
            else CALL(PL_TYPE_F16, 1, __VA_ARGS__);                                      \
        } else {                                                                         \
            if ((J) == 3) CALL(PL_TYPE_F32, 3, __VA_ARGS__);                             \
            else if ((J) == 2) CALL(PL_TYPE_F32, 2, __VA_ARGS__);                        \
            else CALL(PL_TYPE_F32, 1, __VA_ARGS__);                                      \
        }                                                                                \
    } while (0)
/* for key_scores(type, ..., J) and weighted_values(type, ..., J) of the including file */
#define KEY_SCORES(T, J, ...) key_scores(T, __VA_ARGS__, J)
#define WEIGHTED_VALUES(T, J, ...) weighted_values(T, __VA_ARGS__, J)

/*
 * An attention entry point (pl_attend_fn, kernels.h) over the including file's own
 * key_scores and weighted_values: scores 3 query heads at a time, the shared softmax,
 * then the values 3 heads at a time. A macro so that each file inlines its own kernels.
 */
#define DEFINE_X86_ATTEND(NAME, ATTR)                                                                     \
    ATTR void NAME(const float *q, int group, int hd, int k_type, const void *k, int v_type, const void *v, \
                   size_t v_stride, int n_pos, float scale, float *out, float *att) {                     \
        for (int j0 = 0; j0 < group; j0 += 3) {                                                           \
            const int J = group - j0 < 3 ? group - j0 : 3;                                                \
            SPECIALIZE(KEY_SCORES, k_type, J, q + (size_t)j0 * hd, hd, k, n_pos, att + (size_t)j0 * n_pos); \
        }                                                                                                 \
        for (int j = 0; j < group; j++) pl_softmax_scaled_avx2(att + (size_t)j * n_pos, n_pos, scale);   \
        for (int j0 = 0; j0 < group; j0 += 3) {                                                           \
            const int J = group - j0 < 3 ? group - j0 : 3;                                                \
            SPECIALIZE(WEIGHTED_VALUES, v_type, J, att + (size_t)j0 * n_pos, v, v_stride, n_pos, hd,      \
                       out + (size_t)j0 * hd);                                                            \
        }                                                                                                 \
    }

#endif
