/*
 * rope.h - rotary position embeddings: the per-pair rotation speeds (with the
 * scaling a file asks for) and the rotation itself (rope.c).
 */
#ifndef PL_ROPE_H
#define PL_ROPE_H

#include "pyllama.h"

/* Rotation speed of each of the head_dim/2 pairs at this base. scaled: apply the config's
 * rope_scaling (linear, llama3); divisors: per-pair divisors from the file (rope_freqs), or NULL. */
void pl_rope_inv_freq(const pl_config *c, float base, int scaled, const float *divisors, float *inv_freq);
/* cos and sin of pos * inv_freq[i] for each of `half` pairs, interleaved. */
void pl_rope_angles(float *cs, int pos, const float *inv_freq, int half);
/* Rotate each pair of a head by its angle; neox pairs i with i + d/2, otherwise 2i with 2i+1. */
void pl_rope(float *head, int head_dim, const float *cs, int neox);

#endif
