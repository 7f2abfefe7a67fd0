/*
 * dispatch.c - picks the kernel set for this CPU at run time and runs matrix
 * products across the OpenMP team.
 *
 * One build serves every x86-64 CPU: the AVX2 and AVX-512 kernels are compiled
 * with per-function target attributes and only called when cpuid says the CPU
 * has AVX2, FMA and F16C (and AVX-512 F/BW/VL/VNNI for the AVX-512 set).
 * PYLLAMA_ISA=scalar|avx2|avx512|neon in the environment forces a path.
 */
#include <omp.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#if !defined(_WIN32)
#include <pthread.h>
#include <signal.h>
#endif

#include "internal.h"
#include "kernels.h"

static const pl_kernel_set *current_set;

#if defined(__x86_64__)
#include <cpuid.h>
/* Weak, so the core still links while a build leaves the AVX2 file out. */
#pragma weak pl_kernels_avx2
#pragma weak pl_kernels_avx512
#endif

static int cpu_has_avx2(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    unsigned a, b, c, d; /* F16C straight from cpuid: clang's __builtin_cpu_supports does not know it */
    const int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    return &pl_kernels_avx2 != NULL && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
    return 0;
#endif
}

static int cpu_has_avx512(void) {
#if defined(__x86_64__)
    return cpu_has_avx2() && pl_kernels_avx512 != NULL && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

static const pl_kernel_set *set_for(int isa) {
    switch (isa) {
#if defined(__x86_64__)
    case PL_ISA_AVX2: return cpu_has_avx2() ? &pl_kernels_avx2 : NULL;
    case PL_ISA_AVX512: return cpu_has_avx512() ? pl_kernels_avx512() : NULL;
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
    return cpu_has_avx512() ? PL_ISA_AVX512 : cpu_has_avx2() ? PL_ISA_AVX2 : PL_ISA_SCALAR;
#endif
}

static int isa_from_env(void) {
    const char *e = getenv("PYLLAMA_ISA");
    if (!e || !*e) return PL_ISA_AUTO;
    if (!strcmp(e, "scalar")) return PL_ISA_SCALAR;
    if (!strcmp(e, "avx2")) return PL_ISA_AVX2;
    if (!strcmp(e, "avx512")) return PL_ISA_AVX512;
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
    if (cpu_has_avx512() && s == pl_kernels_avx512()) return PL_ISA_AVX512;
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

/* every quantized weight type: the float ones take float activations */
int pl_type_uses_q8x(int type) {
    return pl_type_supported(type) && type != PL_TYPE_F32 && type != PL_TYPE_F16 && type != PL_TYPE_BF16;
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
/* Thread shares start on multiples of this, so SIMD kernels see whole row groups. */
#define ROW_ALIGN 8

/* Batch-invariant mode (pl_set_batch_invariant): every token through the one-token
 * rows() kernel, whatever the batch size. Where a tile() kernel blocks and sums differently
 * from its rows(), the 8-bit rounding of the next product's input turns
 * those last-bit differences into visible ones, so only one kernel per token gives a
 * sequence the same logits alone, in a prompt batch and in a decode batch with other
 * sequences. (Where a set's rows() already has its tile's arithmetic -- its rows_invariant entry is
 * then that same kernel: the quantized types on AVX2, the common ones on AVX-512 -- the
 * normal mode is invariant as well, and this mode changes nothing for them.) */
static _Atomic int batch_invariant;

int pl_set_batch_invariant(int on) { return atomic_exchange(&batch_invariant, on ? 1 : 0); }

/* Rows [r0, r1) of one part, for every token. */
static void part_rows(const pl_kernel_set *k, const pl_matmul_part *p, int cols, const float *x,
                      const void *q8, size_t q8_stride, int n_tok, int r0, int r1) {
    const size_t row_bytes = (size_t)pl_type_nbytes(p->type, cols);
    const int uses_q8 = pl_type_uses_q8x(p->type);
    const char *act = uses_q8 ? (const char *)q8 : (const char *)x;
    const size_t astride = uses_q8 ? q8_stride : (size_t)cols * sizeof(float);
    /* a type this set has no rows kernel for runs on the scalar set (same activation format) */
    const pl_kernel_set *kt = k->rows[p->type] ? k : &pl_kernels_scalar;
    const pl_rows_fn rows = kt->rows[p->type];
    const pl_tile_fn tile = kt->tile[p->type];
    /* Batch-invariant mode: where the set has a one-token kernel with its tile's arithmetic,
     * the tile takes every batch and that kernel single tokens; elsewhere rows() takes all. */
    const int invariant = atomic_load_explicit(&batch_invariant, memory_order_relaxed);
    const pl_rows_fn rows_inv = kt->rows_invariant[p->type];
    if (invariant && rows_inv && n_tok == 1) {
        rows_inv(p->w, row_bytes, act, p->y, r0, r1, cols);
        return;
    }
    if (tile && (invariant ? rows_inv != NULL : n_tok > 1)) {
        tile(p->w, row_bytes, act, astride, p->y, p->y_stride, r0, r1, n_tok, cols);
        return;
    }
    if (n_tok == 1) { /* decode: one call streams the whole share (the row blocks are for reuse across tokens) */
        rows(p->w, row_bytes, act, p->y, r0, r1, cols);
        return;
    }
    for (int rb = r0; rb < r1; rb += ROW_BLOCK) {
        int re = rb + ROW_BLOCK < r1 ? rb + ROW_BLOCK : r1;
        for (int t = 0; t < n_tok; t++)
            rows(p->w, row_bytes, act + t * astride, p->y + t * p->y_stride, rb, re, cols);
    }
}

/*
 * Called first thing in every parallel region. The kernel hands a process-directed
 * signal (Ctrl-C's SIGINT, SIGTERM, SIGWINCH...) to any thread that does not block
 * it. If an OpenMP worker takes SIGINT, Python's handler only sets a flag there, and a
 * main thread waiting in input() does not wake to raise KeyboardInterrupt: the chat
 * would sit at its prompt until the next key. So each worker blocks the asynchronous
 * signals, once; faults (SIGSEGV and the like) stay with the thread that causes them.
 * Thread 0 is the caller's own thread and keeps its mask.
 */
void pl_team_enter(void) {
#if !defined(_WIN32)
    static __thread int shielded;
    if (shielded || omp_get_thread_num() == 0) return;
    sigset_t s;
    sigfillset(&s);
    const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS};
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) sigdelset(&s, faults[i]);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    shielded = 1;
#endif
}

/* This thread's share [*r0, *r1) of n rows, aligned to ROW_ALIGN. */
void pl_thread_share(int n, int *r0, int *r1) {
    int nth = omp_get_num_threads(), ith = omp_get_thread_num();
    int groups = (n + ROW_ALIGN - 1) / ROW_ALIGN;
    int g0 = (int)((long long)groups * ith / nth), g1 = (int)((long long)groups * (ith + 1) / nth);
    *r0 = g0 * ROW_ALIGN < n ? g0 * ROW_ALIGN : n;
    *r1 = g1 * ROW_ALIGN < n ? g1 * ROW_ALIGN : n;
}

void pl_quantize_act(const float *x, int n_tok, int cols, void *xq) {
    const pl_kernel_set *k = pl_kernels();
    const size_t stride = (size_t)(cols / QK) * sizeof(block_q8x);
    for (int t = 0; t < n_tok; t++)
        k->quantize_q8x(x + (size_t)t * cols, (block_q8x *)((char *)xq + t * stride), cols);
}

int pl_parts_need_q8(const pl_matmul_part *parts, int n_parts) {
    for (int i = 0; i < n_parts; i++)
        if (pl_type_uses_q8x(parts[i].type)) return 1;
    return 0;
}

/* Rows [r0, r1) of the parts: the same rows of each (same_rows), else of the parts laid end to end. */
static void share_rows(const pl_kernel_set *k, const pl_matmul_part *parts, int n_parts, int cols, const float *x,
                       const void *xq, int n_tok, int same_rows, pl_epilogue_fn epilogue, void *arg, int r0, int r1) {
    const size_t q8_stride = (size_t)(cols / QK) * sizeof(block_q8x);
    if (same_rows) {
        for (int i = 0; i < n_parts; i++) part_rows(k, &parts[i], cols, x, xq, q8_stride, n_tok, r0, r1);
        if (epilogue) epilogue(arg, r0, r1);
        return;
    }
    int base = 0;
    for (int i = 0; i < n_parts; i++) {
        int a = r0 - base > 0 ? r0 - base : 0;
        int b = r1 - base < parts[i].rows ? r1 - base : parts[i].rows;
        if (a < b) part_rows(k, &parts[i], cols, x, xq, q8_stride, n_tok, a, b);
        base += parts[i].rows;
    }
}

/* Rows a team deals out at a time: a panel. Every kernel computes a row the same way
 * whatever rows its call begins and ends on, as long as they are multiples of 8
 * (ROW_ALIGN), so the dealing changes no result. */
#define DEAL_ROWS 16

void pl_matmul_share(const pl_matmul_part *parts, int n_parts, int cols, const float *x, const void *xq,
                     int n_tok, int same_rows, pl_epilogue_fn epilogue, void *arg, pl_team *team) {
    const pl_kernel_set *k = pl_kernels();
    int total = 0;
    if (same_rows) { /* the same rows of every part on one thread, so the epilogue can combine them */
        total = parts[0].rows;
    } else {
        for (int i = 0; i < n_parts; i++) total += parts[i].rows;
    }
    int r0, r1;
    const int units = (total + DEAL_ROWS - 1) / DEAL_ROWS;
    if (team && omp_get_num_threads() > 1 && units <= PL_TEAM_MAX_UNITS) {
        int u0, u1;
        while (pl_team_take(team, units, &u0, &u1)) {
            r0 = u0 * DEAL_ROWS;
            r1 = u1 * DEAL_ROWS < total ? u1 * DEAL_ROWS : total;
            share_rows(k, parts, n_parts, cols, x, xq, n_tok, same_rows, epilogue, arg, r0, r1);
        }
        return;
    }
    pl_thread_share(total, &r0, &r1);
    if (r0 < r1) share_rows(k, parts, n_parts, cols, x, xq, n_tok, same_rows, epilogue, arg, r0, r1);
}

void pl_matmul_parts(const pl_matmul_part *parts, int n_parts, int cols, const float *x, int n_tok,
                     void *scratch, int same_rows, pl_epilogue_fn epilogue, void *arg) {
    const pl_kernel_set *k = pl_kernels();
    const int any_q8 = pl_parts_need_q8(parts, n_parts);
    const size_t q8_stride = (size_t)(cols / QK) * sizeof(block_q8x);
#pragma omp parallel
    {
        pl_team_enter();
        if (any_q8) { /* quantize the shared input once for every part */
#pragma omp for schedule(static)
            for (int t = 0; t < n_tok; t++)
                k->quantize_q8x(x + (size_t)t * cols, (block_q8x *)((char *)scratch + t * q8_stride), cols);
        }
        pl_matmul_share(parts, n_parts, cols, x, any_q8 ? scratch : NULL, n_tok, same_rows, epilogue, arg, NULL);
    }
}

static int check_matmul_args(int type, int rows, int cols, int n_tok, int n_threads) {
    if (!pl_type_supported(type)) {
        pl_set_error("unsupported tensor type %s (%d)", pl_type_name(type), type);
        return -1;
    }
    if (rows <= 0 || cols <= 0 || n_tok <= 0 || pl_type_nbytes(type, cols) < 0 || cols % QK) {
        pl_set_error("bad matrix shape: rows=%d cols=%d tokens=%d (cols must be a positive multiple of %d)",
                     rows, cols, n_tok, pl_type_block_size(type) > QK ? pl_type_block_size(type) : QK);
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
    const pl_matmul_part part = {type, w, rows, y, (size_t)rows};
    pl_matmul_parts(&part, 1, cols, x, n_tok, scratch, 0, NULL, NULL);
    free(scratch);
    return 0;
}

int pl_matvec(int type, const void *w, const float *x, float *y, int rows, int cols, int n_threads) {
    return pl_matmul(type, w, x, y, rows, cols, 1, n_threads);
}
