/*
 * dispatch.c - picks the kernel set for this CPU at run time and runs matrix
 * products across the OpenMP team.
 *
 * One build serves every x86-64 CPU: the AVX2 kernels are compiled with
 * per-function target attributes and only called when cpuid says the CPU has
 * AVX2, FMA and F16C. PYLLAMA_ISA=scalar|avx2|neon in the environment forces a path.
 */
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "internal.h"
#include "kernels.h"

static const pl_kernel_set *current_set;

#if defined(__x86_64__)
/* Weak, so the core still links while a build leaves the AVX2 file out. */
#pragma weak pl_kernels_avx2
#endif

static int cpu_has_avx2(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return &pl_kernels_avx2 != NULL && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

static const pl_kernel_set *set_for(int isa) {
    switch (isa) {
#if defined(__x86_64__)
    case PL_ISA_AVX2: return cpu_has_avx2() ? &pl_kernels_avx2 : NULL;
#endif
#if defined(__aarch64__)
    case PL_ISA_NEON: return &pl_kernels_neon;
#endif
    case PL_ISA_SCALAR: return &pl_kernels_scalar;
    default: return NULL;
    }
}

int pl_cpu_isa(void) {
#if defined(__aarch64__)
    return PL_ISA_NEON;
#else
    return cpu_has_avx2() ? PL_ISA_AVX2 : PL_ISA_SCALAR;
#endif
}

static int isa_from_env(void) {
    const char *e = getenv("PYLLAMA_ISA");
    if (!e || !*e) return PL_ISA_AUTO;
    if (!strcmp(e, "scalar")) return PL_ISA_SCALAR;
    if (!strcmp(e, "avx2")) return PL_ISA_AVX2;
    if (!strcmp(e, "neon")) return PL_ISA_NEON;
    return PL_ISA_AUTO;
}

const pl_kernel_set *pl_kernels(void) {
    if (!current_set) {
        const pl_kernel_set *s = set_for(isa_from_env());
        current_set = s ? s : set_for(pl_cpu_isa());
    }
    return current_set;
}

static int isa_of(const pl_kernel_set *s) {
    if (s == &pl_kernels_scalar) return PL_ISA_SCALAR;
#if defined(__x86_64__)
    if (s == &pl_kernels_avx2) return PL_ISA_AVX2;
#endif
#if defined(__aarch64__)
    if (s == &pl_kernels_neon) return PL_ISA_NEON;
#endif
    return PL_ISA_SCALAR;
}

int pl_current_isa(void) { return isa_of(pl_kernels()); }

int pl_set_isa(int isa) {
    if (isa == PL_ISA_AUTO) {
        current_set = set_for(pl_cpu_isa());
    } else {
        const pl_kernel_set *s = set_for(isa);
        if (!s) {
            pl_set_error("instruction set %d is not available on this CPU", isa);
            return -1;
        }
        current_set = s;
    }
    return isa_of(current_set);
}

int pl_type_uses_q8x(int type) {
    return type == PL_TYPE_Q8_0 || type == PL_TYPE_Q4_0 || type == PL_TYPE_Q4_1;
}

static size_t act_stride(int type, int cols) {
    return pl_type_uses_q8x(type) ? (size_t)(cols / QK) * sizeof(block_q8x) : (size_t)cols * sizeof(float);
}

size_t pl_act_bytes(int type, int cols, int n_tok) {
    return pl_type_uses_q8x(type) ? act_stride(type, cols) * (size_t)n_tok : 0;
}

/* Rows handed to one kernel call in the token loop: small enough that the
 * weights stay in L1/L2 while every token of the batch passes over them. */
#define ROW_BLOCK 16

void pl_matmul_rows(int type, const void *w, int rows, int cols,
                    const float *x, int n_tok, float *y, size_t y_stride, void *scratch) {
    const pl_kernel_set *k = pl_kernels();
    const size_t row_bytes = (size_t)pl_type_nbytes(type, cols);
    const int q8 = pl_type_uses_q8x(type);
    const size_t astride = act_stride(type, cols);
    const char *act = q8 ? (const char *)scratch : (const char *)x;

#pragma omp parallel
    {
        if (q8) {
#pragma omp for schedule(static)
            for (int t = 0; t < n_tok; t++)
                k->quantize_q8x(x + (size_t)t * cols, (block_q8x *)((char *)scratch + t * astride), cols);
        }
        /* contiguous, equal shares of the rows so every thread streams its own part of W */
        int nth = omp_get_num_threads(), ith = omp_get_thread_num();
        int per = (rows + nth - 1) / nth;
        int r0 = ith * per, r1 = r0 + per < rows ? r0 + per : rows;
        if (r0 < r1) {
            if (n_tok > 1 && k->tile[type]) {
                k->tile[type](w, row_bytes, act, astride, y, y_stride, r0, r1, n_tok, cols);
            } else {
                for (int rb = r0; rb < r1; rb += ROW_BLOCK) {
                    int re = rb + ROW_BLOCK < r1 ? rb + ROW_BLOCK : r1;
                    for (int t = 0; t < n_tok; t++)
                        k->rows[type](w, row_bytes, act + t * astride, y + t * y_stride, rb, re, cols);
                }
            }
        }
    }
}

static int check_matmul_args(int type, int rows, int cols, int n_tok, int n_threads) {
    if (!pl_type_supported(type)) {
        pl_set_error("unsupported tensor type %s (%d)", pl_type_name(type), type);
        return -1;
    }
    if (rows <= 0 || cols <= 0 || n_tok <= 0 || pl_type_nbytes(type, cols) < 0 || cols % QK) {
        pl_set_error("bad matrix shape: rows=%d cols=%d tokens=%d (cols must be a positive multiple of %d)",
                     rows, cols, n_tok, QK);
        return -1;
    }
    if (n_threads > 0) omp_set_num_threads(n_threads);
    return 0;
}

int pl_matmul(int type, const void *w, const float *x, float *y, int rows, int cols, int n_tok, int n_threads) {
    if (check_matmul_args(type, rows, cols, n_tok, n_threads)) return -1;
    void *scratch = NULL;
    size_t need = pl_act_bytes(type, cols, n_tok);
    if (need && !(scratch = malloc(need))) {
        pl_set_error("out of memory");
        return -1;
    }
    pl_matmul_rows(type, w, rows, cols, x, n_tok, y, (size_t)rows, scratch);
    free(scratch);
    return 0;
}

int pl_matvec(int type, const void *w, const float *x, float *y, int rows, int cols, int n_threads) {
    return pl_matmul(type, w, x, y, rows, cols, 1, n_threads);
}
