/*
 * kquants_neon.h - the entry points of kquants_neon.c (the NEON kernels of the 5-bit,
 * K-quant and IQ4 weight types) for pl_kernels_neon's tables in kernels_neon.c.
 */
#ifndef PL_KQUANTS_NEON_H
#define PL_KQUANTS_NEON_H

#include "kernels.h"

#if defined(__aarch64__)

/* The types kquants_neon.c serves: X(suffix, type id) */
#define PL_KQ_NEON_TYPES(X)                                                                              \
    X(q5_0, PL_TYPE_Q5_0) X(q5_1, PL_TYPE_Q5_1) X(q2_k, PL_TYPE_Q2_K) X(q3_k, PL_TYPE_Q3_K)                \
    X(q4_k, PL_TYPE_Q4_K) X(q5_k, PL_TYPE_Q5_K) X(q6_k, PL_TYPE_Q6_K) X(iq4_nl, PL_TYPE_IQ4_NL)           \
    X(iq4_xs, PL_TYPE_IQ4_XS)

#define PL_KQ_DECLARE_NEON(NAME, TYPE)                                                                   \
    void pl_kq_rows_##NAME##_neon(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n); \
    void pl_kq_tile_##NAME##_neon(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, \
                                  int r0, int r1, int nt, int n);
PL_KQ_NEON_TYPES(PL_KQ_DECLARE_NEON)

/* designated initializers for pl_kernels_neon's rows and tile tables */
#define PL_KQ_ROWS_NEON(NAME, TYPE) [TYPE] = pl_kq_rows_##NAME##_neon,
#define PL_KQ_TILE_NEON(NAME, TYPE) [TYPE] = pl_kq_tile_##NAME##_neon,

#endif
#endif
