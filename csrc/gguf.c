/*
 * gguf.c - reads a GGUF file (versions 2 and 3) into a pl_model.
 *
 * The file is mapped (privately, read-only but for the Q4 matrices model.c regroups
 * in place; with PL_LOAD_NO_MMAP read into memory instead) and tensors point straight
 * into it, so loading costs no copy of the weights. Everything read from the file is
 * treated as hostile: every count, length and offset is checked against the
 * bytes that remain before it is used.
 *
 * Layout: "GGUF" u32 version, u64 n_tensors, u64 n_kv,
 *         n_kv x (string key, u32 type, value),
 *         n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset),
 *         padding to general.alignment, tensor data (offsets relative to here).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "quants.h"

enum {
    GGUF_U8 = 0, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL,
    GGUF_STRING, GGUF_ARRAY, GGUF_U64, GGUF_I64, GGUF_F64, GGUF_NTYPES
};

static const int SCALAR_SIZE[GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

typedef struct {
    const uint8_t *p, *end, *start;
} cursor;

typedef struct {
    const char *key;
    uint64_t key_len;
    uint32_t type;
    const uint8_t *value;   /* the value's bytes in the file */
    uint32_t array_type;    /* for arrays */
    uint64_t array_count;
    uint64_t value_size;    /* bytes of the value in the file */
} kv_entry;

typedef struct {
    kv_entry *kv;
    uint64_t n_kv;
} metadata;

static uint64_t remaining(const cursor *c) { return (uint64_t)(c->end - c->p); }

static int take(cursor *c, void *dst, uint64_t n, const char *what) {
    if (remaining(c) < n) {
        pl_set_error("file truncated while reading %s (offset %llu)", what,
                     (unsigned long long)(c->p - c->start));
        return -1;
    }
    if (dst) memcpy(dst, c->p, n);
    c->p += n;
    return 0;
}

static int read_u32(cursor *c, uint32_t *v, const char *what) { return take(c, v, 4, what); }
static int read_u64(cursor *c, uint64_t *v, const char *what) { return take(c, v, 8, what); }

/* A GGUF string: u64 length then bytes (not NUL-terminated). */
static int read_string(cursor *c, const char **s, uint64_t *len, const char *what) {
    if (read_u64(c, len, what)) return -1;
    if (*len > remaining(c)) {
        pl_set_error("%s: string length %llu runs past the end of the file", what,
                     (unsigned long long)*len);
        return -1;
    }
    *s = (const char *)c->p;
    c->p += *len;
    return 0;
}

/* Skip one value of a type; arrays may nest, but not without end. */
static int skip_value(cursor *c, uint32_t type, int depth, const char *key) {
    if (type >= GGUF_NTYPES) {
        pl_set_error("metadata key '%s': unknown value type %u", key, type);
        return -1;
    }
    if (type == GGUF_STRING) {
        const char *s;
        uint64_t len;
        return read_string(c, &s, &len, key);
    }
    if (type != GGUF_ARRAY) return take(c, NULL, SCALAR_SIZE[type], key);

    if (depth >= 4) {
        pl_set_error("metadata key '%s': arrays nested too deeply", key);
        return -1;
    }
    uint32_t et;
    uint64_t count;
    if (read_u32(c, &et, key) || read_u64(c, &count, key)) return -1;
    if (et >= GGUF_NTYPES) {
        pl_set_error("metadata key '%s': unknown array element type %u", key, et);
        return -1;
    }
    /* every element takes at least min_size bytes, so count is bounded by what is left */
    uint64_t min_size = et == GGUF_STRING ? 8 : et == GGUF_ARRAY ? 12 : (uint64_t)SCALAR_SIZE[et];
    if (count > remaining(c) / min_size) {
        pl_set_error("metadata key '%s': array of %llu elements runs past the end of the file", key,
                     (unsigned long long)count);
        return -1;
    }
    if (et != GGUF_STRING && et != GGUF_ARRAY) return take(c, NULL, count * min_size, key);
    for (uint64_t i = 0; i < count; i++)
        if (skip_value(c, et, depth + 1, key)) return -1;
    return 0;
}

static const kv_entry *find_kv(const metadata *md, const char *key) {
    size_t n = strlen(key);
    for (uint64_t i = 0; i < md->n_kv; i++)
        if (md->kv[i].key_len == n && !memcmp(md->kv[i].key, key, n)) return &md->kv[i];
    return NULL;
}

/* Integer metadata of any integer type, range-checked into [lo, hi]. 1 = found, 0 = absent, -1 = bad. */
static int get_int(const metadata *md, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    const kv_entry *e = find_kv(md, key);
    if (!e) return 0;
    const uint8_t *v = e->value;
    int64_t x;
    switch (e->type) {
    case GGUF_U8: x = *(const uint8_t *)v; break;
    case GGUF_I8: x = *(const int8_t *)v; break;
    case GGUF_U16: { uint16_t t; memcpy(&t, v, 2); x = t; break; }
    case GGUF_I16: { int16_t t; memcpy(&t, v, 2); x = t; break; }
    case GGUF_U32: { uint32_t t; memcpy(&t, v, 4); x = t; break; }
    case GGUF_I32: { int32_t t; memcpy(&t, v, 4); x = t; break; }
    case GGUF_U64: {
        uint64_t t;
        memcpy(&t, v, 8);
        x = t > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)t;
        break;
    }
    case GGUF_I64: memcpy(&x, v, 8); break;
    default:
        pl_set_error("metadata key '%s' should be an integer (found value type %u)", key, e->type);
        return -1;
    }
    if (x < lo || x > hi) {
        pl_set_error("metadata key '%s' = %lld is out of range [%lld, %lld]", key, (long long)x,
                     (long long)lo, (long long)hi);
        return -1;
    }
    *out = x;
    return 1;
}

static int get_float(const metadata *md, const char *key, float *out) {
    const kv_entry *e = find_kv(md, key);
    if (!e) return 0;
    if (e->type == GGUF_F32) {
        memcpy(out, e->value, 4);
    } else if (e->type == GGUF_F64) {
        double d;
        memcpy(&d, e->value, 8);
        *out = (float)d;
    } else {
        int64_t i;
        int r = get_int(md, key, -1000000000, 1000000000, &i);
        if (r <= 0) {
            if (r == 0 || e->type == GGUF_STRING) pl_set_error("metadata key '%s' should be a number", key);
            return -1;
        }
        *out = (float)i;
    }
    if (!(*out == *out)) {
        pl_set_error("metadata key '%s' is NaN", key);
        return -1;
    }
    return 1;
}

/* String metadata, copied into buf (truncated to fit). */
static int get_string(const metadata *md, const char *key, char *buf, size_t buflen) {
    const kv_entry *e = find_kv(md, key);
    if (!e) return 0;
    if (e->type != GGUF_STRING) {
        pl_set_error("metadata key '%s' should be a string", key);
        return -1;
    }
    uint64_t len;
    memcpy(&len, e->value, 8);
    size_t n = len < buflen - 1 ? (size_t)len : buflen - 1;
    memcpy(buf, e->value + 8, n);
    buf[n] = '\0';
    return 1;
}

static int parse_metadata(cursor *c, uint64_t n_kv, metadata *md) {
    if (n_kv > remaining(c) / 12) { /* key length + value type at the least */
        pl_set_error("header claims %llu metadata entries, more than the file can hold",
                     (unsigned long long)n_kv);
        return -1;
    }
    md->kv = calloc(n_kv ? n_kv : 1, sizeof(kv_entry));
    if (!md->kv) {
        pl_set_error("out of memory reading metadata");
        return -1;
    }
    md->n_kv = n_kv;
    for (uint64_t i = 0; i < n_kv; i++) {
        kv_entry *e = &md->kv[i];
        char what[64];
        snprintf(what, sizeof what, "metadata key %llu", (unsigned long long)i);
        if (read_string(c, &e->key, &e->key_len, what)) return -1;
        char key[96];
        size_t kl = e->key_len < sizeof key - 1 ? (size_t)e->key_len : sizeof key - 1;
        memcpy(key, e->key, kl);
        key[kl] = '\0';
        if (read_u32(c, &e->type, key)) return -1;
        e->value = c->p;
        if (e->type == GGUF_ARRAY && remaining(c) >= 12) {
            memcpy(&e->array_type, c->p, 4);
            memcpy(&e->array_count, c->p + 4, 8);
        }
        if (skip_value(c, e->type, 0, key)) return -1;
        e->value_size = (uint64_t)(c->p - e->value);
    }
    return 0;
}

/* The entries, kept for Python (pl_model_metadata): parsing the file once is enough. */
static int keep_metadata(pl_model *m, const metadata *md) {
    m->metadata = calloc(md->n_kv ? md->n_kv : 1, sizeof *m->metadata);
    if (!m->metadata) {
        pl_set_error("out of memory");
        return -1;
    }
    for (uint64_t i = 0; i < md->n_kv; i++) {
        const kv_entry *e = &md->kv[i];
        m->metadata[i] = (pl_metadata_entry){e->key, e->key_len, (int)e->type, e->value, e->value_size};
    }
    m->n_metadata = (int64_t)md->n_kv;
    return 0;
}

/* A tensor's bytes in the data section, for check_disjoint. */
typedef struct {
    uint64_t begin, end;
    const char *name;
} data_span;

static int by_begin(const void *a, const void *b) {
    const data_span *x = a, *y = b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

/* No two tensors may share bytes. Otherwise a small file could stand for any number of
 * layers of any width (every tensor at one offset), each converted or repacked at load
 * on its own: gigabytes and minutes from a few megabytes. (llama.cpp asks more: each
 * tensor must start where the one before it ends, aligned.) */
static int check_disjoint(const pl_model *m, const uint64_t *offsets) {
    data_span *s = malloc(((size_t)m->n_tensors + 1) * sizeof *s);
    if (!s) {
        pl_set_error("out of memory");
        return -1;
    }
    for (int i = 0; i < m->n_tensors; i++)
        s[i] = (data_span){offsets[i], offsets[i] + m->tensors[i].nbytes, m->tensors[i].name};
    qsort(s, (size_t)m->n_tensors, sizeof *s, by_begin);
    for (int i = 1; i < m->n_tensors; i++)
        if (s[i].begin < s[i - 1].end) {
            pl_set_error("tensors '%s' and '%s' share data (offsets %llu and %llu)", s[i - 1].name, s[i].name,
                         (unsigned long long)s[i - 1].begin, (unsigned long long)s[i].begin);
            free(s);
            return -1;
        }
    free(s);
    return 0;
}

/* GGML's name for a type id in a file: pyllama's own ids (the regrouped layouts) are, in GGML,
 * the interleaved Q4_0 types it dropped and TQ1_0. */
static const char *file_type_name(int type) {
    switch (type) {
    case PL_TYPE_Q4_0R: return "Q4_0_4_4 (GGML's dropped interleaved Q4_0)";
    case PL_TYPE_Q4_1R: return "Q4_0_4_8 (GGML's dropped interleaved Q4_0)";
    case PL_TYPE_Q4_KR: return "Q4_0_8_8 (GGML's dropped interleaved Q4_0)";
    case PL_TYPE_Q6_KR: return "TQ1_0";
    case PL_TYPE_Q4_0P: return "TQ2_0";
    case PL_TYPE_Q4_1P: return "IQ4_NL_4_4 (GGML's dropped interleaved IQ4_NL)";
    case PL_TYPE_Q8_0P: return "IQ4_NL_4_8 (GGML's dropped interleaved IQ4_NL)";
    default: return pl_type_name(type);
    }
}

static int parse_tensor_infos(cursor *c, uint64_t n_tensors, pl_model *m, uint64_t *offsets) {
    for (uint64_t i = 0; i < n_tensors; i++) {
        pl_tensor *t = &m->tensors[i];
        char what[64];
        snprintf(what, sizeof what, "tensor info %llu", (unsigned long long)i);
        const char *name;
        uint64_t name_len;
        if (read_string(c, &name, &name_len, what)) return -1;
        if (name_len == 0 || name_len > 256 || memchr(name, 0, name_len)) {
            pl_set_error("%s: bad tensor name (length %llu)", what, (unsigned long long)name_len);
            return -1;
        }
        t->name = malloc(name_len + 1);
        if (!t->name) {
            pl_set_error("out of memory");
            return -1;
        }
        memcpy(t->name, name, name_len);
        t->name[name_len] = '\0';
        m->n_tensors = (int)i + 1; /* so cleanup frees this name */

        uint32_t n_dims, type;
        if (read_u32(c, &n_dims, t->name)) return -1;
        if (n_dims < 1 || n_dims > 4) {
            pl_set_error("tensor '%s': %u dimensions (1 to 4 allowed)", t->name, n_dims);
            return -1;
        }
        t->n_dims = (int)n_dims;
        int64_t n_elems = 1;
        for (int d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < n_dims; d++) {
            uint64_t ne;
            if (read_u64(c, &ne, t->name)) return -1;
            if (ne == 0 || ne > (uint64_t)INT64_MAX || __builtin_mul_overflow(n_elems, (int64_t)ne, &n_elems)) {
                pl_set_error("tensor '%s': bad dimension %u = %llu", t->name, d, (unsigned long long)ne);
                return -1;
            }
            t->ne[d] = (int64_t)ne;
        }
        if (read_u32(c, &type, t->name) || read_u64(c, &offsets[i], t->name)) return -1;
        t->type = (int)type;
        if (!pl_type_supported(t->type) || pl_type_repacked(t->type)) { /* the repacked ids are pyllama's own */
            pl_set_error("tensor '%s' has type %s (%u), which pyllama does not support "
                         "(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, "
                         "Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS)",
                         t->name, file_type_name(t->type), type);
            return -1;
        }
        int64_t nbytes = pl_type_nbytes(t->type, n_elems);
        if (nbytes < 0 || t->ne[0] % pl_type_block_size(t->type)) {
            pl_set_error("tensor '%s': row length %lld is not a multiple of the %s block size (%d)", t->name,
                         (long long)t->ne[0], pl_type_name(t->type), pl_type_block_size(t->type));
            return -1;
        }
        t->nbytes = (uint64_t)nbytes;
    }
    return pl_index_tensors(m);
}

/*
 * What each supported architecture does differently from llama (the options of
 * forward.c, pyllama.h's pl_config). Mistral files say `llama`; phi3's fused
 * QKV and gate/up tensors are found by binding (model.c).
 */
static int set_family(const char *arch, pl_config *cfg) {
    static const char *const supported = "llama, qwen2, qwen3, gemma3, phi3";
    cfg->rope_type = PL_ROPE_NEOX;
    if (!strcmp(arch, "llama")) {
        cfg->rope_type = PL_ROPE_NORM;
    } else if (!strcmp(arch, "qwen2")) {
        cfg->has_qkv_bias = 1;
    } else if (!strcmp(arch, "qwen3")) {
        cfg->qk_norm = 1;
    } else if (!strcmp(arch, "gemma3")) {
        cfg->qk_norm = 1;
        cfg->post_norms = 1;
        cfg->activation = PL_ACT_GELU_TANH;
        cfg->scale_embeddings = 1;
        cfg->swa_period = 6;           /* five windowed layers, then a global one */
        cfg->rope_base_local = 10000.0f;
    } else if (!strcmp(arch, "phi3")) {
        cfg->fused_gate_up = 1;
    } else {
        pl_set_error("architecture '%s' is not supported (supported: %s)", arch, supported);
        return -1;
    }
    return 0;
}

/* Sliding-window attention: the window, which layers have it, their RoPE base. */
static int read_window(const metadata *md, const char *arch, pl_config *cfg) {
    char key[160];
    int64_t v;
    int r;
    snprintf(key, sizeof key, "%s.attention.sliding_window", arch);
    if ((r = get_int(md, key, 0, 1 << 24, &v)) < 0) return -1;
    cfg->sliding_window = r ? (int)v : 0;
    if (!strcmp(arch, "phi3")) cfg->sliding_window = 0; /* written by converters but unused, as in llama.cpp */
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", arch);
    if ((r = get_int(md, key, 0, 1 << 16, &v)) < 0) return -1;
    if (r) cfg->swa_period = (int)v;
    snprintf(key, sizeof key, "%s.rope.freq_base_swa", arch);
    if (get_float(md, key, &cfg->rope_base_local) < 0) return -1;
    if (cfg->rope_base_local != 0.0f && (!(cfg->rope_base_local > 1.0f) || !isfinite(cfg->rope_base_local))) {
        pl_set_error("bad sliding-window rope base (%g)", cfg->rope_base_local);
        return -1;
    }
    if (!cfg->sliding_window) cfg->rope_base_local = 0.0f;
    return 0;
}

/* 1 when set_family knows the architecture: the model catalog asks this before fetching a file. */
int pl_arch_supported(const char *arch) {
    pl_config scratch = {0};
    if (!arch || set_family(arch, &scratch)) {
        pl_clear_error();
        return 0;
    }
    return 1;
}

/* Fill cfg from the architecture's metadata keys. */
static int read_config(const metadata *md, pl_config *cfg) {
    char arch[64];
    int r = get_string(md, "general.architecture", arch, sizeof arch);
    if (r <= 0) {
        if (r == 0) pl_set_error("metadata key 'general.architecture' is missing");
        return -1;
    }
    if (set_family(arch, cfg)) return -1;

    struct { const char *suffix; int64_t lo, hi; int *dst; int required; } ints[] = {
        {"embedding_length", 1, 1 << 20, &cfg->dim, 1},
        {"feed_forward_length", 1, 1 << 22, &cfg->hidden_dim, 1},
        {"block_count", 1, 4096, &cfg->n_layers, 1},
        {"attention.head_count", 1, 4096, &cfg->n_heads, 1},
        {"context_length", 1, 1 << 24, &cfg->n_ctx_train, 1},
        {"attention.head_count_kv", 1, 4096, &cfg->n_kv_heads, 0},
        {"attention.key_length", 1, 1 << 16, &cfg->head_dim, 0},
        {"rope.scaling.original_context_length", 1, 1 << 24, &cfg->rope_orig_ctx, 0},
    };
    cfg->n_kv_heads = 0;
    cfg->head_dim = 0;
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        char key[160];
        snprintf(key, sizeof key, "%s.%s", arch, ints[i].suffix);
        int64_t v;
        int got = get_int(md, key, ints[i].lo, ints[i].hi, &v);
        if (got < 0) return -1;
        if (!got && ints[i].required) {
            pl_set_error("metadata key '%s' is missing", key);
            return -1;
        }
        if (got) *ints[i].dst = (int)v;
    }
    if (!cfg->n_kv_heads) cfg->n_kv_heads = cfg->n_heads;
    if (cfg->n_heads % cfg->n_kv_heads) {
        pl_set_error("%d attention heads cannot be shared by %d key/value heads", cfg->n_heads, cfg->n_kv_heads);
        return -1;
    }
    if (!cfg->head_dim) {
        if (cfg->dim % cfg->n_heads) {
            pl_set_error("embedding length %d is not divisible by %d heads", cfg->dim, cfg->n_heads);
            return -1;
        }
        cfg->head_dim = cfg->dim / cfg->n_heads;
    }
    char key[160];
    int64_t v;
    snprintf(key, sizeof key, "%s.attention.value_length", arch);
    if ((r = get_int(md, key, 1, 1 << 16, &v)) < 0) return -1;
    if (r && v != cfg->head_dim) {
        pl_set_error("'%s' = %lld differs from the key length %d (not supported)", key, (long long)v, cfg->head_dim);
        return -1;
    }
    snprintf(key, sizeof key, "%s.rope.dimension_count", arch);
    if ((r = get_int(md, key, 1, 1 << 16, &v)) < 0) return -1;
    if (r && v != cfg->head_dim) {
        pl_set_error("'%s' = %lld: partial rotary embeddings are not supported", key, (long long)v);
        return -1;
    }

    cfg->norm_eps = 1e-5f;
    cfg->rope_base = 10000.0f;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    if (get_float(md, key, &cfg->norm_eps) < 0) return -1;
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    if (get_float(md, key, &cfg->rope_base) < 0) return -1;
    if (!(cfg->norm_eps >= 0.0f && cfg->norm_eps < 1.0f) || !(cfg->rope_base > 1.0f) || !isfinite(cfg->rope_base)) {
        pl_set_error("bad rms epsilon (%g) or rope base (%g)", cfg->norm_eps, cfg->rope_base);
        return -1;
    }

    /* RoPE scaling: "linear" divides positions by the factor; "llama3" rescales low frequencies. */
    cfg->rope_scaling = PL_ROPE_SCALING_NONE;
    cfg->rope_scale_factor = 1.0f;
    char scaling[32] = "";
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    if (get_string(md, key, scaling, sizeof scaling) < 0) return -1;
    snprintf(key, sizeof key, "%s.rope.scaling.factor", arch);
    if (get_float(md, key, &cfg->rope_scale_factor) < 0) return -1;
    snprintf(key, sizeof key, "%s.rope.scale_linear", arch); /* older files */
    if (get_float(md, key, &cfg->rope_scale_factor) < 0) return -1;
    if (find_kv(md, key) && !scaling[0]) strcpy(scaling, "linear");
    if (!(cfg->rope_scale_factor > 0.0f) || !isfinite(cfg->rope_scale_factor)) {
        pl_set_error("rope scaling factor must be positive");
        return -1;
    }
    if (!strcmp(scaling, "linear")) {
        cfg->rope_scaling = PL_ROPE_SCALING_LINEAR;
    } else if (!strcmp(scaling, "llama3")) {
        cfg->rope_scaling = PL_ROPE_SCALING_LLAMA3;
        cfg->rope_low_freq_factor = 1.0f;
        cfg->rope_high_freq_factor = 4.0f;
        snprintf(key, sizeof key, "%s.rope.scaling.low_freq_factor", arch);
        if (get_float(md, key, &cfg->rope_low_freq_factor) < 0) return -1;
        snprintf(key, sizeof key, "%s.rope.scaling.high_freq_factor", arch);
        if (get_float(md, key, &cfg->rope_high_freq_factor) < 0) return -1;
        if (!cfg->rope_orig_ctx) cfg->rope_orig_ctx = 8192;
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor)) {
            pl_set_error("llama3 rope scaling needs high_freq_factor > low_freq_factor");
            return -1;
        }
    } else if (scaling[0] && strcmp(scaling, "none")) {
        pl_set_error("rope scaling type '%s' is not supported (supported: none, linear, llama3)", scaling);
        return -1;
    }
    if (cfg->rope_scaling == PL_ROPE_SCALING_NONE) cfg->rope_scale_factor = 1.0f;
    if (!cfg->rope_orig_ctx) cfg->rope_orig_ctx = cfg->n_ctx_train; /* as llama.cpp's n_ctx_orig_yarn */
    /* LongRoPE's magnitude correction: llama.cpp and transformers multiply cos and sin by it */
    cfg->rope_attn_factor = 1.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.attn_factor", arch);
    if (get_float(md, key, &cfg->rope_attn_factor) < 0) return -1;
    if (!(cfg->rope_attn_factor > 0.0f) || !isfinite(cfg->rope_attn_factor)) {
        pl_set_error("metadata key '%s' must be a positive number (got %g)", key, cfg->rope_attn_factor);
        return -1;
    }
    if (read_window(md, arch, cfg)) return -1;

    /* The vocabulary size is the token list's length; the embedding tensor is checked against it. */
    const kv_entry *tokens = find_kv(md, "tokenizer.ggml.tokens");
    if (tokens) {
        if (tokens->type != GGUF_ARRAY || tokens->array_count < 1 || tokens->array_count > (1u << 24)) {
            pl_set_error("metadata key 'tokenizer.ggml.tokens' is not a usable token list");
            return -1;
        }
        cfg->n_vocab = (int)tokens->array_count;
    }
    snprintf(key, sizeof key, "%s.vocab_size", arch);
    if ((r = get_int(md, key, 1, 1 << 24, &v)) < 0) return -1;
    if (r) cfg->n_vocab = (int)v;
    return 0;
}

pl_model *pl_load_gguf(const char *path, int flags) {
    pl_clear_error();
    pl_model *m = calloc(1, sizeof *m);
    metadata md = {0};
    uint64_t *offsets = NULL;
    if (!m) {
        pl_set_error("out of memory");
        return NULL;
    }
    if (pl_map_file(path, !(flags & PL_LOAD_NO_MMAP), &m->map)) goto fail;

    cursor c = {m->map.data, m->map.data + m->map.size, m->map.data};
    char magic[4];
    uint32_t version;
    uint64_t n_tensors, n_kv;
    if (take(&c, magic, 4, "magic")) goto fail;
    if (memcmp(magic, "GGUF", 4)) {
        pl_set_error("%s is not a GGUF file (bad magic)", path);
        goto fail;
    }
    if (read_u32(&c, &version, "version")) goto fail;
    if (version != 2 && version != 3) {
        pl_set_error("GGUF version %u is not supported (supported: 2, 3)", version);
        goto fail;
    }
    if (read_u64(&c, &n_tensors, "tensor count") || read_u64(&c, &n_kv, "metadata count")) goto fail;
    if (parse_metadata(&c, n_kv, &md)) goto fail;
    /* a tensor info takes at least 8 (name) + 1 + 4 + 8 + 4 + 8 bytes */
    if (n_tensors == 0 || n_tensors > remaining(&c) / 33 || n_tensors > 1000000) {
        pl_set_error("header claims %llu tensors, which the file cannot hold", (unsigned long long)n_tensors);
        goto fail;
    }
    m->tensors = calloc(n_tensors, sizeof(pl_tensor));
    offsets = calloc(n_tensors, sizeof(uint64_t));
    if (!m->tensors || !offsets) {
        pl_set_error("out of memory");
        goto fail;
    }
    if (parse_tensor_infos(&c, n_tensors, m, offsets)) goto fail;

    int64_t alignment = 32;
    if (get_int(&md, "general.alignment", 1, 1 << 20, &alignment) < 0) goto fail;
    if ((alignment & (alignment - 1)) || alignment % 8) {
        /* the spec asks for a multiple of 8; weights are read as floats straight from the file */
        pl_set_error("metadata key 'general.alignment' = %lld is not a power of two multiple of 8",
                     (long long)alignment);
        goto fail;
    }
    uint64_t data_start = (uint64_t)(c.p - c.start);
    data_start = (data_start + (uint64_t)alignment - 1) / (uint64_t)alignment * (uint64_t)alignment;
    if (data_start > m->map.size) {
        pl_set_error("file truncated before the tensor data");
        goto fail;
    }
    uint64_t data_size = m->map.size - data_start;
    for (int i = 0; i < m->n_tensors; i++) {
        pl_tensor *t = &m->tensors[i];
        if (offsets[i] % (uint64_t)alignment) {
            pl_set_error("tensor '%s': data offset %llu is not a multiple of the alignment %lld", t->name,
                         (unsigned long long)offsets[i], (long long)alignment);
            goto fail;
        }
        if (offsets[i] > data_size || t->nbytes > data_size - offsets[i]) {
            pl_set_error("tensor '%s': data (offset %llu, %llu bytes) runs past the end of the file "
                         "(truncated download?)",
                         t->name, (unsigned long long)offsets[i], (unsigned long long)t->nbytes);
            goto fail;
        }
        t->data = m->map.data + data_start + offsets[i];
    }
    if (check_disjoint(m, offsets)) goto fail;

    if (read_config(&md, &m->cfg)) goto fail;
    if (pl_model_bind(m)) goto fail;
    if (keep_metadata(m, &md)) goto fail;
    m->header_end = data_start; /* released by pl_model_drop_header, once Python has read the metadata */
    pl_map_seal(&m->map);
    free(md.kv);
    free(offsets);
    return m;

fail:
    free(md.kv);
    free(offsets);
    pl_model_release(m);
    free(m);
    return NULL;
}

int64_t pl_model_n_metadata(const pl_model *m) { return m->n_metadata; }

int pl_model_metadata(const pl_model *m, int64_t i, pl_metadata_entry *out) {
    if (i < 0 || i >= m->n_metadata) {
        pl_set_error("metadata index %lld out of range", (long long)i);
        return -1;
    }
    *out = m->metadata[i];
    return 0;
}

/* The header holds the vocabulary and merges, megabytes (1.6 MiB for the default model)
 * that the forward pass never reads again. */
void pl_model_drop_header(pl_model *m) {
    if (m->header_end) pl_release_pages(&m->map, 0, m->header_end);
    m->header_end = 0;
    free(m->metadata);
    m->metadata = NULL;
    m->n_metadata = 0;
}
