/*
 * forward.c - the transformer's forward pass. The spec is tests/support/reference.py (an
 * independent numpy implementation the tests compare against); this is the same
 * computation, split over a thread team.
 *
 * One pl_forward call runs a batch of tokens through every layer:
 *   x = embed(tokens)                                  (times sqrt(dim): scale_embeddings)
 *   per layer:  attention_block: x += [norm] Wo . attention(rope([norm] Wq . rmsnorm(x)),
 *                                                           rope([norm] Wk . rmsnorm(x)), Wv . rmsnorm(x))
 *               ffn_block:       x += [norm] Wdown . (act(Wgate . rmsnorm(x)) * (Wup . rmsnorm(x)))
 *   logits = Wout . rmsnorm(x)
 * The bracketed norms and the rest of a family's differences from llama are fields
 * of pl_config (pyllama.h) and pl_layer (internal.h), read by the steps below.
 *
 * One OpenMP team does a whole forward pass: matrix products (dispatch.c) are
 * split by output rows, attention by (token, key/value head); the rest is cheap
 * next to them and written plainly. Threads meet at a barrier (team.c) before
 * anything reads a product. A product's input (normalized and, for quantized
 * weights, quantized) is made by each thread for itself when there are a few
 * tokens (a few hundred values: cheaper than a barrier), and split over the team,
 * with one more barrier, for a batch.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "kernels.h"
#include "quants.h"
#include "rope.h"

/* ------------------------------------------------------------------ the math */

/* 1 / rms(x): four sums in double: independent chains (one chain of dependent adds
 * showed in a profile, at dozens of calls per token), still exact enough to be order-blind */
static float rms_scale(const float *x, int n, float eps) {
    double s4[4] = {0.0, 0.0, 0.0, 0.0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) s4[j] += (double)x[i + j] * x[i + j];
    for (; i < n; i++) s4[0] += (double)x[i] * x[i];
    const double ss = (s4[0] + s4[1]) + (s4[2] + s4[3]);
    return (float)(1.0 / sqrt(ss / n + eps));
}

/* out = x / rms(x) * w (out may be x) */
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    const float scale = rms_scale(x, n, eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

static void add_bias(float *x, const float *bias, int n) {
    for (int i = 0; i < n; i++) x[i] += bias[i];
}

/* GELU, tanh approximation (gemma's gelu_pytorch_tanh) */
static float gelu_tanh(float x) {
    const float sqrt_2_over_pi = 0.7978845608028654f;
    return 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * (x + 0.044715f * x * x * x)));
}

/* Epilogue of the gate/up product on the rows a thread has just computed: gate = act(gate) * up. */
typedef struct {
    float *gate;
    const float *up;
    int n_tok, hidden, activation;
} glu_rows;

static void gated_activation(void *arg, int r0, int r1) {
    glu_rows *a = arg;
    const pl_kernel_set *k = pl_kernels();
    for (int t = 0; t < a->n_tok; t++) {
        float *g = a->gate + (size_t)t * a->hidden;
        const float *u = a->up + (size_t)t * a->hidden;
        if (a->activation == PL_ACT_GELU_TANH)
            for (int r = r0; r < r1; r++) g[r] = gelu_tanh(g[r]) * u[r];
        else
            k->silu_mul(g + r0, u + r0, r1 - r0);
    }
}

/* Epilogue: x[t][r] += y[t][r] on the rows a thread just computed (the residual connection). */
typedef struct {
    float *x;
    const float *y;
    int n_tok, n;
} residual_rows;

static void add_residual(void *arg, int r0, int r1) {
    residual_rows *a = arg;
    for (int t = 0; t < a->n_tok; t++)
        for (int r = r0; r < r1; r++) a->x[(size_t)t * a->n + r] += a->y[(size_t)t * a->n + r];
}

/* ------------------------------------------------------------------ products */

/* From this many tokens on, the team shares the work of preparing a product's input. */
#define SHARED_INPUT_TOKENS 8

/*
 * The input of a product over n_tok tokens: rmsnorm(x[first + t]) * norm_w, or x
 * itself when norm_w is NULL; *xq gets the input quantized when any part needs it
 * (else NULL). Called by every thread; the buffers are free again once the product
 * that reads them is followed by a barrier (every product is).
 */
static const float *product_input(pl_context *c, const float *x, const float *norm_w, int first, int n_tok,
                                  int cols, const pl_matmul_part *parts, int n_parts, const void **xq) {
    const int shared = n_tok >= SHARED_INPUT_TOKENS && omp_get_num_threads() > 1;
    const int slot = shared ? 0 : omp_get_thread_num();
    float *xn = norm_w ? c->xn + (size_t)slot * c->capacity * c->m->cfg.dim : NULL;
    void *q8 = pl_parts_need_q8(parts, n_parts) ? c->act + (size_t)slot * c->act_stride : NULL;
    const float *in = xn ? xn : x + (size_t)first * cols;
    const size_t q8_row = (size_t)(cols / QK) * sizeof(block_q8x);
    if (shared) {
#pragma omp for schedule(static) nowait
        for (int t = 0; t < n_tok; t++) {
            if (xn) rmsnorm(xn + (size_t)t * cols, x + (size_t)(first + t) * cols, norm_w, cols, c->m->cfg.norm_eps);
            if (q8) pl_quantize_act(in + (size_t)t * cols, 1, cols, (char *)q8 + t * q8_row);
        }
        pl_team_barrier(&c->team);
    } else {
        for (int t = 0; t < n_tok && xn; t++)
            rmsnorm(xn + (size_t)t * cols, x + (size_t)(first + t) * cols, norm_w, cols, c->m->cfg.norm_eps);
        if (q8) pl_quantize_act(in, n_tok, cols, q8);
    }
    *xq = q8;
    return in;
}

static pl_matmul_part part(const pl_tensor *w, int rows, float *y) {
    return (pl_matmul_part){w->type, w->data, rows, y, (size_t)rows};
}

/*
 * x += y (dim values per token) after the product that wrote y has met at a barrier;
 * with post_norm, x += rmsnorm(y) * post_norm. Without it the add runs as the product's
 * epilogue instead (residual_rows), so this is only the normalized case: every thread
 * computes each row's scale and adds its share of the row.
 */
static void add_normed_residual(pl_context *c, float *x, const float *y, const float *post_norm, int n_tok) {
    const int dim = c->m->cfg.dim;
    int r0, r1;
    pl_thread_share(dim, &r0, &r1);
    for (int t = 0; t < n_tok; t++) {
        const float *yt = y + (size_t)t * dim;
        const float s = rms_scale(yt, dim, c->m->cfg.norm_eps);
        for (int r = r0; r < r1; r++) x[(size_t)t * dim + r] += yt[r] * s * post_norm[r];
    }
}

/* x += [post_norm] W . in: the product over this thread's rows, then the residual add. */
static void project_into_residual(pl_context *c, const pl_tensor *w, const float *in_rows, int cols,
                                  const pl_tensor *post_norm, int n_tok) {
    const int dim = c->m->cfg.dim;
    const pl_matmul_part out = part(w, dim, c->xb);
    residual_rows res = {c->x, c->xb, n_tok, dim};
    const void *xq;
    const float *in = product_input(c, in_rows, NULL, 0, n_tok, cols, &out, 1, &xq);
    if (!post_norm) {
        pl_matmul_share(&out, 1, cols, in, xq, n_tok, 1, add_residual, &res, &c->team);
        pl_team_barrier(&c->team);
        return;
    }
    pl_matmul_share(&out, 1, cols, in, xq, n_tok, 1, NULL, NULL, &c->team);
    pl_team_barrier(&c->team);
    add_normed_residual(c, c->x, c->xb, post_norm->data, n_tok);
    pl_team_barrier(&c->team);
}

/* ------------------------------------------------------------------ attention */

/*
 * The n_q query heads (sharing kv head g) of a token at position pos attend to the
 * positions the layer lets them see. The kernels read keys in whole blocks from
 * position 0, so a window that starts inside the cache is first copied out, its
 * keys re-blocked from 0 in this thread's scratch (values are rows: the kernel
 * starts at the window's first row).
 */
static void attend_heads(pl_context *c, const pl_kv_cache *kv, int layer, const float *q, int n_q, int g, int pos,
                         float scale, float *out, float *att) {
    const int hd = kv->head_dim, window = c->m->layers[layer].window;
    const int first = window && pos + 1 > window ? pos + 1 - window : 0;
    const size_t vh = (size_t)hd * pl_kv_elem_size(kv->v_type);
    const void *keys = pl_kv_key_head(kv, layer, g);
    if (first) {
        void *k = c->window_keys + (size_t)omp_get_thread_num() * c->window_key_bytes;
        pl_kv_gather_keys(kv, layer, g, first, pos + 1 - first, k);
        keys = k;
    }
    pl_kernels()->attend(q, n_q, hd, kv->k_type, keys, kv->v_type,
                         (const char *)pl_kv_value_row(kv, layer, first) + g * vh, (size_t)kv->n_kv_heads * hd,
                         pos + 1 - first, scale, out, att);
}

/*
 * Causal attention of n_tok queries at positions n_past.. over the cache, through
 * the kernel table: one call per (token, key/value head) handles the n_heads/n_kv_heads
 * query heads that share it (grouped-query attention), so K and V rows are read once
 * for the group. Decode with fewer key/value heads than twice the threads (3 on 2
 * threads would leave one idle a third of the time) splits the query heads instead,
 * below. Otherwise work items are uneven (later tokens see more positions): dynamic
 * schedule; with too few items for the team each group is cut into single query
 * heads. Called by every thread of the team; a thread returns when its work is done
 * (no barrier).
 */
static void attention(pl_context *c, int layer, int n_tok) {
    const pl_config *p = &c->m->cfg;
    const int hd = p->head_dim, q_dim = p->n_heads * hd;
    const int group = p->n_heads / p->n_kv_heads;
    const float scale = p->attn_scale;
    const int nth = omp_get_num_threads(), ith = omp_get_thread_num();
    if (n_tok == 1 && p->n_kv_heads < 2 * nth) {
        /* Decode with few key/value heads: each thread takes a contiguous run of query heads
         * and attends to them one key/value head at a time, so it reads each cached key/value
         * head it needs once, in one stream its kernel prefetches ahead of (they come from
         * DRAM: the weights streamed since the last token have pushed them out). Together
         * with the kernels' prefetch this shortens a token at a few hundred cached positions;
         * either change alone gains little. */
        const int h0 = (int)((long)p->n_heads * ith / nth), h1 = (int)((long)p->n_heads * (ith + 1) / nth);
        for (int h = h0; h < h1;) {
            const int g = h / group, end = (g + 1) * group < h1 ? (g + 1) * group : h1;
            attend_heads(c, c->tok_kv[0], layer, c->q + (size_t)h * hd, end - h, g, c->tok_pos[0], scale,
                         c->xb2 + (size_t)h * hd,
                         c->att + (size_t)ith * group * c->n_ctx);
            h = end;
        }
        return;
    }
    const int split = n_tok * p->n_kv_heads < 2 * nth ? group : 1;
    const int per_item = group / split, n_items = p->n_kv_heads * split;

#pragma omp for collapse(2) schedule(dynamic, 1) nowait
    for (int t = 0; t < n_tok; t++) {
        for (int i = 0; i < n_items; i++) {
            const int g = i / split; /* key/value head */
            const size_t qo = (size_t)t * q_dim + (size_t)i * per_item * hd;
            attend_heads(c, c->tok_kv[t], layer, c->q + qo, per_item, g, c->tok_pos[t], scale, c->xb2 + qo,
                         c->att + (size_t)omp_get_thread_num() * group * c->n_ctx);
        }
    }
}

/* ------------------------------------------------------------------ the blocks */

/* q, k, v = Wq, Wk, Wv . rmsnorm(x) */
static void qkv_projection(pl_context *c, const pl_layer *L, int n_tok) {
    const pl_config *p = &c->m->cfg;
    const int q_dim = p->n_heads * p->head_dim, kv_dim = p->n_kv_heads * p->head_dim;
    const pl_matmul_part qkv[3] = {part(L->wq, q_dim, c->q), part(L->wk, kv_dim, c->k), part(L->wv, kv_dim, c->v)};
    const void *xq;
    const float *in = product_input(c, c->x, L->attn_norm->data, 0, n_tok, p->dim, qkv, 3, &xq);
    pl_matmul_share(qkv, 3, p->dim, in, xq, n_tok, 0, NULL, NULL, &c->team);
    pl_team_barrier(&c->team);
}

/* One query head: bias, norm, rotation. */
static void position_query(const pl_config *p, const pl_layer *L, float *q, int h, const float *cs) {
    const int hd = p->head_dim;
    if (L->bq) add_bias(q, (const float *)L->bq->data + (size_t)h * hd, hd);
    if (L->q_norm) rmsnorm(q, q, L->q_norm->data, hd, p->norm_eps);
    pl_rope(q, hd, cs, p->rope_type == PL_ROPE_NEOX);
}

/* One kv head: the same for its key, the value's bias, both into the cache. */
static void position_kv(pl_context *c, const pl_layer *L, int l, float *k, float *v, int g, int t, const float *cs) {
    const pl_config *p = &c->m->cfg;
    const size_t o = (size_t)g * p->head_dim;
    const int hd = p->head_dim;
    if (L->bk) add_bias(k, (const float *)L->bk->data + o, hd);
    if (L->bv) add_bias(v, (const float *)L->bv->data + o, hd);
    if (L->k_norm) rmsnorm(k, k, L->k_norm->data, hd, p->norm_eps);
    pl_rope(k, hd, cs, p->rope_type == PL_ROPE_NEOX);
    pl_kv_store_key(c->tok_kv[t], l, g, c->tok_pos[t], k);
    pl_kv_store_value(c->tok_kv[t], l, g, c->tok_pos[t], v);
}

/*
 * Biases, norms and rotary embeddings on every head, and the new keys and values into
 * the cache. Items: every key/value head and every query head of every token (one
 * token's worth of work is too little to leave to one thread while the others wait).
 * Storing a key writes head_dim scattered elements of the transposed blocks and costs
 * about KV_ITEM_WEIGHT query rotations (timed per phase with the patch of commit 881e71f), so items are dealt
 * by weight: each goes to the thread whose share holds its midpoint. (A dynamic
 * schedule cost more than it balanced.)
 */
static void position_heads(pl_context *c, int l, int n_tok) {
    enum { KV_ITEM_WEIGHT = 8 };
    const pl_config *p = &c->m->cfg;
    const pl_layer *L = &c->m->layers[l];
    const int hd = p->head_dim, q_dim = p->n_heads * hd, kv_dim = p->n_kv_heads * hd;
    const float *rope_cs = L->local_rope ? c->rope_cs_local : c->rope_cs;
    const int heads = p->n_heads + p->n_kv_heads, nth = omp_get_num_threads(), ith = omp_get_thread_num();
    const long total_w = (long)n_tok * (p->n_kv_heads * KV_ITEM_WEIGHT + p->n_heads);
    long w0 = 0;
    for (int item = 0; item < n_tok * heads; item++) {
        const int t = item / heads, h = (item % heads + p->n_heads) % heads; /* kv heads (h >= n_heads) first */
        const int w = h >= p->n_heads ? KV_ITEM_WEIGHT : 1;
        const int owner = (int)((2 * w0 + w) * nth / (2 * total_w));
        w0 += w;
        if (owner != ith) continue;
        const float *cs = rope_cs + (size_t)t * hd;
        if (h < p->n_heads) {
            position_query(p, L, c->q + (size_t)t * q_dim + (size_t)h * hd, h, cs);
        } else {
            const size_t o = (size_t)t * kv_dim + (size_t)(h - p->n_heads) * hd;
            position_kv(c, L, l, c->k + o, c->v + o, h - p->n_heads, t, cs);
        }
    }
    pl_team_barrier(&c->team);
}

/* x += [post norm] Wo . attention(q, k, v) */
static void attention_block(pl_context *c, int l, int n_tok) {
    const pl_layer *L = &c->m->layers[l];
    qkv_projection(c, L, n_tok);
    position_heads(c, l, n_tok);
    attention(c, l, n_tok);
    pl_team_barrier(&c->team);
    project_into_residual(c, L->wo, c->xb2, c->m->cfg.n_heads * c->m->cfg.head_dim, L->post_attn_norm, n_tok);
}

/* x += [post norm] Wdown . (act(Wgate . rmsnorm(x)) * (Wup . rmsnorm(x))) */
static void ffn_block(pl_context *c, int l, int n_tok) {
    const pl_config *p = &c->m->cfg;
    const pl_layer *L = &c->m->layers[l];
    const int hidden = p->hidden_dim;
    const pl_matmul_part gate_up[2] = {part(L->w_gate, hidden, c->hb), part(L->w_up, hidden, c->hb2)};
    glu_rows act = {c->hb, c->hb2, n_tok, hidden, p->activation};
    const void *xq;
    const float *in = product_input(c, c->x, L->ffn_norm->data, 0, n_tok, p->dim, gate_up, 2, &xq);
    pl_matmul_share(gate_up, 2, p->dim, in, xq, n_tok, 1, gated_activation, &act, &c->team);
    pl_team_barrier(&c->team);
    project_into_residual(c, L->w_down, c->hb, hidden, L->post_ffn_norm, n_tok);
}

/* logits = Wout . rmsnorm(x) for the n_out rows from `first` on */
static void logits_block(pl_context *c, const float *x, int first, int n_out, float *logits) {
    const pl_model *m = c->m;
    const pl_matmul_part out = part(m->output, m->cfg.n_vocab, logits);
    const void *xq;
    const float *in = product_input(c, x, m->output_norm->data, first, n_out, m->cfg.dim, &out, 1, &xq);
    pl_matmul_share(&out, 1, m->cfg.dim, in, xq, n_out, 0, NULL, NULL, &c->team);
}

/* x = embedding rows of the tokens (scaled), and each token's RoPE angles at its position */
static void embed(pl_context *c, const int32_t *tokens, int n_tokens) {
    const pl_model *m = c->m;
    const pl_config *p = &m->cfg;
    const int dim = p->dim, half = p->head_dim / 2;
    const size_t emb_row = (size_t)pl_type_nbytes(m->tok_embd->type, dim);
    const float scale = sqrtf((float)dim);
    for (int t = 0; t < n_tokens; t++) {
        float *x = c->x + (size_t)t * dim;
        dequantize_matrix_row(m->tok_embd->type, m->tok_embd->data, emb_row, tokens[t], x, dim); /* a tied output may be in panels */
        if (p->scale_embeddings)
            for (int i = 0; i < dim; i++) x[i] *= scale;
        pl_rope_angles(c->rope_cs + (size_t)t * p->head_dim, c->tok_pos[t], c->inv_freq, half);
        if (p->rope_base_local > 0.0f)
            pl_rope_angles(c->rope_cs_local + (size_t)t * p->head_dim, c->tok_pos[t], c->inv_freq_local, half);
    }
}

/*
 * The layers over the batch, then the output layer over the rows asked for: rows
 * first..first+n_out-1 (out_rows NULL) are read where they are; a listed set that does
 * not follow on is first copied together (into xb, free once the last layer is done) so
 * the output product is one call.
 */
static void run_layers(pl_context *c, int n_tokens, int first, const int *out_rows, int n_out, float *logits) {
    const pl_config *p = &c->m->cfg;
    int contiguous = 1;
    if (out_rows && n_out > 0) {
        first = out_rows[0];
        for (int i = 1; i < n_out; i++) contiguous &= out_rows[i] == first + i;
    }
    pl_team_reset(&c->team, c->n_threads);
#pragma omp parallel num_threads(c->n_threads)
    {
        pl_team_enter();
        for (int l = 0; l < p->n_layers; l++) {
            attention_block(c, l, n_tokens);
            ffn_block(c, l, n_tokens);
        }
        if (logits && n_out > 0) { /* NULL: a slice only filling the cache */
            if (contiguous) {
                logits_block(c, c->x, first, n_out, logits);
            } else {
                if (omp_get_thread_num() == 0)
                    for (int i = 0; i < n_out; i++)
                        memcpy(c->xb + (size_t)i * p->dim, c->x + (size_t)out_rows[i] * p->dim,
                               (size_t)p->dim * sizeof(float));
                pl_team_barrier(&c->team);
                logits_block(c, c->xb, 0, n_out, logits);
            }
        }
    }
}

void pl_forward(pl_context *c, const int32_t *tokens, int n_tokens, int n_past, float *logits, int logits_all,
                float *hidden) {
    const pl_config *p = &c->m->cfg;
    for (int t = 0; t < n_tokens; t++) {
        c->tok_kv[t] = &c->kv;
        c->tok_pos[t] = n_past + t;
    }
    embed(c, tokens, n_tokens);
    /* only the rows whose logits are wanted go through the final norm and output layer */
    const int first = logits_all ? 0 : n_tokens - 1;
    run_layers(c, n_tokens, first, NULL, n_tokens - first, logits);
    /* what the output layer would multiply, for every token: the vectors embeddings pool */
    for (int t = 0; hidden && t < n_tokens; t++)
        rmsnorm(hidden + (size_t)t * p->dim, c->x + (size_t)t * p->dim, c->m->output_norm->data, p->dim, p->norm_eps);
}

void pl_forward_rows(pl_context *c, const int32_t *tokens, int n_tokens, const int *out_rows, int n_out,
                     float *logits) {
    embed(c, tokens, n_tokens);
    run_layers(c, n_tokens, 0, out_rows, n_out, logits);
}
