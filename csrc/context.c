/*
 * context.c - contexts: making one (KV cache, RoPE tables, scratch, thread team),
 * and the public calls that run on it: pl_eval (checks, then forward.c in slices)
 * and pl_kv_shift.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "kernels.h"
#include "rope.h"

/* RoPE speeds of the global layers and of the windowed layers with their own base. */
/* (Layers marked local_rope exist only when rope_base_local is set.) */
static void compute_inv_freq(pl_context *c) {
    const pl_model *m = c->m;
    const pl_config *p = &m->cfg;
    const float *divisors = m->rope_freqs ? m->rope_freqs->data /* first, as in llama.cpp */
                            : m->rope_long ? pl_rope_longrope_divisors(p, c->n_ctx, m->rope_long->data, m->rope_short->data)
                            : NULL;
    pl_rope_inv_freq(p, p->rope_base, 1, divisors, c->inv_freq);
    if (p->rope_base_local > 0.0f) pl_rope_inv_freq(p, p->rope_base_local, 0, NULL, c->inv_freq_local);
    else memcpy(c->inv_freq_local, c->inv_freq, (size_t)(p->head_dim / 2) * sizeof(float));
}

int pl_context_reserve(pl_context *c, int n_tok) {
    if (n_tok <= c->capacity) return 0;
    const pl_config *p = &c->m->cfg;
    const int q_dim = p->n_heads * p->head_dim, kv_dim = p->n_kv_heads * p->head_dim;
    const int widest = p->dim > p->hidden_dim ? (p->dim > q_dim ? p->dim : q_dim) : (p->hidden_dim > q_dim ? p->hidden_dim : q_dim);
    const size_t nth = (size_t)c->att_threads;
    float **bufs[] = {&c->x, &c->xb, &c->xb2, &c->q, &c->k, &c->v, &c->hb, &c->hb2, &c->rope_cs, &c->rope_cs_local,
                      &c->xn};
    size_t sizes[] = {p->dim, p->dim, q_dim, q_dim, kv_dim, kv_dim, p->hidden_dim, p->hidden_dim, p->head_dim,
                      p->head_dim, nth * p->dim};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        float *nb = realloc(*bufs[i], sizes[i] * (size_t)n_tok * sizeof(float));
        if (!nb) goto oom;
        *bufs[i] = nb;
    }
    const pl_kv_cache **nkv = realloc(c->tok_kv, (size_t)n_tok * sizeof *nkv);
    if (!nkv) goto oom;
    c->tok_kv = nkv;
    int *npos = realloc(c->tok_pos, (size_t)n_tok * sizeof *npos);
    if (!npos) goto oom;
    c->tok_pos = npos;
    const size_t stride = (pl_act_bytes(PL_TYPE_Q8_0, widest, n_tok) + 63) / 64 * 64;
    char *na = realloc(c->act, nth * stride);
    if (!na) goto oom;
    c->act = na;
    c->act_stride = stride; /* only now: a failed realloc must leave the old, consistent pair */
    c->capacity = n_tok;
    return 0;
oom:
    c->capacity = 0; /* some buffers may be larger, none is trusted until a full regrow */
    pl_set_error("out of memory for a batch of %d tokens", n_tok);
    return -1;
}

int pl_set_threads(pl_context *c, int n_threads) {
    if (n_threads <= 0) n_threads = omp_get_num_procs();
    if (n_threads > 1024) n_threads = 1024;
    if (n_threads > c->att_threads) {
        const int group = c->m->cfg.n_heads / c->m->cfg.n_kv_heads;
        if (pl_team_reserve(&c->team, n_threads)) return -1;
        float *na = realloc(c->att, (size_t)n_threads * group * c->n_ctx * sizeof(float));
        if (na) c->att = na;
        char *nw = na ? realloc(c->window_keys, (size_t)n_threads * c->window_key_bytes + 1) : NULL;
        if (!nw) {
            pl_set_error("out of memory");
            return -1;
        }
        c->window_keys = nw;
        c->att_threads = n_threads;
        c->capacity = 0; /* per-thread batch buffers are resized by the next eval */
    }
    c->n_threads = n_threads;
    return 0;
}

pl_context *pl_context_new(pl_model *m, int n_ctx, int n_threads, int type_k, int type_v) {
    pl_clear_error();
    if (!m->layers) {
        pl_set_error("this model was read for its tensors only (pl_read_llama2c): load it to evaluate it");
        return NULL;
    }
    if (n_ctx <= 0 || n_ctx > (1 << 24)) {
        pl_set_error("n_ctx must be between 1 and %d (got %d)", 1 << 24, n_ctx);
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        const int t = i ? type_v : type_k;
        if (t != PL_TYPE_F32 && t != PL_TYPE_F16) {
            pl_set_error("%s cache type %d is not supported (use %d for F32 or %d for F16)", i ? "value" : "key",
                         t, PL_TYPE_F32, PL_TYPE_F16);
            return NULL;
        }
    }
    pl_context *c = calloc(1, sizeof *c);
    if (!c) {
        pl_set_error("out of memory");
        return NULL;
    }
    c->m = m;
    c->n_ctx = n_ctx;
    (void)pl_kernels(); /* choose the kernel set now, not racily inside the first parallel region */
    const pl_config *p = &m->cfg;
    if (pl_kv_cache_init(&c->kv, p, n_ctx, type_k, type_v)) {
        free(c);
        return NULL;
    }
    c->inv_freq = malloc((size_t)(p->head_dim / 2) * sizeof(float));
    c->inv_freq_local = malloc((size_t)(p->head_dim / 2) * sizeof(float));
    if (!c->inv_freq || !c->inv_freq_local) {
        pl_set_error("out of memory");
        pl_context_free(c);
        return NULL;
    }
    compute_inv_freq(c);
    if (p->sliding_window > 0 && p->sliding_window < n_ctx) { /* windows that can start inside the cache */
        const size_t positions = (size_t)(p->sliding_window + PL_KV_BLOCK - 1) / PL_KV_BLOCK * PL_KV_BLOCK;
        c->window_key_bytes = positions * p->head_dim * pl_kv_elem_size(type_k);
    }
    if (pl_set_threads(c, n_threads) || pl_context_reserve(c, 1)) {
        pl_context_free(c);
        return NULL;
    }
    return c;
}

void pl_context_free(pl_context *c) {
    if (!c) return;
    void *bufs[] = {c->inv_freq, c->inv_freq_local, c->x, c->xb, c->xb2, c->q, c->k, c->v, c->hb, c->hb2,
                    c->rope_cs, c->rope_cs_local, c->xn, c->att, c->window_keys, c->act, (void *)c->tok_kv,
                    c->tok_pos};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    pl_kv_cache_free(&c->kv);
    pl_team_free(&c->team);
    free(c);
}

int pl_context_n_ctx(const pl_context *c) { return c->n_ctx; }

/* The checks pl_eval and pl_eval_hidden share; 0 or -1 (error set). */
static int check_batch(pl_context *c, const int32_t *tokens, int n_tokens, int n_past) {
    const pl_config *p = &c->m->cfg;
    if (n_tokens <= 0) {
        pl_set_error("eval needs at least one token");
        return -1;
    }
    if (n_past < 0 || n_past > c->n_ctx || n_tokens > c->n_ctx - n_past) {
        pl_set_error("context overflow: %d cached + %d new tokens exceed n_ctx = %d", n_past, n_tokens, c->n_ctx);
        return -1;
    }
    for (int t = 0; t < n_tokens; t++)
        if (tokens[t] < 0 || tokens[t] >= p->n_vocab) {
            pl_set_error("token id %d at index %d is outside the vocabulary [0, %d)", tokens[t], t, p->n_vocab);
            return -1;
        }
    return pl_context_reserve(c, n_tokens < PL_MAX_UBATCH ? n_tokens : PL_MAX_UBATCH);
}

int pl_eval(pl_context *c, const int32_t *tokens, int n_tokens, int n_past, float *logits, int logits_all) {
    pl_clear_error();
    const pl_config *p = &c->m->cfg;
    if (check_batch(c, tokens, n_tokens, n_past)) return -1;
    pl_set_sample_threads(c->n_threads);

    for (int start = 0; start < n_tokens; start += PL_MAX_UBATCH) {
        const int n = n_tokens - start < PL_MAX_UBATCH ? n_tokens - start : PL_MAX_UBATCH;
        const int last = start + n == n_tokens;
        if (logits_all)
            pl_forward(c, tokens + start, n, n_past + start, logits + (size_t)start * p->n_vocab, 1, NULL);
        else
            pl_forward(c, tokens + start, n, n_past + start, last ? logits : NULL, 0, NULL);
    }
    return 0;
}

/*
 * The checks of a batch over several sequences (pyllama.h, pl_eval_batch); 0 or -1
 * (error set). Each context's tokens must continue one another: a context seen before
 * in the batch takes the position after its previous token.
 */
static int check_multi_batch(pl_context *const *ctxs, const int32_t *tokens, const int32_t *pos, int n) {
    if (!ctxs || !tokens || !pos || n <= 0) {
        pl_set_error("eval_batch needs at least one token (and its context and position)");
        return -1;
    }
    const pl_context *c0 = ctxs[0];
    if (!c0) {
        pl_set_error("context 0 of the batch is NULL");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const pl_context *c = ctxs[i];
        if (!c) {
            pl_set_error("context %d of the batch is NULL", i);
            return -1;
        }
        if (c->m != c0->m) {
            pl_set_error("token %d's context belongs to another model than context 0's", i);
            return -1;
        }
        if (c->n_ctx > c0->n_ctx) {
            pl_set_error("token %d's context has n_ctx %d, more than context 0's %d (context 0 holds the "
                         "batch's scratch: put the largest first)", i, c->n_ctx, c0->n_ctx);
            return -1;
        }
        if (memcmp(c->inv_freq, c0->inv_freq, (size_t)(c0->m->cfg.head_dim / 2) * sizeof(float))) {
            /* the batch's angles come from context 0's table */
            pl_set_error("token %d's context rotates positions unlike context 0's (LongRoPE's factors depend on "
                         "n_ctx; a rope base set in between): evaluate it on its own", i);
            return -1;
        }
        if (tokens[i] < 0 || tokens[i] >= c0->m->cfg.n_vocab) {
            pl_set_error("token id %d at index %d is outside the vocabulary [0, %d)", tokens[i], i,
                         c0->m->cfg.n_vocab);
            return -1;
        }
        if (pos[i] < 0 || pos[i] >= c->n_ctx) {
            pl_set_error("context overflow: token %d at position %d of a context with n_ctx = %d", i, pos[i],
                         c->n_ctx);
            return -1;
        }
        for (int j = i - 1; j >= 0; j--)
            if (ctxs[j] == c) {
                if (pos[i] != pos[j] + 1) {
                    pl_set_error("token %d is at position %d of its context, but the batch's previous token "
                                 "there (index %d) is at %d: a context's tokens must be consecutive", i, pos[i], j,
                                 pos[j]);
                    return -1;
                }
                break;
            }
    }
    return 0;
}

int pl_eval_batch(pl_context *const *ctxs, const int32_t *tokens, const int32_t *pos, int n,
                  const int8_t *want_logits, float *logits) {
    pl_clear_error();
    if (check_multi_batch(ctxs, tokens, pos, n)) return -1;
    pl_context *c = ctxs[0];
    const int ub = n < PL_MAX_UBATCH ? n : PL_MAX_UBATCH;
    if (pl_context_reserve(c, ub)) return -1;
    int *rows = malloc((size_t)ub * sizeof *rows);
    if (!rows) {
        pl_set_error("out of memory");
        return -1;
    }
    pl_set_sample_threads(c->n_threads);
    const size_t n_vocab = (size_t)c->m->cfg.n_vocab;
    for (int start = 0; start < n; start += PL_MAX_UBATCH) {
        const int len = n - start < PL_MAX_UBATCH ? n - start : PL_MAX_UBATCH;
        int n_out = 0;
        for (int t = 0; t < len; t++) {
            c->tok_kv[t] = &ctxs[start + t]->kv;
            c->tok_pos[t] = pos[start + t];
            if (logits && (!want_logits || want_logits[start + t])) rows[n_out++] = t;
        }
        pl_forward_rows(c, tokens + start, len, rows, n_out, logits);
        if (logits) logits += (size_t)n_out * n_vocab;
    }
    free(rows);
    return 0;
}

int pl_eval_hidden(pl_context *c, const int32_t *tokens, int n_tokens, int n_past, float *hidden) {
    pl_clear_error();
    if (check_batch(c, tokens, n_tokens, n_past)) return -1;
    for (int start = 0; start < n_tokens; start += PL_MAX_UBATCH) {
        const int n = n_tokens - start < PL_MAX_UBATCH ? n_tokens - start : PL_MAX_UBATCH;
        pl_forward(c, tokens + start, n, n_past + start, NULL, 0, hidden + (size_t)start * c->m->cfg.dim);
    }
    return 0;
}

int pl_kv_shift(pl_context *c, int n_past, int n_keep, int n_discard) {
    pl_clear_error();
    if (n_past < 0 || n_past > c->n_ctx || n_keep < 0 || n_keep > n_past || n_discard <= 0 ||
        n_discard > n_past - n_keep) { /* written so that no sum can overflow */
        pl_set_error("bad context shift: n_past=%d n_keep=%d n_discard=%d", n_past, n_keep, n_discard);
        return -1;
    }
    const pl_config *p = &c->m->cfg;
    const pl_model *m = c->m;
    const int half = p->head_dim / 2;
    /* scratch (the context always has room for a token): rope_cs / rope_cs_local for the
     * two sets of speeds, c->k for one key head as floats */
    pl_rope_angles(c->rope_cs, -n_discard, c->inv_freq, half);
    pl_rope_angles(c->rope_cs_local, -n_discard, c->inv_freq_local, half);
    const float **back = malloc((size_t)p->n_layers * sizeof *back);
    if (!back) {
        pl_set_error("out of memory");
        return -1;
    }
    for (int l = 0; l < p->n_layers; l++) back[l] = m->layers[l].local_rope ? c->rope_cs_local : c->rope_cs;
    pl_kv_cache_shift(&c->kv, n_past, n_keep, n_discard, back, p->rope_type == PL_ROPE_NEOX, c->k);
    free(back);
    return n_past - n_discard;
}
