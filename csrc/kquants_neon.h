/*
 * kquants_neon.h - the entry points of kquants_neon.c (the NEON kernels of the 5-bit,
 * K-quant and IQ4 weight types) for pl_kernels_neon's tables in kernels_neon.c.
 */
#ifndef PL_KQUANTS_NEON_H
#define PL_KQUANTS_NEON_H

#include "kquants.h"

#if defined(__aarch64__)

#define PL_KQ_DECLARE_NEON(NAME, TYPE) PL_KQ_DECLARE(NAME, neon)
PL_KQ_TYPES(PL_KQ_DECLARE_NEON)
#define PL_KQ_ROWS_NEON(NAME, TYPE) PL_KQ_ROWS_ENTRY(NAME, TYPE, neon)
#define PL_KQ_TILE_NEON(NAME, TYPE) PL_KQ_TILE_ENTRY(NAME, TYPE, neon)

#endif
#endif
