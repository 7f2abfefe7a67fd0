/*
 * kv_cache.c - layout, storing and loading, and shifting of the KV cache (kv_cache.h).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kernels.h"
#include "kv_cache.h"
#include "quants.h"
#include "rope.h"

size_t pl_kv_elem_size(int type) { return type == PL_TYPE_F16 ? sizeof(pl_fp16) : sizeof(float); }

int pl_kv_cache_init(pl_kv_cache *kv, const pl_config *p, int n_ctx, int k_type, int v_type) {
    memset(kv, 0, sizeof *kv);
    kv->n_layers = p->n_layers;
    kv->n_kv_heads = p->n_kv_heads;
    kv->head_dim = p->head_dim;
    kv->n_ctx = n_ctx;
    kv->n_kblocks = (n_ctx + PL_KV_BLOCK - 1) / PL_KV_BLOCK;
    kv->k_type = k_type;
    kv->v_type = v_type;
    const size_t nv = (size_t)p->n_layers * n_ctx * p->n_kv_heads * p->head_dim;
    const size_t nk = (size_t)p->n_layers * p->n_kv_heads * kv->n_kblocks * PL_KV_BLOCK * p->head_dim;
    kv->keys = calloc(nk, pl_kv_elem_size(k_type));
    kv->values = calloc(nv, pl_kv_elem_size(v_type));
    if (!kv->keys || !kv->values) {
        pl_set_error("out of memory for a KV cache of %d positions (%.1f MiB)", n_ctx,
                     ((double)nk * pl_kv_elem_size(k_type) + (double)nv * pl_kv_elem_size(v_type)) / 1048576.0);
        pl_kv_cache_free(kv);
        return -1;
    }
    return 0;
}

void pl_kv_cache_free(pl_kv_cache *kv) {
    free(kv->keys);
    free(kv->values);
    kv->keys = kv->values = NULL;
}

void *pl_kv_value_row(const pl_kv_cache *kv, int layer, int pos) {
    const size_t kv_dim = (size_t)kv->n_kv_heads * kv->head_dim;
    return (char *)kv->values + (((size_t)layer * kv->n_ctx + pos) * kv_dim) * pl_kv_elem_size(kv->v_type);
}

const void *pl_kv_key_head(const pl_kv_cache *kv, int layer, int g) {
    const size_t per_head = (size_t)kv->n_kblocks * PL_KV_BLOCK * kv->head_dim;
    return (char *)kv->keys + ((size_t)layer * kv->n_kv_heads + g) * per_head * pl_kv_elem_size(kv->k_type);
}

/* Element index of (position, dimension) within a head's key blocks. */
static size_t key_index(int pos, int d, int hd) {
    return ((size_t)(pos / PL_KV_BLOCK) * hd + d) * PL_KV_BLOCK + pos % PL_KV_BLOCK;
}

void pl_kv_store_key(const pl_kv_cache *kv, int layer, int g, int pos, const float *k) {
    const int hd = kv->head_dim;
    char *base = (char *)pl_kv_key_head(kv, layer, g);
    if (kv->k_type == PL_TYPE_F16) {
        pl_fp16 h[64]; /* converted a piece at a time: head_dim comes from the file */
        for (int d0 = 0; d0 < hd; d0 += 64) {
            const int n = hd - d0 < 64 ? hd - d0 : 64;
            pl_kernels()->to_f16(k + d0, h, n);
            for (int d = 0; d < n; d++) ((pl_fp16 *)base)[key_index(pos, d0 + d, hd)] = h[d];
        }
    } else {
        for (int d = 0; d < hd; d++) ((float *)base)[key_index(pos, d, hd)] = k[d];
    }
}

void pl_kv_load_key(const pl_kv_cache *kv, int layer, int g, int pos, float *k) {
    const int hd = kv->head_dim;
    const char *base = pl_kv_key_head(kv, layer, g);
    for (int d = 0; d < hd; d++)
        k[d] = kv->k_type == PL_TYPE_F16 ? fp16_to_f32(((const pl_fp16 *)base)[key_index(pos, d, hd)])
                                         : ((const float *)base)[key_index(pos, d, hd)];
}

void pl_kv_store_value(const pl_kv_cache *kv, int layer, int g, int pos, const float *v) {
    const int hd = kv->head_dim;
    char *dst = (char *)pl_kv_value_row(kv, layer, pos) + (size_t)g * hd * pl_kv_elem_size(kv->v_type);
    if (kv->v_type == PL_TYPE_F16) pl_kernels()->to_f16(v, (pl_fp16 *)dst, hd);
    else memcpy(dst, v, (size_t)hd * sizeof(float));
}

void pl_kv_load_value(const pl_kv_cache *kv, int layer, int g, int pos, float *v) {
    const int hd = kv->head_dim;
    const char *src = (const char *)pl_kv_value_row(kv, layer, pos) + (size_t)g * hd * pl_kv_elem_size(kv->v_type);
    for (int d = 0; d < hd; d++)
        v[d] = kv->v_type == PL_TYPE_F16 ? fp16_to_f32(((const pl_fp16 *)src)[d]) : ((const float *)src)[d];
}

void pl_kv_gather_keys(const pl_kv_cache *kv, int layer, int g, int first, int n, void *dst) {
    const int hd = kv->head_dim;
    const size_t es = pl_kv_elem_size(kv->k_type);
    const char *src = pl_kv_key_head(kv, layer, g);
    for (int d = 0; d < hd; d++)
        for (int j = 0; j < n; j++)
            memcpy((char *)dst + key_index(j, d, hd) * es, src + key_index(first + j, d, hd) * es, es);
}

void pl_kv_cache_shift(const pl_kv_cache *kv, int n_past, int n_keep, int n_discard, const float *const *back_cs,
                       int neox, float *scratch) {
    const int hd = kv->head_dim;
    const size_t vb = (size_t)kv->n_kv_heads * hd * pl_kv_elem_size(kv->v_type);
    for (int l = 0; l < kv->n_layers; l++) {
        for (int s = n_keep + n_discard; s < n_past; s++) {
            memmove(pl_kv_value_row(kv, l, s - n_discard), pl_kv_value_row(kv, l, s), vb);
            /* rotations compose: turning back by n_discard positions lands on the new position */
            for (int g = 0; g < kv->n_kv_heads; g++) {
                pl_kv_load_key(kv, l, g, s, scratch);
                pl_rope(scratch, hd, back_cs[l], neox);
                pl_kv_store_key(kv, l, g, s - n_discard, scratch);
            }
        }
    }
}
