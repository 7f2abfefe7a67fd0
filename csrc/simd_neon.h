/*
 * simd_neon.h - pieces shared by the AArch64 kernel files (kernels_neon.c, kquants_neon.c):
 * the dot-product-extension target attribute and its SDOT instructions, the run-time check
 * for the extension, fp16 loads.
 */
#ifndef PL_SIMD_NEON_H
#define PL_SIMD_NEON_H

#if defined(__aarch64__)

#include <arm_neon.h>
#include <stdint.h>
#include <string.h>

#if defined(__clang__)
#define DOTPROD __attribute__((target("dotprod")))
#else
#define DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#define INLINE static inline __attribute__((always_inline))

/* SDOT (int8 dot products of 4 into int32 lanes), plain and by lane. GCC and newer clang expose
 * the intrinsics inside a function with the dotprod target; clang before 15 hides them unless the
 * whole file is built for it, so there they are written as the instructions. */
#if defined(__clang__) && __clang_major__ < 15 && !defined(__ARM_FEATURE_DOTPROD)
DOTPROD INLINE int32x4_t sdot(int32x4_t acc, int8x16_t a, int8x16_t b) {
    __asm__("sdot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
}
/* lane is a constant wherever this is inlined ("i" operand) */
#define sdot_lane(acc, a, b, lane)                                                      \
    ({                                                                                  \
        int32x4_t acc_ = (acc);                                                         \
        __asm__("sdot %0.4s, %1.16b, %2.4b[%c3]" : "+w"(acc_) : "w"(a), "w"(b), "i"(lane)); \
        acc_;                                                                           \
    })
#else
#define sdot(acc, a, b) vdotq_s32(acc, a, b)
#define sdot_lane(acc, a, b, lane) vdotq_laneq_s32(acc, a, b, lane)
#endif

/* acc + q[k] (4 bytes of each of 4 rows per lane) dotted with bytes 4k..4k+3 of a, k = 0..3: the
 * packed tiles' step (4 rows x 16 values) */
DOTPROD INLINE int32x4_t sdot_lanes4(int32x4_t acc, const int8x16_t q[4], int8x16_t a) {
    acc = sdot_lane(acc, q[0], a, 0);
    acc = sdot_lane(acc, q[1], a, 1);
    acc = sdot_lane(acc, q[2], a, 2);
    return sdot_lane(acc, q[3], a, 3);
}

#define ROW(w, rb, r) ((const void *)((const char *)(w) + (size_t)(r) * (rb)))

/* 1 when the CPU has the dot-product extension and PYLLAMA_NEON_NODOT does not forbid it
 * (kernels_neon.c) */
int pl_neon_has_dotprod(void);

INLINE float half(uint16_t h) {
    __fp16 f;
    memcpy(&f, &h, 2);
    return (float)f;
}

#endif
#endif
