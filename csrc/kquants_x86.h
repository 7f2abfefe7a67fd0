/*
 * kquants_x86.h - the 5-bit, K-quant and IQ4 weight types as the x86 kernels see them
 * (kquants_avx2.c, kquants_avx512.c), and those files' entry points.
 *
 * Every type is read in blocks of 32 values, one per activation block (block_q8x,
 * kernels.h): a 256-value super-block meets 8 activation blocks one to one. kq_unpack
 * turns a block into 32 unsigned bytes u (value order) and, per half h (values
 * 16h..16h+15; the two halves differ only for the types with 16-value sub-blocks),
 * a scale D[h] and an offset M[h]:
 *
 *     x_i = D[h] * (u_i - Z) + M[h],   Z = KQ_ZERO(type), a constant of the type.
 *
 * So a dot product with an activation block (da, q, s = da * sum(q)) is
 *     da * sum_h (D[h] * (I[h] - Z * A[h]) + M[h] * A[h]),
 * I[h] = sum of u * q over half h and A[h] = sum of q over it, all integers but D and M.
 * The decode kernels of the common types (Q4_K, Q6_K, Q5_0) read the blocks their own
 * faster way; the prefill tiles and the other types' rows go through kq_unpack.
 */
#ifndef PL_KQUANTS_X86_H
#define PL_KQUANTS_X86_H

#include "kquants.h"

#if defined(__x86_64__) || defined(_M_X64)

#define PL_KQ_DECLARE_AVX2(NAME, TYPE) PL_KQ_DECLARE(NAME, avx2)
PL_KQ_TYPES(PL_KQ_DECLARE_AVX2)
#define PL_KQ_ROWS_AVX2(NAME, TYPE) PL_KQ_ROWS_ENTRY(NAME, TYPE, avx2)
#define PL_KQ_TILE_AVX2(NAME, TYPE) PL_KQ_TILE_ENTRY(NAME, TYPE, avx2)

/* Put the AVX-512 kernels of these types into a set (a copy of the AVX2 one). */
void pl_kq_fill_avx512(pl_kernel_set *set);

/* Q4_KR, Q6_KR (quants.h; kquants_repack.c): the AVX2 kernels read each group back into Q4_K;
 * pl_kqr_fill_avx512 puts the AVX-512 ones into a set. */
#define PL_KR_DECLARE_AVX2(NAME)                                                                          \
    void pl_kqr_rows_##NAME##_avx2(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n); \
    void pl_kqr_tile_##NAME##_avx2(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, \
                                   int r0, int r1, int nt, int n);
PL_KR_DECLARE_AVX2(q4_kr)
PL_KR_DECLARE_AVX2(q6_kr)
void pl_kqr_fill_avx512(pl_kernel_set *set);

/* 1 when decode reads the weights AMD's way (pl_set_amd_reads): one stream a thread where it can
 * (kquants_repack.c's groups_per_step, kquants_avx512.c's quad_rows16_stream and prefetch).
 * Decided by the CPU's vendor on first use. */
int pl_kq_amd_reads(void);

#endif
#endif
