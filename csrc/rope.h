/*
 * rope.h - rotary position embeddings: the per-pair rotation speeds (with the
 * scaling a file asks for) and the rotation itself (rope.c).
 */
#ifndef PL_ROPE_H
#define PL_ROPE_H

#include "pyllama.h"

/* Rotation speed of each of the head_dim/2 pairs at this base. scaled: apply the config's
 * rope_scaling (linear, llama3); divisors: per-pair divisors from the file (rope_freqs, or
 * LongRoPE's set for the context), or NULL. */
void pl_rope_inv_freq(const pl_config *c, float base, int scaled, const float *divisors, float *inv_freq);
/* LongRoPE (Phi-3 128k, Phi-3.5): the file holds two sets of per-pair divisors; a context of
 * n_ctx positions beyond the original training context (rope_orig_ctx) takes the long set, any
 * other the short one, for all its positions. That is llama.cpp's rule (which first rounds n_ctx
 * up to a multiple of 256: the same choice whenever rope_orig_ctx is one, as the released Phi-3
 * and Phi-3.5 files' 4096 and 8192 are); transformers decides per forward call by the sequence length instead. The attention
 * factor that comes with it is applied to the scores (model.c). */
const float *pl_rope_longrope_divisors(const pl_config *c, int n_ctx, const float *long_set, const float *short_set);
/* cos and sin of pos * inv_freq[i] for each of `half` pairs, interleaved. */
void pl_rope_angles(float *cs, int pos, const float *inv_freq, int half);
/* Rotate each pair of a head by its angle; neox pairs i with i + d/2, otherwise 2i with 2i+1. */
void pl_rope(float *head, int head_dim, const float *cs, int neox);

#endif
