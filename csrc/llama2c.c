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
 * (a group of G values becomes G/32 blocks sharing the group's scale, stored as fp16).
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
    int next;        /* next free tensor slot */
} loader;

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
    uint64_t left = (uint64_t)(ld->end - ld->p);

    if (!quantized) {
        uint64_t bytes = (uint64_t)n * 4;
        if (bytes > left) {
            pl_set_error("llama2.c file truncated in tensor '%s' (needs %llu bytes, %llu left)", name,
                         (unsigned long long)bytes, (unsigned long long)left);
            return -1;
        }
        t->type = PL_TYPE_F32;
        t->data = ld->p;
        t->nbytes = bytes;
        ld->p += bytes;
        return 0;
    }

    const int gs = ld->group_size;
    if (n % gs) {
        pl_set_error("tensor '%s' (%lld values) is not a whole number of groups of %d", name, (long long)n, gs);
        return -1;
    }
    uint64_t bytes = (uint64_t)n + (uint64_t)(n / gs) * 4;
    if (bytes > left) {
        pl_set_error("llama2.c file truncated in tensor '%s'", name);
        return -1;
    }
    const int8_t *q = (const int8_t *)ld->p;
    const uint8_t *scales = ld->p + n;
    block_q8_0 *blocks = pl_model_alloc(m, (size_t)(n / QK) * sizeof(block_q8_0));
    if (!blocks) return -1;
    for (int64_t b = 0; b < n / QK; b++) {
        float s;
        memcpy(&s, scales + (size_t)((b * QK) / gs) * 4, 4);
        blocks[b].d = f32_to_fp16(s);
        memcpy(blocks[b].qs, q + b * QK, QK);
    }
    t->type = PL_TYPE_Q8_0;
    t->data = blocks;
    t->nbytes = (uint64_t)(n / QK) * sizeof(block_q8_0);
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

static int read_header(loader *ld, int32_t h[7]) {
    if ((uint64_t)(ld->end - ld->p) < 28) {
        pl_set_error("llama2.c file truncated in its header");
        return -1;
    }
    memcpy(h, ld->p, 28);
    ld->p += 28;
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
    if (c->dim % c->n_heads || c->n_heads % c->n_kv_heads) {
        pl_set_error("llama2.c header: dim %d, %d heads and %d kv heads do not fit together", c->dim, c->n_heads,
                     c->n_kv_heads);
        return -1;
    }
    c->head_dim = c->dim / c->n_heads;
    c->norm_eps = 1e-5f; /* run.c's constant */
    c->rope_base = rope_base > 1.0f && isfinite(rope_base) ? rope_base : 10000.0f;
    c->rope_type = PL_ROPE_NORM;
    c->rope_scale_factor = 1.0f;
    return 0;
}

pl_model *pl_load_llama2c(const char *path, float rope_base, int flags) {
    pl_clear_error();
    pl_model *m = calloc(1, sizeof *m);
    if (!m) {
        pl_set_error("out of memory");
        return NULL;
    }
    if (pl_map_file(path, !(flags & PL_LOAD_NO_MMAP), &m->map)) goto fail;
    loader ld = {m, m->map.data, m->map.data + m->map.size, 0, 0};

    uint32_t magic = 0;
    if (m->map.size >= 4) memcpy(&magic, m->map.data, 4);
    int32_t h[7];
    int shared;
    if (magic == LLAMA2C_MAGIC) {
        if (m->map.size < 256) {
            pl_set_error("llama2.c file truncated in its 256-byte header");
            goto fail;
        }
        int32_t version;
        memcpy(&version, m->map.data + 4, 4);
        if (version != 1 && version != 2) {
            pl_set_error("llama2.c checkpoint version %d is not supported (supported: legacy, 1, 2)", version);
            goto fail;
        }
        ld.p += 8;
        if (read_header(&ld, h)) goto fail;
        shared = ld.p[0];
        if (version == 2) {
            memcpy(&ld.group_size, ld.p + 1, 4);
            if (ld.group_size <= 0 || ld.group_size % QK) {
                pl_set_error("llama2.c v2 group size %d is not a positive multiple of %d", ld.group_size, QK);
                goto fail;
            }
        }
        ld.p = m->map.data + 256;
        if (check_config(&m->cfg, h, rope_base)) goto fail;
    } else {
        if (read_header(&ld, h)) goto fail;
        shared = h[5] > 0;
        if (check_config(&m->cfg, h, rope_base)) goto fail;
    }
    m->cfg.tied_output = shared;

    const pl_config *c = &m->cfg;
    const int64_t dim = c->dim, hidden = c->hidden_dim, kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    m->tensors = calloc((size_t)c->n_layers * 9 + 4, sizeof(pl_tensor));
    if (!m->tensors) {
        pl_set_error("out of memory");
        goto fail;
    }
    const int q = ld.group_size > 0;
    if (magic != LLAMA2C_MAGIC) {
        if (add_tensor(&ld, "token_embd.weight", dim, c->n_vocab, 0) ||
            add_per_layer(&ld, "attn_norm.weight", dim, 1, 0) ||
            add_per_layer(&ld, "attn_q.weight", dim, dim, 0) ||
            add_per_layer(&ld, "attn_k.weight", dim, kv_dim, 0) ||
            add_per_layer(&ld, "attn_v.weight", dim, kv_dim, 0) ||
            add_per_layer(&ld, "attn_output.weight", dim, dim, 0) ||
            add_per_layer(&ld, "ffn_norm.weight", dim, 1, 0) ||
            add_per_layer(&ld, "ffn_gate.weight", dim, hidden, 0) ||
            add_per_layer(&ld, "ffn_down.weight", hidden, dim, 0) ||
            add_per_layer(&ld, "ffn_up.weight", dim, hidden, 0) ||
            add_tensor(&ld, "output_norm.weight", dim, 1, 0))
            goto fail;
        /* skip the precomputed rotary tables: we compute them from rope_base */
        uint64_t skip = (uint64_t)c->n_ctx_train * (uint64_t)c->head_dim * 4;
        if (skip > (uint64_t)(ld.end - ld.p)) {
            pl_set_error("llama2.c file truncated in freq_cis tables");
            goto fail;
        }
        ld.p += skip;
    } else {
        if (add_per_layer(&ld, "attn_norm.weight", dim, 1, 0) ||
            add_per_layer(&ld, "ffn_norm.weight", dim, 1, 0) ||
            add_tensor(&ld, "output_norm.weight", dim, 1, 0) ||
            add_tensor(&ld, "token_embd.weight", dim, c->n_vocab, q) ||
            add_per_layer(&ld, "attn_q.weight", dim, dim, q) ||
            add_per_layer(&ld, "attn_k.weight", dim, kv_dim, q) ||
            add_per_layer(&ld, "attn_v.weight", dim, kv_dim, q) ||
            add_per_layer(&ld, "attn_output.weight", dim, dim, q) ||
            add_per_layer(&ld, "ffn_gate.weight", dim, hidden, q) ||
            add_per_layer(&ld, "ffn_down.weight", hidden, dim, q) ||
            add_per_layer(&ld, "ffn_up.weight", dim, hidden, q))
            goto fail;
    }
    if (!shared && add_tensor(&ld, "output.weight", dim, c->n_vocab, q)) goto fail;
    if (ld.p != ld.end) {
        /* llama2.c files hold exactly their weights: extra bytes mean the header lies about a size */
        pl_set_error("llama2.c file has %llu bytes after the last tensor: the header (dim %d, hidden_dim %d, "
                     "%d layers, vocab %d, seq_len %d) does not match the weights",
                     (unsigned long long)(ld.end - ld.p), c->dim, c->hidden_dim, c->n_layers, c->n_vocab,
                     c->n_ctx_train);
        goto fail;
    }
    if (pl_model_bind(m)) goto fail;
    pl_map_seal(&m->map);
    return m;

fail:
    pl_model_release(m);
    free(m);
    return NULL;
}
