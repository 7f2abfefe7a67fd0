/*
 * internal.h - structures shared by the C files of the core (never seen by Python).
 */
#ifndef PL_INTERNAL_H
#define PL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "pyllama.h"
#include "team.h"

/* ---- errors (util.c) ---- */
void pl_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void pl_clear_error(void);

/* ---- a whole file in memory (util.c): a private memory map of it, read-only but for the
 * ranges a loader makes writable to rewrite in place (pl_map_writable), or (use_mmap = 0)
 * a copy in anonymous memory on huge pages, read-only once sealed; the file never changes ---- */
typedef struct {
    const uint8_t *data;
    uint64_t size;
    void *base; /* the anonymous copy's region (data lies inside it); NULL for a file mapping */
    size_t base_size;
    int sealed; /* pl_map_seal has been called */
} pl_mapping;

int pl_map_file(const char *path, int use_mmap, pl_mapping *out);
/* The loader is done: an anonymous copy becomes read-only (a file mapping already is). */
void pl_map_seal(pl_mapping *m);
void pl_unmap_file(pl_mapping *m);
/* Drop the pages wholly inside [begin, end) from the resident set. A file mapping reads
 * them back from the page cache if touched again; an anonymous copy reads zeros there. */
void pl_release_pages(const pl_mapping *m, uint64_t begin, uint64_t end);
/* Make [p, p + n) of the mapping writable (writable != 0) or read-only again; 0 on success. The
 * pages written become this process's own copies (copy-on-write); the file is untouched. */
int pl_map_writable(const pl_mapping *m, const void *p, uint64_t n, int writable);

/* bytes needed for n elements of a type, or -1 when n is not a whole number of blocks */
int64_t pl_type_nbytes(int type, int64_t n);
const char *pl_type_name(int type);
int pl_type_supported(int type);

/* ---- the model ---- */
typedef struct {
    char *name;
    int type;
    int n_dims;
    int64_t ne[4];
    const void *data;
    uint64_t nbytes;
} pl_tensor;

typedef struct {
    const pl_tensor *attn_norm;
    const pl_tensor *wq, *wk, *wv, *wo;
    const pl_tensor *bq, *bk, *bv;   /* NULL unless the architecture has attention biases */
    const pl_tensor *ffn_norm;
    const pl_tensor *w_gate, *w_up, *w_down;
    const pl_tensor *q_norm, *k_norm;               /* [head_dim] when cfg.qk_norm */
    const pl_tensor *post_attn_norm, *post_ffn_norm; /* [dim] when cfg.post_norms */
    int window;     /* positions a query sees (itself included); 0: all before it */
    int local_rope; /* 1: RoPE at cfg.rope_base_local */
} pl_layer;

struct pl_model {
    pl_config cfg;
    pl_mapping map;
    pl_tensor *tensors;
    int n_tensors;
    void *heap;                 /* blocks from pl_model_alloc: converted weights (llama2.c Q8 groups, non-F32 norms) */
    const pl_tensor *tok_embd;
    const pl_tensor *output_norm;
    const pl_tensor *output;    /* == tok_embd when tied */
    const pl_tensor *rope_freqs;/* optional per-dimension frequency divisors (llama3) */
    const pl_tensor *rope_long, *rope_short; /* LongRoPE's divisors (Phi-3 128k): both or neither */
    pl_layer *layers;
    const pl_tensor **by_name;  /* the tensors sorted by name (pl_index_tensors) */
    pl_metadata_entry *metadata;/* GGUF metadata entries, pointing into the mapping (gguf.c) */
    int64_t n_metadata;
    uint64_t header_end;        /* bytes of header still resident (pl_model_drop_header) */
};

/* Sort the tensors by name for pl_find_tensor (n log n: a file may hold millions of tensor
 * infos, and binding looks a dozen names up per layer); fails on a name that appears twice. */
int pl_index_tensors(pl_model *m);
/* Look a tensor up by name; NULL when absent. */
const pl_tensor *pl_find_tensor(const pl_model *m, const char *name);

/* Memory freed with the model (for weights a loader had to convert). */
void *pl_model_alloc(pl_model *m, size_t bytes);

/* Bind and check every tensor the architecture needs (model.c). Returns 0 or sets the error. */
int pl_model_bind(pl_model *m);

/* loaders (gguf.c, llama2c.c) fill cfg, map, tensors; then call pl_model_bind */
void pl_model_release(pl_model *m);

/* ---- matrix products through the kernel table (dispatch.c) ----
 * Bytes of quantized activations for n_tok rows of cols values (0 for float weight types):
 * the scratch pl_matmul_parts needs. */
size_t pl_act_bytes(int type, int cols, int n_tok);

/* One weight matrix of a fused product: y[t * y_stride + r] = W[r, :] . X[t, :] for r < rows. */
typedef struct {
    int type;
    const void *w;
    int rows;
    float *y;
    size_t y_stride;
} pl_matmul_part;

/* Called by each thread on the rows [r0, r1) it just finished (same_rows mode). */
typedef void (*pl_epilogue_fn)(void *arg, int r0, int r1);

/*
 * Several matrices applied to the same input in one parallel region (Q, K and V;
 * gate and up): the input is quantized once and threads synchronise once.
 * same_rows = 0: the parts' rows are laid end to end and shared out evenly.
 * same_rows = 1: all parts have the same row count and each thread takes the
 * same rows of every part, then runs epilogue on them (e.g. SwiGLU).
 */
void pl_matmul_parts(const pl_matmul_part *parts, int n_parts, int cols, const float *x, int n_tok,
                     void *scratch, int same_rows, pl_epilogue_fn epilogue, void *arg);

/*
 * The same, for a caller already inside a parallel region (the forward pass
 * keeps one team for the whole batch): computes only this thread's share of
 * the rows and does not wait for the others. xq holds the input quantized by
 * pl_quantize_act when any part is of a quantized type (else NULL). With a team,
 * the rows are dealt out with pl_team_take (one such product between two of its
 * barriers); with NULL each thread takes its even share.
 */
void pl_matmul_share(const pl_matmul_part *parts, int n_parts, int cols, const float *x, const void *xq,
                     int n_tok, int same_rows, pl_epilogue_fn epilogue, void *arg, pl_team *team);
void pl_quantize_act(const float *x, int n_tok, int cols, void *xq);
int pl_parts_need_q8(const pl_matmul_part *parts, int n_parts);
/* First thing in every parallel region: workers stop taking the process's signals. */
void pl_team_enter(void);
/* The calling OpenMP thread's share [*r0, *r1) of n rows (how products split their rows). */
void pl_thread_share(int n, int *r0, int *r1);

#endif
