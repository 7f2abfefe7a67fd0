/*
 * pyllama.h - the whole boundary between the C core and Python.
 *
 * pyllama/_build.py derives cffi's cdef from the region between the CDEF markers below,
 * so every declaration Python can see is written exactly once, here.
 * Keep that region free of preprocessor lines other than plain integer #defines.
 *
 * Conventions: functions that can fail return 0 on success (or a pointer), and
 * a nonzero code (or NULL) on failure with a message in pl_last_error().
 */
#ifndef PYLLAMA_H
#define PYLLAMA_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */

/* Tensor types. The numbers are GGML's, so a GGUF type id maps directly. */
#define PL_TYPE_F32 0
#define PL_TYPE_F16 1
#define PL_TYPE_Q4_0 2
#define PL_TYPE_Q4_1 3
#define PL_TYPE_Q5_0 6
#define PL_TYPE_Q5_1 7
#define PL_TYPE_Q8_0 8
#define PL_TYPE_Q2_K 10
#define PL_TYPE_Q3_K 11
#define PL_TYPE_Q4_K 12
#define PL_TYPE_Q5_K 13
#define PL_TYPE_Q6_K 14
#define PL_TYPE_IQ4_NL 20
#define PL_TYPE_IQ4_XS 23
#define PL_TYPE_BF16 30
/* pyllama's own: Q4 weights repacked at load time (never in a file; see quants.h) */
#define PL_TYPE_Q4_0R 31
#define PL_TYPE_Q4_1R 32
#define PL_TYPE_Q4_KR 33 /* Q4_K, 8 rows interleaved (x86 with AVX-512 only) */
#define PL_TYPE_Q6_KR 34 /* Q6_K, the same */
#define PL_TYPE_Q4_0P 35 /* Q4_0, 16 rows interleaved (x86 with AVX-512 only) */
#define PL_TYPE_Q4_1P 36 /* Q4_1, the same */
#define PL_TYPE_Q8_0P 37 /* Q8_0, the same */

/* Instruction-set paths for the kernels; PL_ISA_AUTO picks the best one the CPU has. */
#define PL_ISA_AUTO -1
#define PL_ISA_SCALAR 0
#define PL_ISA_AVX2 1
#define PL_ISA_NEON 2
#define PL_ISA_AVX512 3 /* AVX2 kernels plus AVX-512 VNNI tiles, attention and Q4 rows */

/* Rotary layouts: which elements of a head are rotated together. */
#define PL_ROPE_NORM 0 /* adjacent pairs (x[2i], x[2i+1]): llama2.c's run.c, llama.cpp for `llama` */
#define PL_ROPE_NEOX 1 /* half split (x[i], x[i+d/2]): llama.cpp for qwen2, gemma3 */

/* RoPE frequency scaling */
#define PL_ROPE_SCALING_NONE 0
#define PL_ROPE_SCALING_LINEAR 1
#define PL_ROPE_SCALING_LLAMA3 2

/* The gated feed-forward's activation: h = act(W_gate x) * (W_up x) */
#define PL_ACT_SILU 0      /* SwiGLU: llama, qwen, mistral, phi3 */
#define PL_ACT_GELU_TANH 1 /* GeGLU with tanh-approximated GELU: gemma */

typedef struct pl_model pl_model;
typedef struct pl_context pl_context;

typedef struct {
    int n_vocab;
    int dim;          /* embedding width */
    int hidden_dim;   /* feed-forward width */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int n_ctx_train;  /* context length the model was trained with */
    float norm_eps;
    float rope_base;
    int rope_type;    /* PL_ROPE_NORM or PL_ROPE_NEOX */
    int rope_scaling; /* PL_ROPE_SCALING_* */
    float rope_scale_factor;        /* linear / llama3 factor */
    float rope_low_freq_factor;     /* llama3 */
    float rope_high_freq_factor;    /* llama3 */
    int rope_orig_ctx;              /* original training context: llama3's rule; LongRoPE's switch */
    float rope_attn_factor;         /* rope.scaling.attn_factor (LongRoPE): q and k times it; 0 or 1: none */
    int tied_output;  /* 1 when the output layer reuses token_embd */
    int has_qkv_bias; /* 1 for qwen2-style attention biases */
    /* a family's differences from llama (forward.c); zero everywhere is llama */
    int qk_norm;          /* 1: each query and key head RMS-normalized (attn_q_norm, attn_k_norm) before RoPE */
    int post_norms;       /* 1: attention and FFN outputs RMS-normalized before their residual add (gemma) */
    int activation;       /* PL_ACT_* */
    int scale_embeddings; /* 1: embeddings multiplied by sqrt(dim) (gemma) */
    float attn_scale;     /* scores = q.k * attn_scale; 0 means 1/sqrt(head_dim); loading folds in rope_attn_factor^2 */
    int sliding_window;   /* 0: none; else how many positions a windowed layer's query sees, itself included */
    int swa_period;       /* with a window: 0 windows every layer; n windows all but layers n-1, 2n-1, ... */
    float rope_base_local;/* nonzero: windowed layers' RoPE base, unscaled (gemma3); 0: they use the global RoPE */
    int fused_gate_up;    /* 1: ffn_up holds the gate's rows, then the up rows (phi3) */
} pl_config;

typedef struct {
    const char *name;
    int type;          /* PL_TYPE_* */
    int n_dims;
    int64_t ne[4];     /* GGML order: ne[0] is the contiguous (row) length */
    const void *data;  /* points into the mapped file (or the heap for llama2.c conversions) */
    uint64_t nbytes;
} pl_tensor_info;

/* Error message of the last failed call on this thread ("" when none). */
const char *pl_last_error(void);

/* Loading. flags 0: the weights stay in the file, mapped with mmap; nothing is copied
 * except where a format needs conversion (and the Q4 matrices regrouped at load, in the
 * mapping's private pages). PL_LOAD_NO_MMAP: the file is read into anonymous memory on
 * 2 MB pages where the kernel has transparent huge pages (llama.cpp's --no-mmap): a
 * load that reads the whole file and memory the page cache cannot share, for fewer TLB
 * misses in decode (bench/RESULTS.md, "Mapped or read into memory"). */
#define PL_LOAD_NO_MMAP 1
pl_model *pl_load_gguf(const char *path, int flags);
/* llama2.c checkpoints carry no rope base and no BOS/EOS ids: pass them (run.c: 10000, 1, 2). */
pl_model *pl_load_llama2c(const char *path, float rope_base, int flags);
/* A llama2.c checkpoint read for its tensors (pyllama/convert.py), checked as pl_load_llama2c
 * checks it but not bound for evaluation (pl_context_new refuses it): every tensor is F32,
 * v2's int8 groups as q * the file's fp32 scale. format, when not NULL, receives the layout. */
typedef struct {
    int version;           /* 0 (legacy), 1 or 2 */
    int group_size;        /* v2: values per fp32 scale; else 0 */
    int shared_classifier; /* 1: the output layer is the token embedding */
} pl_llama2c_format;
pl_model *pl_read_llama2c(const char *path, pl_llama2c_format *format);
void pl_model_free(pl_model *m);
void pl_model_config(const pl_model *m, pl_config *out);
/* llama.cpp's --rope-freq-base: replaces the file's; applies to contexts made afterwards. */
int pl_model_set_rope_base(pl_model *m, float rope_base);
int pl_model_n_tensors(const pl_model *m);
int pl_model_tensor(const pl_model *m, int i, pl_tensor_info *out);
uint64_t pl_model_file_size(const pl_model *m);
const void *pl_model_file_data(const pl_model *m); /* start of the mapped file */

/* A GGUF file's metadata as the loader read and checked it (each file is parsed once):
 * entry i's key (key_len bytes, not NUL-terminated), its GGUF value type (as the file
 * stores it: 0-12) and the value's bytes in the file. Valid until pl_model_drop_header. */
typedef struct {
    const char *key;
    uint64_t key_len;
    int type;
    const void *value;
    uint64_t value_bytes;
} pl_metadata_entry;
int64_t pl_model_n_metadata(const pl_model *m);
int pl_model_metadata(const pl_model *m, int64_t i, pl_metadata_entry *out);
/* Done with the metadata: the header's pages leave the resident set (the vocabulary and
 * merges are megabytes the forward pass never reads) and the entries are gone. */
void pl_model_drop_header(pl_model *m);

/* A context owns the KV cache and scratch buffers for one sequence. type_k and
 * type_v are the cache's element types: PL_TYPE_F16 (half the memory and reads;
 * llama.cpp's default) or PL_TYPE_F32 (keys and values exactly as computed). */
pl_context *pl_context_new(pl_model *m, int n_ctx, int n_threads, int type_k, int type_v);
void pl_context_free(pl_context *c);
int pl_context_n_ctx(const pl_context *c);
int pl_set_threads(pl_context *c, int n_threads);

/*
 * Run the transformer over tokens[0..n_tokens) at positions n_past.. and write
 * logits: for the last token only (n_vocab floats) or, when logits_all is
 * nonzero, for every token (n_tokens * n_vocab floats). One call per batch:
 * this is the hot path.
 */
int pl_eval(pl_context *c, const int32_t *tokens, int n_tokens, int n_past,
            float *logits, int logits_all);

/*
 * Advance several sequences in one forward pass (continuous batching): token i goes into
 * ctxs[i]'s cache at position pos[i]. A context may appear several times (a prompt chunk
 * riding with other sequences' decode tokens): its tokens must then have consecutive
 * positions in the order they appear, each seeing the ones before it. Every context must
 * belong to the same model; ctxs[0] lends the batch its scratch buffers and thread team
 * (its n_threads), so no context may have a larger n_ctx than ctxs[0], and none of them may
 * be in use by another call meanwhile. Logits (n_vocab floats each) go to `logits` for the
 * tokens whose want_logits[i] is nonzero (every token when want_logits is NULL), in batch
 * order; logits NULL only fills the caches. Batches past PL_MAX_UBATCH tokens run in slices.
 * 0, or -1 with the error set (nothing evaluated) for a bad index, token or position.
 */
int pl_eval_batch(pl_context *const *ctxs, const int32_t *tokens, const int32_t *pos, int n,
                  const int8_t *want_logits, float *logits);

/* Like pl_eval, but instead of logits writes each token's final hidden state (after
 * the output norm, the vector the output layer multiplies): n_tokens * dim floats.
 * Embeddings pool these. */
int pl_eval_hidden(pl_context *c, const int32_t *tokens, int n_tokens, int n_past, float *hidden);

/* Drop cached positions from n_keep+n_discard onward by sliding them down by n_discard
 * (context shift): keys are re-rotated to their new positions. Returns the new length. */
int pl_kv_shift(pl_context *c, int n_past, int n_keep, int n_discard);

/* The first n_tokens cached positions as bytes (state.c), to restore into a context of
 * the same model and cache types (Llama.save_state / load_state). pl_state_size: the
 * bytes pl_state_save writes (0 for a bad n_tokens); pl_state_save: 0, or -1 when size is
 * too small; pl_state_load: 0, or -1 when the bytes are not a state of this context's
 * shape (header checked, sizes exact). */
uint64_t pl_state_size(const pl_context *c, int n_tokens);
int pl_state_save(const pl_context *c, int n_tokens, uint8_t *buf, uint64_t size);
int pl_state_load(pl_context *c, int n_tokens, const uint8_t *buf, uint64_t size);

/* Sampling parameters (llama.cpp's order: bias, penalties, top-k, typical, top-p, min-p, temperature). */
typedef struct {
    float temperature;       /* <= 0: greedy */
    int top_k;               /* <= 0: off */
    float typical_p;         /* >= 1: off; locally typical sampling */
    float top_p;             /* >= 1: off */
    float min_p;             /* <= 0: off */
    float repeat_penalty;    /* 1: off; positive logits divided, negative multiplied */
    float frequency_penalty; /* minus count * this */
    float presence_penalty;  /* minus this once per distinct token */
} pl_sampler;

/*
 * Choose the next token. recent[0..n_recent) is the penalty window; bias_ids/vals
 * a logit bias. allowed, when not NULL, is a token bitmask of (n_vocab + 31) / 32
 * words (bit i % 32 of word i / 32 set: token i may be drawn; llguidance's layout):
 * the other tokens are never drawn. work holds n_vocab floats, cand n_vocab ids,
 * probs n_vocab doubles; on return cand[0..*n_cand) and probs[...] are the
 * distribution the draw used (highest first after a top-k, typical or top-p cut).
 * rng (splitmix64 state) is advanced; NULL = no draw. Returns the token id, or -1 (NaN logits, no token allowed).
 */
int pl_sample(const float *logits, int n_vocab, const pl_sampler *s, const int32_t *recent, int n_recent,
              const int32_t *bias_ids, const float *bias_vals, int n_bias, const uint32_t *allowed,
              uint64_t *rng, float *work, int32_t *cand, double *probs, int *n_cand);

/* Byte-level BPE (GGUF "gpt2" vocabularies; bpe.c). tokens and merges are GGUF string arrays
 * as the file stores them (per string a u64 length, then its bytes), read during the call only.
 * ignore_merges: a piece that is a token of its own is taken whole (llama3's pre-tokenizer). */
typedef struct pl_bpe pl_bpe;
pl_bpe *pl_bpe_new(const uint8_t *tokens, uint64_t tokens_size, int64_t n_tokens,
                   const uint8_t *merges, uint64_t merges_size, int64_t n_merges, int ignore_merges);
void pl_bpe_free(pl_bpe *b);
int pl_bpe_n_tokens(const pl_bpe *b);
/* A token's string in the file, and the bytes it stands for (NULL for an id out of range). */
const uint8_t *pl_bpe_token_text(const pl_bpe *b, int32_t id, int *len);
const uint8_t *pl_bpe_token_bytes(const pl_bpe *b, int32_t id, int *len);
/* The merge table as (rank, left, right) id triples, 3 * cap ints; returns the count (for pickling). */
int pl_bpe_merges(const pl_bpe *b, int32_t *out, int cap);
/* Token ids of the pre-tokens text[0..ends[0]), text[ends[0]..ends[1]), ... (the last end is
 * text_len) into out (out_cap >= text_len: at most one id per byte). Returns how many, or -1. */
int64_t pl_bpe_encode(const pl_bpe *b, const uint8_t *text, int64_t text_len, const int64_t *ends,
                      int64_t n_pieces, int32_t *out, int64_t out_cap);

/* Hand the C heap's free pages back to the system (glibc's malloc_trim; a no-op
 * elsewhere). Llama() calls it once loading is done: building a tokenizer frees
 * megabytes of temporaries that would otherwise stay resident. */
void pl_release_free_heap(void);

/* How many OpenMP threads pl_sample splits its passes over the vocabulary across
 * (pl_eval sets it to its context's count, matching how the output layer split the
 * logits). Exposed for tests. */
void pl_set_sample_threads(int n_threads);

/* Batch invariance: when on, every token of every batch is multiplied by the one-token
 * kernels, so a sequence's logits are bitwise the same whether it is evaluated alone, in a
 * prompt batch or in a batch with other sequences (the server turns it on); prompts are
 * then slower than with the batched kernels. Process-wide; returns the previous setting. */
int pl_set_batch_invariant(int on);

/* Decode (AVX-512) reads the weights in the order measured fastest from DRAM on AMD CPUs (1:
 * Q4_KR / Q6_KR one group of 8 rows per step; Q5_0 / Q5_1 / IQ4_NL rows of up to 2048 values one
 * after another, longer ones 16 side by side with the next 16 prefetched into L2) or on Intel's
 * (0: two groups per step; 16 rows side by side, the next 16 prefetched into L1); any other
 * value: by this CPU's vendor, the default. Every row gets the same bits
 * either way (csrc/kquants_repack.c, csrc/kquants_avx512.c). Process-wide; returns the previous
 * setting. For tests and benchmarks. */
int pl_set_amd_reads(int on);

/* Kernels, exposed for tests and benchmarks. */
int pl_cpu_isa(void);                 /* best path this CPU supports */
int pl_set_isa(int isa);              /* force a path (PL_ISA_AUTO to reset); returns the one in use */
int pl_current_isa(void);             /* the path in use */
int pl_type_block_size(int type);     /* elements per block; -1 for a type this build cannot use */
int pl_arch_supported(const char *arch); /* 1 when this build runs general.architecture = arch */
int pl_type_block_bytes(int type);    /* bytes per block */
int pl_dequantize(int type, const void *src, float *dst, int64_t n);
/* y[r] = W[r,:] . x for r < rows, W stored row-major with `cols` elements per row. */
int pl_matvec(int type, const void *w, const float *x, float *y, int rows, int cols, int n_threads);
/* Y[t,r] = W[r,:] . X[t,:] for t < n_tokens (prefill). */
int pl_matmul(int type, const void *w, const float *x, float *y, int rows, int cols, int n_tokens, int n_threads);

/* Quantization (quantize.c; python -m pyllama.quantize). Target types: Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. pl_quantize_row_bytes: bytes of one row of
 * n_per_row values in that type, or -1 (not a target type, or not a whole number of blocks).
 * pl_quantize_rows: n_rows rows of src_type (F32, F16, BF16 or a type the core dequantizes)
 * into dst (n_rows * pl_quantize_row_bytes bytes), rows spread over n_threads threads. */
int64_t pl_quantize_row_bytes(int type, int64_t n_per_row);
int pl_quantize_rows(int src_type, const void *src, int dst_type, void *dst, int64_t n_rows, int64_t n_per_row,
                     int n_threads);

/* CDEF-END */

#endif
