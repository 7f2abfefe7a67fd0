/*
 * llama2c.c - reads llama2.c checkpoints (Karpathy's run.c / runq.c formats).
 *
 *  legacy (v0): 7 x int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 *               vocab_size, seq_len; negative vocab_size = separate classifier),
 *               then fp32: token embedding, rms_att[L], wq[L], wk[L], wv[L], wo[L],
 *               rms_ffn[L], w1[L], w2[L], w3[L], rms_final, freq_cis_real,
 *               freq_cis_imag (seq_len * head_size / 2 each, unused), [wcls].
 *  v1:          u32 magic "ak42", i32 version 1, the 7 ints, u8 shared_classifier,
 *               padded to 256 bytes; fp32: rms_att[L], rms_ffn[L], rms_final,
 *               token embedding, wq..w3 per layer, [wcls].
 *  v2:          as v1 with version 2 and an i32 group_size after the shared flag;
 *               fp32 norms as in v1, then every matrix as int8 values followed by
 *               one fp32 scale per group: tokens, wq[L], wk[L], wv[L], wo[L],
 *               w1[L], w2[L], w3[L], [wcls].
 * Names follow GGUF's (w1 = ffn_gate, w2 = ffn_down, w3 = ffn_up), so model.c (binding)
 * binds both formats the same way. run.c rotates adjacent pairs: PL_ROPE_NORM.
 * fp32 tensors point into the mapping; v2 groups are re-packed into Q8_0 blocks
 * (a group of G values becomes G/32 blocks sharing the group's scale, stored as fp16),
 * or, for a converter (pl_read_llama2c), expanded to F32 with their fp32 scales.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "quants.h"

#define LLAMA2C_MAGIC 0x616b3432u

typedef struct {
    pl_model *m;
    const uint8_t *p, *end;
    int group_size;  /* 0 for fp32 files */
    int to_f32;      /* 1: v2 groups become F32 values (pl_read_llama2c), 0: Q8_0 blocks for evaluation */
    int next;        /* next free tensor slot */
} loader;

/* v2 groups as the Q8_0 blocks the matmul kernels read: each group of G values becomes G/32
 * blocks sharing the group's scale (rounded to fp16). */
static void *groups_to_q8_0(pl_model *m, const int8_t *q, const uint8_t *scales, int64_t n, int gs) {
    block_q8_0 *blocks = pl_model_alloc(m, (size_t)(n / QK) * sizeof(block_q8_0));
    if (!blocks) return NULL;
    for (int64_t b = 0; b < n / QK; b++) {
        float s;
        memcpy(&s, scales + (size_t)((b * QK) / gs) * 4, 4);
        blocks[b].d = f32_to_fp16(s);
        memcpy(blocks[b].qs, q + b * QK, QK);
    }
    return blocks;
}

/* v2 groups as the values they stand for, q * scale with the file's fp32 scale: what a converter
 * writes out, without the fp16 rounding of the Q8_0 blocks. */
static float *groups_to_f32(pl_model *m, const int8_t *q, const uint8_t *scales, int64_t n, int gs) {
    float *out = pl_model_alloc(m, (size_t)n * sizeof(float));
    if (!out) return NULL;
    for (int64_t g = 0; g < n / gs; g++) {
        float s;
        memcpy(&s, scales + (size_t)g * 4, 4);
        for (int j = 0; j < gs; j++) out[g * gs + j] = (float)q[g * gs + j] * s;
    }
    return out;
}

static int add_tensor(loader *ld, const char *name, int64_t ne0, int64_t ne1, int quantized) {
    pl_model *m = ld->m;
    pl_tensor *t = &m->tensors[ld->next];
    int64_t n = ne0 * ne1;
    t->name = strdup(name);
    if (!t->name) {
        pl_set_error("out of memory");
        return -1;
    }
    m->n_tensors = ++ld->next;
    t->n_dims = ne1 > 1 ? 2 : 1;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = t->ne[3] = 1;
    /* the file's size was checked against the header: these checks guard this walk itself */
    const int gs = ld->group_size;
    const uint64_t bytes = quantized ? (uint64_t)n + (uint64_t)(n / gs) * 4 : (uint64_t)n * 4;
    if ((quantized && n % gs) || bytes > (uint64_t)(ld->end - ld->p)) {
        pl_set_error("llama2.c tensor '%s' does not fit the file", name);
        return -1;
    }
    if (!quantized) {
        t->type = PL_TYPE_F32;
        t->data = ld->p;
        t->nbytes = bytes;
    } else if (ld->to_f32) {
        t->type = PL_TYPE_F32;
        t->data = groups_to_f32(m, (const int8_t *)ld->p, ld->p + n, n, gs);
        t->nbytes = (uint64_t)n * 4;
    } else {
        t->type = PL_TYPE_Q8_0;
        t->data = groups_to_q8_0(m, (const int8_t *)ld->p, ld->p + n, n, gs);
        t->nbytes = (uint64_t)(n / QK) * sizeof(block_q8_0);
    }
    if (!t->data) return -1;
    ld->p += bytes;
    return 0;
}

/* One tensor per layer, named blk.N.<suffix>. */
static int add_per_layer(loader *ld, const char *suffix, int64_t ne0, int64_t ne1, int quantized) {
    for (int l = 0; l < ld->m->cfg.n_layers; l++) {
        char name[96];
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);
        if (add_tensor(ld, name, ne0, ne1, quantized)) return -1;
    }
    return 0;
}

static int check_config(pl_config *c, const int32_t h[7], float rope_base) {
    const char *names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    const int32_t limit[7] = {1 << 16, 1 << 20, 1024, 1024, 1024, 1 << 22, 1 << 22};
    for (int i = 0; i < 7; i++) {
        int64_t v = i == 5 && h[i] < 0 ? -(int64_t)h[i] : h[i]; /* 64 bits: INT32_MIN has no 32-bit negation */
        if (v <= 0 || v > limit[i]) {
            pl_set_error("llama2.c header field %s = %d is out of range", names[i], h[i]);
            return -1;
        }
    }
    memset(c, 0, sizeof *c);
    c->dim = h[0];
    c->hidden_dim = h[1];
    c->n_layers = h[2];
    c->n_heads = h[3];
    c->n_kv_heads = h[4];
    c->n_vocab = h[5] < 0 ? -h[5] : h[5];
    c->n_ctx_train = h[6];
    if (c->dim % c->n_heads) {
        pl_set_error("llama2.c header: dim %d is not a multiple of n_heads %d", c->dim, c->n_heads);
        return -1;
    }
    if (c->n_heads % c->n_kv_heads) {
        pl_set_error("llama2.c header: n_heads %d is not a multiple of n_kv_heads %d", c->n_heads, c->n_kv_heads);
        return -1;
    }
    c->head_dim = c->dim / c->n_heads;
    if (c->head_dim % 2) {
        pl_set_error("llama2.c header: head size %d is odd (rotary embeddings rotate pairs)", c->head_dim);
        return -1;
    }
    c->norm_eps = 1e-5f; /* run.c's constant */
    c->rope_base = rope_base > 1.0f && isfinite(rope_base) ? rope_base : 10000.0f;
    c->rope_type = PL_ROPE_NORM;
    c->rope_scale_factor = 1.0f;
    return 0;
}

/* The header: the config, the format (version 0 for legacy files, v2's group size) and the
 * offset of the first tensor. */
static int read_header(pl_model *m, float rope_base, pl_llama2c_format *fmt, uint64_t *data_start) {
    const uint8_t *d = m->map.data;
    const uint64_t size = m->map.size;
    uint32_t magic = 0;
    int32_t h[7];
    if (size >= 4) memcpy(&magic, d, 4);
    memset(fmt, 0, sizeof *fmt);
    if (magic != LLAMA2C_MAGIC) {
        if (size < 28) {
            pl_set_error("llama2.c file of %llu bytes is too short for its 28-byte header", (unsigned long long)size);
            return -1;
        }
        memcpy(h, d, 28);
        fmt->shared_classifier = h[5] > 0;
        *data_start = 28;
        return check_config(&m->cfg, h, rope_base);
    }
    if (size < 256) {
        pl_set_error("llama2.c file truncated in its 256-byte header (%llu bytes)", (unsigned long long)size);
        return -1;
    }
    memcpy(&fmt->version, d + 4, 4);
    if (fmt->version != 1 && fmt->version != 2) {
        pl_set_error("llama2.c checkpoint version %d is not supported (supported: legacy, 1, 2)", fmt->version);
        return -1;
    }
    memcpy(h, d + 8, 28);
    if (d[36] > 1) {
        pl_set_error("llama2.c header: shared_classifier flag is %d, expected 0 or 1", d[36]);
        return -1;
    }
    fmt->shared_classifier = d[36];
    *data_start = 256;
    if (check_config(&m->cfg, h, rope_base)) return -1;
    if (fmt->version == 2) {
        const int gs = fmt->group_size = (int32_t)((uint32_t)d[37] | (uint32_t)d[38] << 8 | (uint32_t)d[39] << 16 |
                                                   (uint32_t)d[40] << 24);
        /* runq.c's matmul walks each row in whole groups: rows are dim or hidden_dim long */
        if (gs <= 0 || m->cfg.dim % gs || m->cfg.hidden_dim % gs) {
            pl_set_error("llama2.c v2 header: group_size %d does not divide dim %d and hidden_dim %d", gs, m->cfg.dim,
                         m->cfg.hidden_dim);
            return -1;
        }
    }
    return 0;
}

/* The bytes the header says the file holds (each file holds exactly its weights). */
static uint64_t checkpoint_size(const pl_config *c, const pl_llama2c_format *fmt, uint64_t data_start) {
    const uint64_t dim = (uint64_t)c->dim, L = (uint64_t)c->n_layers;
    const uint64_t kv_dim = (uint64_t)c->n_kv_heads * (uint64_t)c->head_dim;
    const uint64_t norms = (2 * L + 1) * dim;
    const uint64_t matrices = (uint64_t)c->n_vocab * dim * (fmt->shared_classifier ? 1 : 2) +
                              L * (2 * dim * dim + 2 * dim * kv_dim + 3 * dim * (uint64_t)c->hidden_dim);
    const uint64_t matrix_bytes =
        fmt->version == 2 ? matrices + matrices / (uint64_t)fmt->group_size * 4 : matrices * 4;
    const uint64_t rope_tables = fmt->version == 0 ? (uint64_t)c->n_ctx_train * (uint64_t)c->head_dim * 4 : 0;
    return data_start + norms * 4 + matrix_bytes + rope_tables;
}

/* Read the tensors in file order (see the top of this file). */
static int read_tensors(loader *ld, int version) {
    const pl_config *c = &ld->m->cfg;
    const int64_t dim = c->dim, hidden = c->hidden_dim, kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    const int q = ld->group_size > 0;
    if (version == 0) {
        if (add_tensor(ld, "token_embd.weight", dim, c->n_vocab, 0) ||
            add_per_layer(ld, "attn_norm.weight", dim, 1, 0) ||
            add_per_layer(ld, "attn_q.weight", dim, dim, 0) ||
            add_per_layer(ld, "attn_k.weight", dim, kv_dim, 0) ||
            add_per_layer(ld, "attn_v.weight", dim, kv_dim, 0) ||
            add_per_layer(ld, "attn_output.weight", dim, dim, 0) ||
            add_per_layer(ld, "ffn_norm.weight", dim, 1, 0) ||
            add_per_layer(ld, "ffn_gate.weight", dim, hidden, 0) ||
            add_per_layer(ld, "ffn_down.weight", hidden, dim, 0) ||
            add_per_layer(ld, "ffn_up.weight", dim, hidden, 0) ||
            add_tensor(ld, "output_norm.weight", dim, 1, 0))
            return -1;
        /* skip the precomputed rotary tables: we compute them from rope_base */
        ld->p += (uint64_t)c->n_ctx_train * (uint64_t)c->head_dim * 4;
    } else if (add_per_layer(ld, "attn_norm.weight", dim, 1, 0) ||
               add_per_layer(ld, "ffn_norm.weight", dim, 1, 0) ||
               add_tensor(ld, "output_norm.weight", dim, 1, 0) ||
               add_tensor(ld, "token_embd.weight", dim, c->n_vocab, q) ||
               add_per_layer(ld, "attn_q.weight", dim, dim, q) ||
               add_per_layer(ld, "attn_k.weight", dim, kv_dim, q) ||
               add_per_layer(ld, "attn_v.weight", dim, kv_dim, q) ||
               add_per_layer(ld, "attn_output.weight", dim, dim, q) ||
               add_per_layer(ld, "ffn_gate.weight", dim, hidden, q) ||
               add_per_layer(ld, "ffn_down.weight", hidden, dim, q) ||
               add_per_layer(ld, "ffn_up.weight", dim, hidden, q))
        return -1;
    if (!c->tied_output && add_tensor(ld, "output.weight", dim, c->n_vocab, q)) return -1;
    return 0;
}

/* Map, check and list a checkpoint's tensors; the model is not yet bound for evaluation. */
static pl_model *read_checkpoint(const char *path, float rope_base, int flags, int to_f32, pl_llama2c_format *fmt) {
    pl_clear_error();
    pl_model *m = calloc(1, sizeof *m);
    if (!m) {
        pl_set_error("out of memory");
        return NULL;
    }
    uint64_t data_start;
    if (pl_map_file(path, !(flags & PL_LOAD_NO_MMAP), &m->map) || read_header(m, rope_base, fmt, &data_start))
        goto fail;
    m->cfg.tied_output = fmt->shared_classifier;
    const uint64_t want = checkpoint_size(&m->cfg, fmt, data_start);
    if (m->map.size != want) {
        const pl_config *c = &m->cfg;
        pl_set_error("file has %llu bytes but its llama2.c v%d header (dim %d, hidden_dim %d, n_layers %d, "
                     "n_heads %d, n_kv_heads %d, vocab_size %d, seq_len %d%s) implies %llu",
                     (unsigned long long)m->map.size, fmt->version, c->dim, c->hidden_dim, c->n_layers, c->n_heads,
                     c->n_kv_heads, c->n_vocab, c->n_ctx_train, c->tied_output ? "" : ", own classifier",
                     (unsigned long long)want);
        goto fail;
    }
    m->tensors = calloc((size_t)m->cfg.n_layers * 9 + 4, sizeof(pl_tensor));
    if (!m->tensors) {
        pl_set_error("out of memory");
        goto fail;
    }
    loader ld = {m, m->map.data + data_start, m->map.data + m->map.size, fmt->group_size, to_f32, 0};
    if (read_tensors(&ld, fmt->version)) goto fail;
    return m;

fail:
    pl_model_release(m);
    free(m);
    return NULL;
}

pl_model *pl_load_llama2c(const char *path, float rope_base, int flags) {
    pl_llama2c_format fmt;
    pl_model *m = read_checkpoint(path, rope_base, flags, 0, &fmt);
    if (!m) return NULL;
    if (fmt.group_size % QK) {
        pl_set_error("llama2.c v2 group_size %d is not a multiple of %d, which pyllama's Q8_0 kernels need",
                     fmt.group_size, QK);
    } else if (!pl_model_bind(m)) {
        pl_map_seal(&m->map);
        return m;
    }
    pl_model_release(m);
    free(m);
    return NULL;
}

pl_model *pl_read_llama2c(const char *path, pl_llama2c_format *format) {
    pl_llama2c_format fmt;
    pl_model *m = read_checkpoint(path, 0.0f, 0, 1, &fmt);
    if (!m) return NULL;
    pl_map_seal(&m->map);
    if (format) *format = fmt;
    return m;
}
