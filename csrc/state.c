/*
 * state.c - a context's KV cache out to bytes and back in (Llama.save_state / load_state).
 *
 * Layout: a header of 8 int32 in the machine's byte order (magic "PLKV", version, n_tokens, n_layers,
 * n_kv_heads, head_dim, key type, value type), then for each layer and key/value head the
 * key blocks that hold positions 0..n_tokens-1 (whole blocks, kernels.h's layout), then
 * for each layer the value rows of those positions. Only the shape, not the weights, is
 * recorded: a state restores into any context of a model with the same shape, and it is
 * the caller's business that it is the same model.
 */
#include <string.h>

#include "forward.h"
#include "internal.h"
#include "kernels.h"
#include "kv_cache.h"

#define STATE_MAGIC 0x564b4c50 /* "PLKV" on a little-endian machine */
#define STATE_VERSION 1
#define HEADER_INTS 8

/* Bytes of the key blocks of one (layer, head) that cover n positions. */
static uint64_t key_run(const pl_kv_cache *kv, int n) {
    uint64_t blocks = (uint64_t)(n + PL_KV_BLOCK - 1) / PL_KV_BLOCK;
    return blocks * PL_KV_BLOCK * kv->head_dim * pl_kv_elem_size(kv->k_type);
}

static uint64_t value_row(const pl_kv_cache *kv) {
    return (uint64_t)kv->n_kv_heads * kv->head_dim * pl_kv_elem_size(kv->v_type);
}

static uint64_t body_size(const pl_kv_cache *kv, int n) {
    uint64_t heads = (uint64_t)kv->n_layers * kv->n_kv_heads;
    return heads * key_run(kv, n) + (uint64_t)kv->n_layers * n * value_row(kv);
}

static void header(const pl_kv_cache *kv, int n, int32_t out[HEADER_INTS]) {
    int32_t h[HEADER_INTS] = {STATE_MAGIC, STATE_VERSION, n, kv->n_layers, kv->n_kv_heads, kv->head_dim,
                              kv->k_type, kv->v_type};
    memcpy(out, h, sizeof h);
}

uint64_t pl_state_size(const pl_context *c, int n_tokens) {
    if (n_tokens < 0 || n_tokens > c->kv.n_ctx) return 0;
    return HEADER_INTS * sizeof(int32_t) + body_size(&c->kv, n_tokens);
}

int pl_state_save(const pl_context *c, int n_tokens, uint8_t *buf, uint64_t size) {
    pl_clear_error();
    uint64_t need = pl_state_size(c, n_tokens);
    if (need == 0 || size < need) {
        pl_set_error("state of %d tokens: bad length or buffer of %llu bytes too small", n_tokens,
                     (unsigned long long)size);
        return -1;
    }
    const pl_kv_cache *kv = &c->kv;
    int32_t h[HEADER_INTS];
    header(kv, n_tokens, h);
    memcpy(buf, h, sizeof h);
    buf += sizeof h;
    const uint64_t run = key_run(kv, n_tokens), rows = (uint64_t)n_tokens * value_row(kv);
    for (int l = 0; l < kv->n_layers; l++)
        for (int g = 0; g < kv->n_kv_heads; g++, buf += run) memcpy(buf, pl_kv_key_head(kv, l, g), run);
    for (int l = 0; l < kv->n_layers; l++, buf += rows)
        if (rows) memcpy(buf, pl_kv_value_row(kv, l, 0), rows);
    return 0;
}

int pl_state_load(pl_context *c, int n_tokens, const uint8_t *buf, uint64_t size) {
    pl_clear_error();
    const pl_kv_cache *kv = &c->kv;
    if (n_tokens < 0 || n_tokens > kv->n_ctx) {
        pl_set_error("state of %d tokens does not fit a context of %d", n_tokens, kv->n_ctx);
        return -1;
    }
    int32_t want[HEADER_INTS], got[HEADER_INTS];
    header(kv, n_tokens, want);
    if (size < sizeof got) {
        pl_set_error("state of %llu bytes is too short for its header", (unsigned long long)size);
        return -1;
    }
    memcpy(got, buf, sizeof got);
    if (got[0] != STATE_MAGIC || got[1] != STATE_VERSION) {
        pl_set_error("not a pyllama KV state (bad magic or version)");
        return -1;
    }
    if (memcmp(got, want, sizeof got) != 0) {
        pl_set_error("state is of %d tokens, %d layers, %d kv heads of %d, key/value types %d/%d; this "
                     "context wants %d tokens, %d layers, %d kv heads of %d, types %d/%d",
                     got[2], got[3], got[4], got[5], got[6], got[7], want[2], want[3], want[4], want[5],
                     want[6], want[7]);
        return -1;
    }
    if (size != pl_state_size(c, n_tokens)) {
        pl_set_error("state is %llu bytes, expected %llu", (unsigned long long)size,
                     (unsigned long long)pl_state_size(c, n_tokens));
        return -1;
    }
    buf += sizeof got;
    const uint64_t run = key_run(kv, n_tokens), rows = (uint64_t)n_tokens * value_row(kv);
    for (int l = 0; l < kv->n_layers; l++)
        for (int g = 0; g < kv->n_kv_heads; g++, buf += run)
            memcpy((void *)pl_kv_key_head(kv, l, g), buf, run);
    for (int l = 0; l < kv->n_layers; l++, buf += rows)
        if (rows) memcpy(pl_kv_value_row(kv, l, 0), buf, rows);
    return 0;
}
