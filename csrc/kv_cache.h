/*
 * kv_cache.h - the keys and values of one sequence's cached positions (kv_cache.c).
 *
 * A cache holds one sequence: positions 0..n_ctx-1 of every layer. Everything that
 * reads or writes it takes the cache itself (never the context), so a batch of
 * sequences can be run with one cache per sequence. Keys are stored transposed in
 * blocks of PL_KV_BLOCK positions, the layout the attend kernels read (kernels.h);
 * values one row of n_kv_heads * head_dim per position. Sliding-window layers keep
 * every position too: the window is applied when attending (forward.c), so a
 * context shift and a window never interact.
 */
#ifndef PL_KV_CACHE_H
#define PL_KV_CACHE_H

#include <stddef.h>
#include "pyllama.h"

typedef struct {
    int n_layers, n_kv_heads, head_dim;
    int n_ctx;          /* positions */
    int n_kblocks;      /* key blocks per (layer, kv head): n_ctx / PL_KV_BLOCK rounded up */
    int k_type, v_type; /* PL_TYPE_F16 (as llama.cpp) or PL_TYPE_F32 */
    void *keys;         /* [layer][kv head][position block][head_dim][PL_KV_BLOCK] of k_type */
    void *values;       /* [layer][position][kv head][head_dim] of v_type */
} pl_kv_cache;

/* Allocate a zeroed cache; 0 or -1 (error set, nothing to free). */
int pl_kv_cache_init(pl_kv_cache *kv, const pl_config *p, int n_ctx, int k_type, int v_type);
void pl_kv_cache_free(pl_kv_cache *kv);

/* bytes per cached element of a cache type */
size_t pl_kv_elem_size(int type);
/* The key blocks of one (layer, kv head), as the attend kernels take them. */
const void *pl_kv_key_head(const pl_kv_cache *kv, int layer, int g);
/* Where position pos of a layer starts in the value cache (its kv heads back to back). */
void *pl_kv_value_row(const pl_kv_cache *kv, int layer, int pos);

/* One kv head's key or value (head_dim floats) into the cache at position pos. */
void pl_kv_store_key(const pl_kv_cache *kv, int layer, int g, int pos, const float *k);
void pl_kv_store_value(const pl_kv_cache *kv, int layer, int g, int pos, const float *v);
/* ... and back as floats. */
void pl_kv_load_key(const pl_kv_cache *kv, int layer, int g, int pos, float *k);
void pl_kv_load_value(const pl_kv_cache *kv, int layer, int g, int pos, float *v);

/* The keys of positions first..first+n-1 of one (layer, kv head) into dst in the layout of
 * pl_kv_key_head, as if they started at position 0 (for attention over a window that starts
 * inside the cache: the kernels read whole blocks from position 0). dst holds n rounded up
 * to PL_KV_BLOCK positions. */
void pl_kv_gather_keys(const pl_kv_cache *kv, int layer, int g, int first, int n, void *dst);

/*
 * Slide positions n_keep+n_discard .. n_past-1 down by n_discard (a context shift).
 * Keys carry their position in their rotation: layer l's keys are turned back by
 * n_discard positions with back_cs[l] (pl_rope_angles of -n_discard at that layer's
 * speeds). scratch: head_dim floats.
 */
void pl_kv_cache_shift(const pl_kv_cache *kv, int n_past, int n_keep, int n_discard, const float *const *back_cs,
                       int neox, float *scratch);

#endif
