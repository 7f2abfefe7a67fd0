/*
 * model.c - the Llama-family transformer: binding weights, the KV cache and
 * the forward pass.
 *
 * One pl_eval call runs a batch of tokens (in slices of MAX_UBATCH) through every layer:
 *   x = embed(tokens)
 *   per layer:  x += Wo . attention(rope(Wq . rmsnorm(x)), rope(Wk . rmsnorm(x)), Wv . rmsnorm(x))
 *               x += Wdown . (silu(Wgate . rmsnorm(x)) * (Wup . rmsnorm(x)))
 *   logits = Wout . rmsnorm(x)
 * One OpenMP team does a whole forward pass: matrix products (dispatch.c) are
 * split by output rows, attention by (token, key/value head); the rest is cheap
 * next to them and written plainly.
 */
#include <math.h>
#include <omp.h>
#include <sched.h>
#include <stdatomic.h>
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
 * these rows 20-50% faster (bench/RESULTS.md section D). PYLLAMA_REPACK=0 keeps the GGUF
 * layout (for comparisons). A tensor that cannot be made writable stays as it is.
 */
static void repack_q4(pl_model *m, const pl_tensor *t) {
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

int pl_model_bind(pl_model *m) {
    pl_config *c = &m->cfg;
    if (!m->by_name && pl_index_tensors(m)) return -1;
    const char *no_repack = getenv("PYLLAMA_REPACK");
    const int repack = !(no_repack && !strcmp(no_repack, "0"));
    const int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    if (c->dim % QK || c->hidden_dim % QK || q_dim % QK || c->head_dim % 2) {
        pl_set_error("model widths (embedding %d, feed-forward %d, heads x head size %d) must be multiples of %d",
                     c->dim, c->hidden_dim, q_dim, QK);
        return -1;
    }

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

    m->rope_freqs = pl_find_tensor(m, "rope_freqs.weight");
    if (m->rope_freqs) {
        if (!(m->rope_freqs = find_checked(m, "rope_freqs.weight", c->head_dim / 2, 0, 1))) return -1;
        if (vector_to_f32(m, m->rope_freqs)) return -1;
    }

    m->layers = calloc((size_t)c->n_layers, sizeof(pl_layer));
    if (!m->layers) {
        pl_set_error("out of memory");
        return -1;
    }
    for (int l = 0; l < c->n_layers; l++) {
        pl_layer *L = &m->layers[l];
        char name[96];
#define BIND(field, suffix, ne0, ne1, required)                                  \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);                     \
        L->field = find_checked(m, name, ne0, ne1, required);                    \
        if (!L->field && (required || pl_last_error()[0])) return -1;
        BIND(attn_norm, "attn_norm.weight", c->dim, 0, 1)
        BIND(wq, "attn_q.weight", c->dim, q_dim, 1)
        BIND(wk, "attn_k.weight", c->dim, kv_dim, 1)
        BIND(wv, "attn_v.weight", c->dim, kv_dim, 1)
        BIND(wo, "attn_output.weight", q_dim, c->dim, 1)
        BIND(bq, "attn_q.bias", q_dim, 0, c->has_qkv_bias)
        BIND(bk, "attn_k.bias", kv_dim, 0, c->has_qkv_bias)
        BIND(bv, "attn_v.bias", kv_dim, 0, c->has_qkv_bias)
        BIND(ffn_norm, "ffn_norm.weight", c->dim, 0, 1)
        BIND(w_gate, "ffn_gate.weight", c->dim, c->hidden_dim, 1)
        BIND(w_up, "ffn_up.weight", c->dim, c->hidden_dim, 1)
        BIND(w_down, "ffn_down.weight", c->hidden_dim, c->dim, 1)
#undef BIND
        if (vector_to_f32(m, L->attn_norm) || vector_to_f32(m, L->ffn_norm) || vector_to_f32(m, L->bq) ||
            vector_to_f32(m, L->bk) || vector_to_f32(m, L->bv))
            return -1;
        const pl_tensor *mats[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
        for (size_t i = 0; repack && i < sizeof mats / sizeof mats[0]; i++) repack_q4(m, mats[i]);
    }
    if (repack && !c->tied_output) repack_q4(m, m->output); /* a tied output is also the embedding table */
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

/* ------------------------------------------------------------------ context */

/* One thread's barrier counter, alone on a pair of cache lines (Intel cores fetch lines
 * in pairs), so that signalling it never disturbs another thread's counter. */
typedef struct {
    atomic_int count;
    char pad[128 - sizeof(atomic_int)];
} barrier_slot;

struct pl_context {
    pl_model *m;
    int n_ctx;
    int n_threads;
    void *key_cache;    /* [layer][kv head][position block][head_dim][PL_KV_BLOCK] of k_type (kernels.h) */
    int n_kblocks;      /* key blocks per (layer, kv head): n_ctx / PL_KV_BLOCK rounded up */
    void *value_cache;  /* [layer][position][kv_dim] of v_type */
    int k_type, v_type; /* PL_TYPE_F16 (as llama.cpp) or PL_TYPE_F32 */
    float *inv_freq;    /* [head_dim / 2]: RoPE angle per position for each rotated pair */
    /* scratch for a batch of up to `capacity` tokens */
    int capacity;
    float *x, *xb, *xb2, *q, *k, *v, *hb, *hb2;
    float *rope_cs;     /* [token][head_dim]: cos, sin per rotated pair */
    /* per thread: each thread normalizes and quantizes a product's whole input for
     * itself, which costs less than making the others wait for one copy */
    float *xn;          /* [thread][token][dim] normalized input */
    char *act;          /* [thread][...] quantized input */
    size_t act_stride;  /* bytes per thread in act */
    float *att;         /* [thread][group][n_ctx] attention scores */
    int att_threads;    /* threads the per-thread buffers are sized for */
    barrier_slot *barrier; /* [thread] team_barrier's counters (att_threads of them) */
};

/* Per-pair rotation speeds, with the scaling the metadata asks for folded in. */
static void compute_inv_freq(const pl_model *m, float *inv_freq) {
    const pl_config *c = &m->cfg;
    const int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double f = pow((double)c->rope_base, -2.0 * i / c->head_dim);
        if (c->rope_scaling == PL_ROPE_SCALING_LINEAR) {
            f /= c->rope_scale_factor;
        } else if (c->rope_scaling == PL_ROPE_SCALING_LLAMA3) {
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
        if (m->rope_freqs) f /= ((const float *)m->rope_freqs->data)[i];
        inv_freq[i] = (float)f;
    }
}

static int grow_scratch(pl_context *c, int n_tok) {
    if (n_tok <= c->capacity) return 0;
    const pl_config *p = &c->m->cfg;
    const int q_dim = p->n_heads * p->head_dim, kv_dim = p->n_kv_heads * p->head_dim;
    const int widest = p->dim > p->hidden_dim ? (p->dim > q_dim ? p->dim : q_dim) : (p->hidden_dim > q_dim ? p->hidden_dim : q_dim);
    const size_t nth = (size_t)c->att_threads;
    float **bufs[] = {&c->x, &c->xb, &c->xb2, &c->q, &c->k, &c->v, &c->hb, &c->hb2, &c->rope_cs, &c->xn};
    size_t sizes[] = {p->dim, p->dim, q_dim, q_dim, kv_dim, kv_dim, p->hidden_dim, p->hidden_dim, p->head_dim,
                      nth * p->dim};
    for (int i = 0; i < 10; i++) {
        float *nb = realloc(*bufs[i], sizes[i] * (size_t)n_tok * sizeof(float));
        if (!nb) goto oom;
        *bufs[i] = nb;
    }
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
        barrier_slot *nb = aligned_alloc(128, (size_t)n_threads * sizeof *nb);
        float *na = nb ? realloc(c->att, (size_t)n_threads * group * c->n_ctx * sizeof(float)) : NULL;
        if (!na) {
            free(nb);
            pl_set_error("out of memory");
            return -1;
        }
        free(c->barrier);
        c->barrier = nb;
        c->att = na;
        c->att_threads = n_threads;
        c->capacity = 0; /* per-thread batch buffers are resized by the next eval */
    }
    c->n_threads = n_threads;
    return 0;
}

/* bytes per cached key or value element */
static size_t kv_size(int type) { return type == PL_TYPE_F16 ? sizeof(pl_fp16) : sizeof(float); }

pl_context *pl_context_new(pl_model *m, int n_ctx, int n_threads, int type_k, int type_v) {
    pl_clear_error();
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
    c->k_type = type_k;
    c->v_type = type_v;
    (void)pl_kernels(); /* choose the kernel set now, not racily inside the first parallel region */
    const pl_config *p = &m->cfg;
    c->n_kblocks = (n_ctx + PL_KV_BLOCK - 1) / PL_KV_BLOCK;
    size_t kv = (size_t)p->n_layers * n_ctx * p->n_kv_heads * p->head_dim;
    size_t kk = (size_t)p->n_layers * p->n_kv_heads * c->n_kblocks * PL_KV_BLOCK * p->head_dim;
    c->key_cache = calloc(kk, kv_size(type_k));
    c->value_cache = calloc(kv, kv_size(type_v));
    c->inv_freq = malloc((size_t)(p->head_dim / 2) * sizeof(float));
    if (!c->key_cache || !c->value_cache || !c->inv_freq) {
        pl_set_error("out of memory for a KV cache of %d positions (%.1f MiB)", n_ctx,
                     ((double)kk * kv_size(type_k) + (double)kv * kv_size(type_v)) / 1048576.0);
        pl_context_free(c);
        return NULL;
    }
    compute_inv_freq(m, c->inv_freq);
    if (pl_set_threads(c, n_threads) || grow_scratch(c, 1)) {
        pl_context_free(c);
        return NULL;
    }
    return c;
}

void pl_context_free(pl_context *c) {
    if (!c) return;
    void *bufs[] = {c->key_cache, c->value_cache, c->inv_freq, c->x, c->xb, c->xb2, c->q,
                     c->k, c->v, c->hb, c->hb2, c->rope_cs, c->xn, c->att};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(c->act);
    free(c->barrier);
    free(c);
}

int pl_context_n_ctx(const pl_context *c) { return c->n_ctx; }

/* Where position `pos` of layer `layer` starts in the value cache. */
static void *value_row(const pl_context *c, int layer, int pos) {
    const size_t kv_dim = (size_t)c->m->cfg.n_kv_heads * c->m->cfg.head_dim;
    return (char *)c->value_cache + (((size_t)layer * c->n_ctx + pos) * kv_dim) * kv_size(c->v_type);
}

/* The key blocks of one (layer, kv head): the layout the attend kernels read (kernels.h). */
static char *key_head(const pl_context *c, int layer, int g) {
    const pl_config *p = &c->m->cfg;
    const size_t per_head = (size_t)c->n_kblocks * PL_KV_BLOCK * p->head_dim;
    return (char *)c->key_cache + ((size_t)layer * p->n_kv_heads + g) * per_head * kv_size(c->k_type);
}

/* Element index of (position, dimension) within a head's key blocks. */
static size_t key_index(int pos, int d, int hd) {
    return ((size_t)(pos / PL_KV_BLOCK) * hd + d) * PL_KV_BLOCK + pos % PL_KV_BLOCK;
}

/* One head's key (hd floats) into the cache at position pos. */
static void key_store(const pl_context *c, int layer, int g, int pos, const float *k) {
    const int hd = c->m->cfg.head_dim;
    char *base = key_head(c, layer, g);
    if (c->k_type == PL_TYPE_F16) {
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

/* One head's key at position pos, as floats. */
static void key_load(const pl_context *c, int layer, int g, int pos, float *k) {
    const int hd = c->m->cfg.head_dim;
    const char *base = key_head(c, layer, g);
    for (int d = 0; d < hd; d++)
        k[d] = c->k_type == PL_TYPE_F16 ? fp16_to_f32(((const pl_fp16 *)base)[key_index(pos, d, hd)])
                                        : ((const float *)base)[key_index(pos, d, hd)];
}

/* Store n floats into a cache row, converting when the cache holds halves. */
static void kv_store(void *dst, int type, const float *src, int n) {
    if (type == PL_TYPE_F16) pl_kernels()->to_f16(src, dst, n);
    else memcpy(dst, src, (size_t)n * sizeof(float));
}

/* ------------------------------------------------------------------ the math */

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    /* four sums in double: independent chains (one chain of dependent adds cost
     * ~1 us per call, dozens of calls per token), still exact enough to be order-blind */
    double s4[4] = {0.0, 0.0, 0.0, 0.0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) s4[j] += (double)x[i + j] * x[i + j];
    for (; i < n; i++) s4[0] += (double)x[i] * x[i];
    const double ss = (s4[0] + s4[1]) + (s4[2] + s4[3]);
    float scale = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* cos and sin of pos * inv_freq[i] for each rotated pair: computed once per position, used by every head and layer. */
static void rope_angles(float *cs, int pos, const float *inv_freq, int half) {
    for (int i = 0; i < half; i++) {
        float theta = (float)pos * inv_freq[i];
        cs[2 * i] = cosf(theta);
        cs[2 * i + 1] = sinf(theta);
    }
}

/* Rotate each pair of a head by its angle; `neox` pairs i with i + d/2, otherwise 2i with 2i+1. */
static void rope(float *head, int head_dim, const float *cs, int neox) {
    const int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        float x0 = head[a], x1 = head[b];
        head[a] = x0 * cs[2 * i] - x1 * cs[2 * i + 1];
        head[b] = x0 * cs[2 * i + 1] + x1 * cs[2 * i];
    }
}

/* SwiGLU on the rows a thread has just computed: gate = silu(gate) * up. */
typedef struct {
    float *gate;
    const float *up;
    int n_tok, hidden;
} swiglu_rows;

static void swiglu(void *arg, int r0, int r1) {
    swiglu_rows *a = arg;
    const pl_kernel_set *k = pl_kernels();
    for (int t = 0; t < a->n_tok; t++)
        k->silu_mul(a->gate + (size_t)t * a->hidden + r0, a->up + (size_t)t * a->hidden + r0, r1 - r0);
}

/* ---- a barrier that gives the CPU away ----
 *
 * libgomp's barrier spins for milliseconds before sleeping. When the cores are
 * shared with other work (a laptop), the spinning thread occupies the core its
 * partner needs to reach the barrier, and a decode step with ~200 barriers goes
 * from 5 ms to 700 ms (bench/RESULTS.md, section 4b). This one spins briefly,
 * then yields the core on every check.
 */
static void cpu_relax(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/*
 * A dissemination barrier: in round r (r = 0, 1, ... while 2^r < n) every thread
 * signals by raising its own counter and waits for the counter of the thread 2^r
 * places before it; after the last round every thread has heard, through a chain
 * of release/acquire pairs, from every other. Nobody writes a shared line: with one
 * shared arrival counter every thread's arrival was a read-modify-write of the same
 * line, one after another: a decode step with 16 threads took 1.16x as long, with 8
 * 1.04x (bench/RESULTS.md, F; at 2-4 threads the two cost the same). Counters only
 * grow during a forward pass (reset before it): a partner's counter at or past the
 * value this round asks for means it has signalled.
 */
static void team_barrier(pl_context *c) {
    const int n = omp_get_num_threads();
    if (n == 1) return;
    const int me = omp_get_thread_num();
    barrier_slot *slots = c->barrier;
    int count = atomic_load_explicit(&slots[me].count, memory_order_relaxed);
    for (int step = 1; step < n; step *= 2) {
        count++;
        atomic_store_explicit(&slots[me].count, count, memory_order_release);
        atomic_int *partner = &slots[(me - step + n) % n].count;
        for (int spins = 0; atomic_load_explicit(partner, memory_order_acquire) < count; spins++) {
            if (spins < 256) cpu_relax();
            else sched_yield();
        }
    }
}

/* ---- the forward pass: one OpenMP team for the whole batch ----
 *
 * Threads split every matrix product by output rows and meet at a barrier
 * before anything reads the product. Per layer there are six meeting points:
 * after QKV, after RoPE and the cache store, after attention, after Wo
 * (+ residual), after gate/up (+ SwiGLU), after down (+ residual). A product's
 * input (normalized and, for quantized weights, quantized) is made by each
 * thread for itself when there are a few tokens (a few hundred values: cheaper
 * than a barrier), and split over the team, with one more barrier, for a batch.
 */

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
        team_barrier(c);
    } else {
        for (int t = 0; t < n_tok && xn; t++)
            rmsnorm(xn + (size_t)t * cols, x + (size_t)(first + t) * cols, norm_w, cols, c->m->cfg.norm_eps);
        if (q8) pl_quantize_act(in, n_tok, cols, q8);
    }
    *xq = q8;
    return in;
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
static void attention(pl_context *c, int layer, int n_tok, int n_past) {
    const pl_config *p = &c->m->cfg;
    const int hd = p->head_dim, q_dim = p->n_heads * hd, kv_dim = p->n_kv_heads * hd;
    const int group = p->n_heads / p->n_kv_heads;
    const float scale = 1.0f / sqrtf((float)hd);
    const char *vc = value_row(c, layer, 0);
    const size_t vh = (size_t)hd * kv_size(c->v_type);
    const pl_attend_fn attend = pl_kernels()->attend;
    const int nth = omp_get_num_threads(), ith = omp_get_thread_num();
    if (n_tok == 1 && p->n_kv_heads < 2 * nth) {
        /* Decode with few key/value heads: each thread takes a contiguous run of query heads
         * and attends to them one key/value head at a time, so it reads each cached key/value
         * head it needs once, in one stream its kernel prefetches ahead of (they come from
         * DRAM: the weights streamed since the last token have pushed them out). With the
         * kernels' prefetch, 400-464 cached positions: 3.04-3.25 -> 2.73-2.80 ms a token;
         * either change alone gains little (bench/RESULTS.md D). */
        const int h0 = (int)((long)p->n_heads * ith / nth), h1 = (int)((long)p->n_heads * (ith + 1) / nth);
        for (int h = h0; h < h1;) {
            const int g = h / group, end = (g + 1) * group < h1 ? (g + 1) * group : h1;
            attend(c->q + (size_t)h * hd, end - h, hd, c->k_type, key_head(c, layer, g), c->v_type, vc + g * vh,
                   (size_t)kv_dim, n_past + 1, scale, c->xb2 + (size_t)h * hd, c->att + (size_t)ith * group * c->n_ctx);
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
            attend(c->q + qo, per_item, hd, c->k_type, key_head(c, layer, g), c->v_type, vc + g * vh, (size_t)kv_dim,
                   n_past + t + 1, scale, c->xb2 + qo,
                   c->att + (size_t)omp_get_thread_num() * group * c->n_ctx);
        }
    }
}

static void add_bias(float *x, const float *bias, int n) {
    for (int i = 0; i < n; i++) x[i] += bias[i];
}

/* Called by every thread of the team. */
static void layer_forward(pl_context *c, int l, int n_tok, int n_past) {
    const pl_config *p = &c->m->cfg;
    const pl_layer *L = &c->m->layers[l];
    const int dim = p->dim, hd = p->head_dim, hidden = p->hidden_dim;
    const int q_dim = p->n_heads * hd, kv_dim = p->n_kv_heads * hd;
    const int neox = p->rope_type == PL_ROPE_NEOX;

    /* q, k, v = Wq, Wk, Wv . rmsnorm(x) */
    const pl_matmul_part qkv[3] = {
        {L->wq->type, L->wq->data, q_dim, c->q, (size_t)q_dim},
        {L->wk->type, L->wk->data, kv_dim, c->k, (size_t)kv_dim},
        {L->wv->type, L->wv->data, kv_dim, c->v, (size_t)kv_dim},
    };
    const void *xq;
    const float *in = product_input(c, c->x, L->attn_norm->data, 0, n_tok, dim, qkv, 3, &xq);
    pl_matmul_share(qkv, 3, dim, in, xq, n_tok, 0, NULL, NULL);
team_barrier(c);

    /* biases, rotary embeddings, and the new keys and values into the cache */
    /* items: every key/value head and every query head of every token (one token's
     * worth of work is too little to leave to one thread while the others wait).
     * Storing a key writes head_dim scattered elements of the transposed blocks and
     * costs about KV_ITEM_WEIGHT query rotations (bench/phase_timing.patch), so items
     * are dealt by weight: each goes to the thread whose share holds its midpoint.
     * (A dynamic schedule cost more than it balanced.) */
    enum { KV_ITEM_WEIGHT = 8 };
    const int heads = p->n_heads + p->n_kv_heads, nth = omp_get_num_threads(), ith = omp_get_thread_num();
    const long total_w = (long)n_tok * (p->n_kv_heads * KV_ITEM_WEIGHT + p->n_heads);
    long w0 = 0;
    for (int item = 0; item < n_tok * heads; item++) {
        const int t = item / heads, h = (item % heads + p->n_heads) % heads; /* kv heads (h >= n_heads) first */
        const int w = h >= p->n_heads ? KV_ITEM_WEIGHT : 1;
        const int owner = (int)((2 * w0 + w) * nth / (2 * total_w));
        w0 += w;
        if (owner != ith) continue;
        const float *cs = c->rope_cs + (size_t)t * hd;
        if (h < p->n_heads) {
            float *q = c->q + (size_t)t * q_dim + (size_t)h * hd;
            if (L->bq) add_bias(q, (const float *)L->bq->data + (size_t)h * hd, hd);
            rope(q, hd, cs, neox);
        } else {
            const size_t o = (size_t)(h - p->n_heads) * hd;
            float *k = c->k + (size_t)t * kv_dim + o, *v = c->v + (size_t)t * kv_dim + o;
            if (L->bk) add_bias(k, (const float *)L->bk->data + o, hd);
            if (L->bv) add_bias(v, (const float *)L->bv->data + o, hd);
            rope(k, hd, cs, neox);
            key_store(c, l, h - p->n_heads, n_past + t, k);
            kv_store((char *)value_row(c, l, n_past + t) + o * kv_size(c->v_type), c->v_type, v, hd);
        }
    }
    team_barrier(c);
    attention(c, l, n_tok, n_past);
    team_barrier(c);

    /* x += Wo . attention */
    const pl_matmul_part wo = {L->wo->type, L->wo->data, dim, c->xb, (size_t)dim};
    residual_rows res = {c->x, c->xb, n_tok, dim};
    in = product_input(c, c->xb2, NULL, 0, n_tok, q_dim, &wo, 1, &xq);
    pl_matmul_share(&wo, 1, q_dim, in, xq, n_tok, 1, add_residual, &res);
team_barrier(c);

    /* h = silu(Wgate . rmsnorm(x)) * (Wup . rmsnorm(x)) */
    const pl_matmul_part gate_up[2] = {
        {L->w_gate->type, L->w_gate->data, hidden, c->hb, (size_t)hidden},
        {L->w_up->type, L->w_up->data, hidden, c->hb2, (size_t)hidden},
    };
    swiglu_rows act = {c->hb, c->hb2, n_tok, hidden};
    in = product_input(c, c->x, L->ffn_norm->data, 0, n_tok, dim, gate_up, 2, &xq);
    pl_matmul_share(gate_up, 2, dim, in, xq, n_tok, 1, swiglu, &act);
team_barrier(c);

    /* x += Wdown . h */
    const pl_matmul_part down = {L->w_down->type, L->w_down->data, dim, c->xb, (size_t)dim};
    in = product_input(c, c->hb, NULL, 0, n_tok, hidden, &down, 1, &xq);
    pl_matmul_share(&down, 1, hidden, in, xq, n_tok, 1, add_residual, &res);
team_barrier(c);
}

/* One forward pass over n_tokens tokens (already validated) at positions n_past.. */
static void forward(pl_context *c, const int32_t *tokens, int n_tokens, int n_past, float *logits, int logits_all,
                    float *hidden) {
    const pl_model *m = c->m;
    const pl_config *p = &m->cfg;
    const int dim = p->dim;
    const size_t emb_row = (size_t)pl_type_nbytes(m->tok_embd->type, dim);
    for (int t = 0; t < n_tokens; t++) {
        dequantize_row(m->tok_embd->type, (const char *)m->tok_embd->data + (size_t)tokens[t] * emb_row,
                       c->x + (size_t)t * dim, dim);
        rope_angles(c->rope_cs + (size_t)t * p->head_dim, n_past + t, c->inv_freq, p->head_dim / 2);
    }

    /* only the rows whose logits are wanted go through the final norm and output layer */
    const int first = logits_all ? 0 : n_tokens - 1, n_out = n_tokens - first;
    const pl_matmul_part out = {m->output->type, m->output->data, p->n_vocab, logits, (size_t)p->n_vocab};

    for (int i = 0; i < c->n_threads; i++) atomic_store_explicit(&c->barrier[i].count, 0, memory_order_relaxed);
#pragma omp parallel num_threads(c->n_threads)
    {
        pl_team_enter();
        for (int l = 0; l < p->n_layers; l++) layer_forward(c, l, n_tokens, n_past);
        if (logits) { /* NULL: a slice of a longer prompt, only filling the cache */
            const void *xq;
            const float *in = product_input(c, c->x, m->output_norm->data, first, n_out, dim, &out, 1, &xq);
            pl_matmul_share(&out, 1, dim, in, xq, n_out, 0, NULL, NULL);
        }
    }
    /* the input the output layer would see, for every token: what embeddings pool */
    for (int t = 0; hidden && t < n_tokens; t++)
        rmsnorm(hidden + (size_t)t * dim, c->x + (size_t)t * dim, m->output_norm->data, dim, p->norm_eps);
}

/* Tokens per forward pass: a long prompt goes through in slices of this many, so the
 * activation buffers stay small (prefill speed is the same from about 64 tokens on). */
#define MAX_UBATCH 128

int pl_eval(pl_context *c, const int32_t *tokens, int n_tokens, int n_past, float *logits, int logits_all) {
    pl_clear_error();
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
    if (grow_scratch(c, n_tokens < MAX_UBATCH ? n_tokens : MAX_UBATCH)) return -1;
    pl_set_sample_threads(c->n_threads);

    for (int start = 0; start < n_tokens; start += MAX_UBATCH) {
        const int n = n_tokens - start < MAX_UBATCH ? n_tokens - start : MAX_UBATCH;
        const int last = start + n == n_tokens;
        if (logits_all) forward(c, tokens + start, n, n_past + start, logits + (size_t)start * p->n_vocab, 1, NULL);
        else forward(c, tokens + start, n, n_past + start, last ? logits : NULL, 0, NULL);
    }
    return 0;
}

int pl_eval_hidden(pl_context *c, const int32_t *tokens, int n_tokens, int n_past, float *hidden) {
    pl_clear_error();
    const pl_config *p = &c->m->cfg;
    if (n_tokens <= 0 || n_past < 0 || n_past > c->n_ctx || n_tokens > c->n_ctx - n_past) {
        pl_set_error("context overflow: %d cached + %d new tokens exceed n_ctx = %d", n_past, n_tokens, c->n_ctx);
        return -1;
    }
    for (int t = 0; t < n_tokens; t++)
        if (tokens[t] < 0 || tokens[t] >= p->n_vocab) {
            pl_set_error("token id %d at index %d is outside the vocabulary [0, %d)", tokens[t], t, p->n_vocab);
            return -1;
        }
    if (grow_scratch(c, n_tokens < MAX_UBATCH ? n_tokens : MAX_UBATCH)) return -1;
    for (int start = 0; start < n_tokens; start += MAX_UBATCH) {
        const int n = n_tokens - start < MAX_UBATCH ? n_tokens - start : MAX_UBATCH;
        forward(c, tokens + start, n, n_past + start, NULL, 0, hidden + (size_t)start * p->dim);
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
    const int hd = p->head_dim, kv_dim = p->n_kv_heads * hd;
    const int neox = p->rope_type == PL_ROPE_NEOX;
    rope_angles(c->rope_cs, -n_discard, c->inv_freq, hd / 2);
    float *key = c->k; /* scratch for one key head as floats (the context always has room for a token) */
    const size_t vb = (size_t)kv_dim * kv_size(c->v_type);
    for (int l = 0; l < p->n_layers; l++) {
        for (int s = n_keep + n_discard; s < n_past; s++) {
            memmove(value_row(c, l, s - n_discard), value_row(c, l, s), vb);
            /* rotations compose: turning back by n_discard positions lands on the new position */
            for (int g = 0; g < p->n_kv_heads; g++) {
                key_load(c, l, g, s, key);
                rope(key, hd, c->rope_cs, neox);
                key_store(c, l, g, s - n_discard, key);
            }
        }
    }
    return n_past - n_discard;
}
