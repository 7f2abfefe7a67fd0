/*
 * model.c - binding: the file's tensors, found by name and checked against the
 * shapes the config implies, become the model's weight struct (pl_model and its
 * pl_layer per layer, internal.h), with each family's optional tensors and
 * per-layer options. Also the model's lookups and accessors.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kernels.h"
#include "quants.h"

/* ------------------------------------------------------------------ binding */

static const pl_tensor *find_checked(pl_model *m, const char *name, int64_t ne0, int64_t ne1, int required) {
    const pl_tensor *t = pl_find_tensor(m, name);
    if (!t) {
        if (required) pl_set_error("tensor '%s' is missing", name);
        return NULL;
    }
    int want_dims = ne1 ? 2 : 1;
    int dims = t->n_dims;
    while (dims > want_dims && t->ne[dims - 1] == 1) dims--; /* trailing 1s are harmless */
    if (dims != want_dims || t->ne[0] != ne0 || (ne1 && t->ne[1] != ne1)) {
        pl_set_error("tensor '%s' has shape [%lld, %lld], but the metadata implies [%lld, %lld]", name,
                     (long long)t->ne[0], (long long)t->ne[1], (long long)ne0, (long long)(ne1 ? ne1 : 1));
        return NULL;
    }
    return t;
}

/* Memory owned by the model (converted weights): a singly linked list of blocks,
 * each block's first pointer-sized slot links to the next. Freed with the model. */
void *pl_model_alloc(pl_model *m, size_t bytes) {
    const size_t head = 64; /* keeps the payload 64-byte aligned for SIMD loads */
    void **block = aligned_alloc(64, (head + bytes + 63) / 64 * 64);
    if (!block) {
        pl_set_error("out of memory (%zu bytes for converted weights)", bytes);
        return NULL;
    }
    block[0] = m->heap;
    m->heap = block;
    return (char *)block + head;
}

/* Vectors (norms, biases) are used as floats; convert the rare non-F32 one once. */
static int vector_to_f32(pl_model *m, const pl_tensor *t) {
    if (!t || t->type == PL_TYPE_F32) return 0;
    float *f = pl_model_alloc(m, (size_t)t->ne[0] * sizeof(float));
    if (!f) return -1;
    dequantize_row(t->type, t->data, f, t->ne[0]);
    pl_tensor *w = (pl_tensor *)t;
    w->data = f;
    w->type = PL_TYPE_F32;
    w->nbytes = (uint64_t)t->ne[0] * sizeof(float);
    return 0;
}

/*
 * Q4 matrices regrouped for decode (Q4_0R / Q4_1R, quants.h): each row's scales ahead of
 * its nibbles, in place in the file's private mapping, so the pages written become this
 * process's own and RSS stays what the mapped file pages would have been. Decode streams
 * these rows faster than the GGUF layout, which puts a 2-byte scale between every 16
 * bytes of nibbles. PYLLAMA_REPACK=0 keeps the GGUF layout (for comparisons). A tensor that cannot be made writable stays as it is.
 * On AVX-512 the 16-row panels (repack_panels, below) take these types, and Q8_0, where the rows allow.
 */
static void repack_q4k(pl_model *m, const pl_tensor *t);
static int repack_panels(pl_model *m, const pl_tensor *t, int split);

/* split: a fused matrix's parts are views starting at multiples of it (16: not fused; 1: no panels) */
static void repack_q4(pl_model *m, const pl_tensor *t, int split) {
    if (t && (t->type == PL_TYPE_Q4_K || t->type == PL_TYPE_Q6_K)) repack_q4k(m, t);
    if (t && repack_panels(m, t, split)) return;
    if (!t || (t->type != PL_TYPE_Q4_0 && t->type != PL_TYPE_Q4_1) || t->n_dims != 2) return;
    const int nb = (int)(t->ne[0] / QK);
    const int64_t rows = t->ne[1];
    const size_t rb = (size_t)pl_type_nbytes(t->type, t->ne[0]);
    void *tmp = malloc(rb);
    if (!tmp || pl_map_writable(&m->map, t->data, t->nbytes, 1)) {
        free(tmp);
        return;
    }
    for (int64_t r = 0; r < rows; r++) q4_repack_row(t->type, (char *)t->data + (size_t)r * rb, nb, tmp);
    pl_map_writable(&m->map, t->data, t->nbytes, 0);
    free(tmp);
    ((pl_tensor *)t)->type = t->type == PL_TYPE_Q4_0 ? PL_TYPE_Q4_0R : PL_TYPE_Q4_1R;
}

/*
 * Q4_K and Q6_K matrices regrouped 8 rows at a time (Q4_KR, Q6_KR, quants.h), so that the AVX-512 prefill
 * tiles and decode rows read 16 rows as SIMD lanes straight from the weights. Only where the
 * AVX-512 set is in use when the model loads: the other sets would read Q4_KR back into Q4_K
 * (correct, but slower than the file's layout). As for Q4: in place, PYLLAMA_REPACK=0 keeps
 * the GGUF layout, a tensor that cannot be made writable stays as it is.
 */
static void repack_q4k(pl_model *m, const pl_tensor *t) {
    if (t->n_dims != 2 || t->ne[1] % Q4KR_ROWS || pl_current_isa() != PL_ISA_AVX512) return;
    const int nsb = (int)(t->ne[0] / QK_K);
    const int64_t rows = t->ne[1];
    const size_t rb = (size_t)pl_type_nbytes(t->type, t->ne[0]);
    const int q6 = t->type == PL_TYPE_Q6_K;
    char *tmp = malloc(Q4KR_ROWS * rb);
    if (!tmp || pl_map_writable(&m->map, t->data, t->nbytes, 1)) {
        free(tmp);
        return;
    }
    for (int64_t r = 0; r < rows; r += Q4KR_ROWS) {
        char *g = (char *)t->data + (size_t)r * rb;
        if (q6) q6k_repack_group(g, rb, nsb, tmp);
        else q4k_repack_group(g, rb, nsb, tmp);
    }
    pl_map_writable(&m->map, t->data, t->nbytes, 0);
    free(tmp);
    ((pl_tensor *)t)->type = q6 ? PL_TYPE_Q6_KR : PL_TYPE_Q4_KR;
}

/*
 * Q4_0, Q4_1 and Q8_0 matrices regrouped 16 rows at a time (Q4_0P, Q4_1P, Q8_0P, quants.h), so
 * that the AVX-512 kernels read 16 rows as the lanes of one vector per 4 values: a decode step
 * of a few sequences then costs little more than one sequence's, where the file's layout had
 * to be transposed 16 rows at a time on every call. Only where the AVX-512 set is in use when
 * the model loads (the others read each block back into the file's layout: correct, slow), the
 * row count (and a fused matrix's parts) a multiple of 16. In place, as above. 1 if done.
 */
static int repack_panels(pl_model *m, const pl_tensor *t, int split) {
    const int ptype = q_panel_type(t->type);
    if (ptype < 0 || t->n_dims != 2 || t->ne[1] % PANEL_ROWS || split % PANEL_ROWS ||
        pl_current_isa() != PL_ISA_AVX512)
        return 0;
    const int nb = (int)(t->ne[0] / QK);
    const size_t rb = (size_t)pl_type_nbytes(t->type, t->ne[0]);
    char *tmp = malloc(PANEL_ROWS * rb);
    if (!tmp || pl_map_writable(&m->map, t->data, t->nbytes, 1)) {
        free(tmp);
        return 0;
    }
    for (int64_t r = 0; r < t->ne[1]; r += PANEL_ROWS) q_panel_repack(t->type, (char *)t->data + (size_t)r * rb, rb, nb, tmp);
    pl_map_writable(&m->map, t->data, t->nbytes, 0);
    free(tmp);
    ((pl_tensor *)t)->type = ptype;
    return 1;
}

/* blk.<l>.<suffix>, checked against [ne0, ne1] (ne1 = 0: a vector); NULL when absent and not
 * required, or with the error set. A vector comes back as F32. */
static const pl_tensor *layer_tensor(pl_model *m, int l, const char *suffix, int64_t ne0, int64_t ne1, int required) {
    char name[96];
    snprintf(name, sizeof name, "blk.%d.%s", l, suffix);
    const pl_tensor *t = find_checked(m, name, ne0, ne1, required);
    if (t && !ne1 && vector_to_f32(m, t)) return NULL;
    return t;
}

/* Rows [first, first + rows) of a matrix, as a tensor of its own (a fused matrix's part). */
static const pl_tensor *row_view(pl_model *m, const pl_tensor *t, int64_t first, int64_t rows) {
    pl_tensor *v = pl_model_alloc(m, sizeof *v);
    if (!v) return NULL;
    const int64_t row_bytes = pl_type_nbytes(t->type, t->ne[0]);
    *v = *t;
    v->ne[1] = rows;
    v->data = (const char *)t->data + first * row_bytes;
    v->nbytes = (uint64_t)(rows * row_bytes);
    return v;
}

/* A missing tensor that is not required leaves the error message empty. */
#define BIND(dst, suffix, ne0, ne1, required) \
    if (!((dst) = layer_tensor(m, l, suffix, ne0, ne1, required)) && ((required) || pl_last_error()[0])) return -1

/* Norm, Q/K/V (separate, or phi3's fused attn_qkv), output, and the family's biases and norms. */
static int bind_attention(pl_model *m, int l, pl_layer *L, int repack) {
    const pl_config *c = &m->cfg;
    const int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    const pl_tensor *qkv;
    BIND(L->attn_norm, "attn_norm.weight", c->dim, 0, 1);
    BIND(qkv, "attn_qkv.weight", c->dim, q_dim + 2 * kv_dim, 0);
    if (qkv) {
        if (repack) repack_q4(m, qkv, q_dim % PANEL_ROWS ? 1 : kv_dim); /* before the views copy its type */
        if (!(L->wq = row_view(m, qkv, 0, q_dim)) || !(L->wk = row_view(m, qkv, q_dim, kv_dim)) ||
            !(L->wv = row_view(m, qkv, q_dim + kv_dim, kv_dim)))
            return -1;
    } else {
        BIND(L->wq, "attn_q.weight", c->dim, q_dim, 1);
        BIND(L->wk, "attn_k.weight", c->dim, kv_dim, 1);
        BIND(L->wv, "attn_v.weight", c->dim, kv_dim, 1);
        for (int i = 0; repack && i < 3; i++) repack_q4(m, i == 0 ? L->wq : i == 1 ? L->wk : L->wv, PANEL_ROWS);
    }
    BIND(L->wo, "attn_output.weight", q_dim, c->dim, 1);
    BIND(L->bq, "attn_q.bias", q_dim, 0, c->has_qkv_bias);
    BIND(L->bk, "attn_k.bias", kv_dim, 0, c->has_qkv_bias);
    BIND(L->bv, "attn_v.bias", kv_dim, 0, c->has_qkv_bias);
    BIND(L->q_norm, "attn_q_norm.weight", c->head_dim, 0, c->qk_norm);
    BIND(L->k_norm, "attn_k_norm.weight", c->head_dim, 0, c->qk_norm);
    BIND(L->post_attn_norm, "post_attention_norm.weight", c->dim, 0, c->post_norms);
    if (repack) repack_q4(m, L->wo, PANEL_ROWS);
    return 0;
}

/* Norm, gate and up (separate, or phi3's ffn_up holding both), down, the family's post norm. */
static int bind_ffn(pl_model *m, int l, pl_layer *L, int repack) {
    const pl_config *c = &m->cfg;
    BIND(L->ffn_norm, "ffn_norm.weight", c->dim, 0, 1);
    if (c->fused_gate_up) {
        const pl_tensor *gate_up;
        BIND(gate_up, "ffn_up.weight", c->dim, 2 * (int64_t)c->hidden_dim, 1);
        if (repack) repack_q4(m, gate_up, c->hidden_dim);
        if (!(L->w_gate = row_view(m, gate_up, 0, c->hidden_dim)) ||
            !(L->w_up = row_view(m, gate_up, c->hidden_dim, c->hidden_dim)))
            return -1;
    } else {
        BIND(L->w_gate, "ffn_gate.weight", c->dim, c->hidden_dim, 1);
        BIND(L->w_up, "ffn_up.weight", c->dim, c->hidden_dim, 1);
        if (repack) {
            repack_q4(m, L->w_gate, PANEL_ROWS);
            repack_q4(m, L->w_up, PANEL_ROWS);
        }
    }
    BIND(L->w_down, "ffn_down.weight", c->hidden_dim, c->dim, 1);
    BIND(L->post_ffn_norm, "post_ffw_norm.weight", c->dim, 0, c->post_norms);
    if (repack) repack_q4(m, L->w_down, PANEL_ROWS);
    return 0;
}
#undef BIND

/* Per-pair divisors of the rotary frequencies (rope_freqs; LongRoPE's long and short sets):
 * head_dim/2 positive floats. *out stays NULL when the file has no such tensor. */
static int bind_rope_divisors(pl_model *m, const char *name, const pl_tensor **out) {
    const int half = m->cfg.head_dim / 2;
    const pl_tensor *t = pl_find_tensor(m, name);
    *out = NULL;
    if (!t) return 0;
    if (t->type != PL_TYPE_F32 && t->type != PL_TYPE_F16 && t->type != PL_TYPE_BF16) {
        pl_set_error("tensor '%s' has type %s; rope frequency factors must be F32, F16 or BF16", name,
                     pl_type_name(t->type));
        return -1;
    }
    if (!(t = find_checked(m, name, half, 0, 1)) || vector_to_f32(m, t)) return -1;
    const float *d = t->data;
    for (int i = 0; i < half; i++)
        if (!(d[i] > 0.0f) || !isfinite(d[i])) {
            pl_set_error("tensor '%s' holds %g at index %d; rope frequency factors must be positive", name, d[i], i);
            return -1;
        }
    *out = t;
    return 0;
}

/* Which layers see a window, and with which RoPE (pl_layer's options from the config). */
static void set_layer_options(const pl_config *c, int l, pl_layer *L) {
    const int windowed = c->sliding_window > 0 && (c->swa_period == 0 || l % c->swa_period != c->swa_period - 1);
    L->window = windowed ? c->sliding_window : 0;
    L->local_rope = windowed && c->rope_base_local > 0.0f;
}

int pl_model_bind(pl_model *m) {
    pl_config *c = &m->cfg;
    if (!m->by_name && pl_index_tensors(m)) return -1;
    const char *no_repack = getenv("PYLLAMA_REPACK");
    const int repack = !(no_repack && !strcmp(no_repack, "0"));
    const int q_dim = c->n_heads * c->head_dim;
    if (c->dim % QK || c->hidden_dim % QK || q_dim % QK || c->head_dim % 2) {
        pl_set_error("model widths (embedding %d, feed-forward %d, heads x head size %d) must be multiples of %d",
                     c->dim, c->hidden_dim, q_dim, QK);
        return -1;
    }

    if (c->attn_scale == 0.0f) c->attn_scale = 1.0f / sqrtf((float)c->head_dim);
    /* LongRoPE's attention factor scales cos and sin, so q and k each (llama.cpp, transformers): the
     * scores by its square. Applied here instead, the cached keys stay pure rotations, which a
     * context shift can rotate back without compounding the factor. */
    if (c->rope_attn_factor > 0.0f) c->attn_scale *= c->rope_attn_factor * c->rope_attn_factor;

    const pl_tensor *emb = pl_find_tensor(m, "token_embd.weight");
    if (!emb) {
        pl_set_error("tensor 'token_embd.weight' is missing");
        return -1;
    }
    if (!c->n_vocab) c->n_vocab = (int)emb->ne[1];
    if (!(m->tok_embd = find_checked(m, "token_embd.weight", c->dim, c->n_vocab, 1))) return -1;
    if (!(m->output_norm = find_checked(m, "output_norm.weight", c->dim, 0, 1))) return -1;
    m->output = pl_find_tensor(m, "output.weight");
    if (m->output) {
        if (!(m->output = find_checked(m, "output.weight", c->dim, c->n_vocab, 1))) return -1;
        c->tied_output = 0;
    } else {
        m->output = m->tok_embd;
        c->tied_output = 1;
    }
    if (vector_to_f32(m, m->output_norm)) return -1;

    if (bind_rope_divisors(m, "rope_freqs.weight", &m->rope_freqs) ||
        bind_rope_divisors(m, "rope_factors_long.weight", &m->rope_long) ||
        bind_rope_divisors(m, "rope_factors_short.weight", &m->rope_short))
        return -1;
    if (!m->rope_long != !m->rope_short) {
        pl_set_error("tensor '%s' is missing (LongRoPE needs both the long and the short factors)",
                     m->rope_long ? "rope_factors_short.weight" : "rope_factors_long.weight");
        return -1;
    }

    m->layers = calloc((size_t)c->n_layers, sizeof(pl_layer));
    if (!m->layers) {
        pl_set_error("out of memory");
        return -1;
    }
    for (int l = 0; l < c->n_layers; l++) {
        pl_layer *L = &m->layers[l];
        if (bind_attention(m, l, L, repack) || bind_ffn(m, l, L, repack)) return -1;
        set_layer_options(c, l, L);
    }
    /* a tied output is also the embedding table: only the panels, which forward.c reads rows of */
    if (repack && !c->tied_output) repack_q4(m, m->output, PANEL_ROWS);
    else if (repack) repack_panels(m, m->output, PANEL_ROWS);
    return 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp((*(const pl_tensor *const *)a)->name, (*(const pl_tensor *const *)b)->name);
}

int pl_index_tensors(pl_model *m) {
    free(m->by_name);
    m->by_name = malloc(((size_t)m->n_tensors + 1) * sizeof *m->by_name);
    if (!m->by_name) {
        pl_set_error("out of memory");
        return -1;
    }
    for (int i = 0; i < m->n_tensors; i++) m->by_name[i] = &m->tensors[i];
    qsort(m->by_name, (size_t)m->n_tensors, sizeof *m->by_name, by_name);
    for (int i = 1; i < m->n_tensors; i++)
        if (!strcmp(m->by_name[i - 1]->name, m->by_name[i]->name)) {
            pl_set_error("tensor '%s' appears twice", m->by_name[i]->name);
            return -1;
        }
    return 0;
}

static int name_vs_tensor(const void *key, const void *elem) {
    return strcmp((const char *)key, (*(const pl_tensor *const *)elem)->name);
}

const pl_tensor *pl_find_tensor(const pl_model *m, const char *name) {
    const pl_tensor *const *t = m->by_name ? bsearch(name, m->by_name, (size_t)m->n_tensors, sizeof *m->by_name,
                                                     name_vs_tensor) : NULL;
    return t ? *t : NULL;
}

void pl_model_release(pl_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_tensors; i++) free(m->tensors[i].name);
    free(m->tensors);
    free(m->by_name);
    free(m->layers);
    free(m->metadata);
    while (m->heap) {
        void **block = m->heap;
        m->heap = block[0];
        free(block);
    }
    pl_unmap_file(&m->map);
}

void pl_model_free(pl_model *m) {
    pl_model_release(m);
    free(m);
}

void pl_model_config(const pl_model *m, pl_config *out) { *out = m->cfg; }

int pl_model_set_rope_base(pl_model *m, float rope_base) {
    if (!(rope_base > 1.0f) || !isfinite(rope_base)) {
        pl_set_error("rope base must be a finite number above 1 (got %g)", rope_base);
        return -1;
    }
    m->cfg.rope_base = rope_base;
    return 0;
}

int pl_model_n_tensors(const pl_model *m) { return m->n_tensors; }

uint64_t pl_model_file_size(const pl_model *m) { return m->map.size; }

const void *pl_model_file_data(const pl_model *m) { return m->map.data; }

int pl_model_tensor(const pl_model *m, int i, pl_tensor_info *out) {
    if (i < 0 || i >= m->n_tensors) {
        pl_set_error("tensor index %d out of range", i);
        return -1;
    }
    const pl_tensor *t = &m->tensors[i];
    out->name = t->name;
    out->type = q4_base(t->type); /* a repacked matrix is reported (and read by Python) as the file has it */
    out->n_dims = t->n_dims;
    memcpy(out->ne, t->ne, sizeof t->ne);
    out->data = t->data;
    out->nbytes = t->nbytes;
    return 0;
}
