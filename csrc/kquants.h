/*
 * kquants.h - the 5-bit, K-quant and IQ4 weight types that the kquants_*.c kernel files
 * serve, and the shape of their entry points, for every instruction set: kquants_x86.h and
 * kquants_neon.h name them for theirs.
 */
#ifndef PL_KQUANTS_H
#define PL_KQUANTS_H

#include "kernels.h"

/* The types: X(suffix, type id) */
#define PL_KQ_TYPES(X)                                                                                   \
    X(q5_0, PL_TYPE_Q5_0) X(q5_1, PL_TYPE_Q5_1) X(q2_k, PL_TYPE_Q2_K) X(q3_k, PL_TYPE_Q3_K)                \
    X(q4_k, PL_TYPE_Q4_K) X(q5_k, PL_TYPE_Q5_K) X(q6_k, PL_TYPE_Q6_K) X(iq4_nl, PL_TYPE_IQ4_NL)           \
    X(iq4_xs, PL_TYPE_IQ4_XS)

/* pl_kq_rows_NAME_ISA and pl_kq_tile_NAME_ISA (ISA: the file's suffix, avx2 or neon) */
#define PL_KQ_DECLARE(NAME, ISA)                                                                         \
    void pl_kq_rows_##NAME##_##ISA(const void *w, size_t rb, const void *act, float *y, int r0, int r1, int n); \
    void pl_kq_tile_##NAME##_##ISA(const void *w, size_t rb, const void *act, size_t as, float *y, size_t ys, \
                                   int r0, int r1, int nt, int n);

/* designated initializers for a kernel set's rows and tile tables */
#define PL_KQ_ROWS_ENTRY(NAME, TYPE, ISA) [TYPE] = pl_kq_rows_##NAME##_##ISA,
#define PL_KQ_TILE_ENTRY(NAME, TYPE, ISA) [TYPE] = pl_kq_tile_##NAME##_##ISA,

#endif
