/*
 * rope.c - rotary position embeddings (RoFormer): pair i of a head turns by
 * pos * inv_freq[i]; the scaling rules change inv_freq only.
 */
#include <math.h>

#include "rope.h"

void pl_rope_inv_freq(const pl_config *c, float base, int scaled, const float *divisors, float *inv_freq) {
    const int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double f = pow((double)base, -2.0 * i / c->head_dim);
        if (scaled && c->rope_scaling == PL_ROPE_SCALING_LINEAR) {
            f /= c->rope_scale_factor;
        } else if (scaled && c->rope_scaling == PL_ROPE_SCALING_LLAMA3) {
            /* long wavelengths are slowed by the factor, short ones kept, a blend between */
            double wavelen = 2.0 * M_PI / f;
            double low_wavelen = c->rope_orig_ctx / c->rope_low_freq_factor;
            double high_wavelen = c->rope_orig_ctx / c->rope_high_freq_factor;
            if (wavelen > low_wavelen) {
                f /= c->rope_scale_factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (c->rope_orig_ctx / wavelen - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0 - smooth) * f / c->rope_scale_factor + smooth * f;
            }
        }
        if (divisors) f /= divisors[i];
        inv_freq[i] = (float)f;
    }
}

const float *pl_rope_longrope_divisors(const pl_config *c, int n_ctx, const float *long_set, const float *short_set) {
    return n_ctx > c->rope_orig_ctx ? long_set : short_set;
}

void pl_rope_angles(float *cs, int pos, const float *inv_freq, int half) {
    for (int i = 0; i < half; i++) {
        float theta = (float)pos * inv_freq[i];
        cs[2 * i] = cosf(theta);
        cs[2 * i + 1] = sinf(theta);
    }
}

void pl_rope(float *head, int head_dim, const float *cs, int neox) {
    const int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        float x0 = head[a], x1 = head[b];
        head[a] = x0 * cs[2 * i] - x1 * cs[2 * i + 1];
        head[b] = x0 * cs[2 * i + 1] + x1 * cs[2 * i];
    }
}
