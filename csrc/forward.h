/*
 * forward.h - a context (one sequence's KV cache, scratch and thread team) and
 * the forward pass over it (forward.c; contexts are made in context.c).
 */
#ifndef PL_FORWARD_H
#define PL_FORWARD_H

#include "internal.h"
#include "kv_cache.h"
#include "team.h"

struct pl_context {
    pl_model *m;
    int n_ctx;
    int n_threads;
    pl_kv_cache kv;
    pl_team team;
    float *inv_freq;       /* [head_dim / 2]: RoPE angle per position for each rotated pair */
    float *inv_freq_local; /* the same for layers with their own RoPE base (pl_layer.local_rope) */
    /* scratch for a batch of up to `capacity` tokens */
    int capacity;
    float *x, *xb, *xb2, *q, *k, *v, *hb, *hb2;
    float *rope_cs;        /* [token][head_dim]: cos, sin per rotated pair */
    float *rope_cs_local;  /* the same at inv_freq_local */
    /* per thread: each thread normalizes and quantizes a product's whole input for
     * itself, which costs less than making the others wait for one copy */
    float *xn;             /* [thread][token][dim] normalized input */
    char *act;             /* [thread][...] quantized input */
    size_t act_stride;     /* bytes per thread in act */
    float *att;            /* [thread][group][n_ctx] attention scores */
    char *window_keys;     /* [thread][window_key_bytes]: a window's keys re-blocked (attend_heads) */
    size_t window_key_bytes;
    int att_threads;       /* threads the per-thread buffers are sized for */
    /* per token of the batch being run: the cache it belongs to and its position there
     * (one cache for pl_eval; one per sequence for pl_eval_batch) */
    const pl_kv_cache **tok_kv;
    int *tok_pos;
};

/* Tokens per forward pass: a long prompt goes through in slices of this many, so the
 * activation buffers stay small (prefill speed is the same from about 64 tokens on). */
#define PL_MAX_UBATCH 128

/* Scratch for batches of up to n_tok tokens (context.c); 0 or -1 (error set). */
int pl_context_reserve(pl_context *c, int n_tok);

/* One forward pass over n_tokens <= capacity tokens (already validated) at positions n_past..:
 * their keys and values into the cache, and logits for the last token (or every token when
 * logits_all) into logits, unless logits is NULL; every token's final hidden state (after the
 * output norm) into hidden, unless it is NULL. */
void pl_forward(pl_context *c, const int32_t *tokens, int n_tokens, int n_past, float *logits, int logits_all,
                float *hidden);

/* One forward pass over n_tokens <= capacity tokens whose caches and positions are already
 * in c->tok_kv / c->tok_pos (validated): logits of the n_out rows listed in out_rows (in that
 * order) into logits. c supplies the scratch and thread team. */
void pl_forward_rows(pl_context *c, const int32_t *tokens, int n_tokens, const int *out_rows, int n_out,
                     float *logits);

#endif
