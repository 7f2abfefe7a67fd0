/*
 * forward_isa.c - the whole forward pass on one kernel set against the scalar set.
 *
 *   forward_isa MODEL.gguf
 *
 * Loads a GGUF model with float weights, evaluates 13 tokens in one batch
 * (prefill kernels), then again one token at a time (decode kernels), each time
 * with the best kernel set of this CPU and with the scalar reference, for both
 * KV cache types, and compares every logit (float weights: the sets differ only
 * in the order of float sums). Built for AArch64
 * by tests/c/run_neon.sh and run under qemu, so the NEON forward pass (transposed
 * key blocks, F16 cache, batched tiles) is checked end to end, not only kernel by
 * kernel. Exit status 0 when every comparison is within tolerance.
 *
 * Quantized weights are refused (exit 77): their matrix products first round the
 * activations to 8 bits, so a last-bit difference before a rounding flips a step and
 * thirty layers amplify it. On SmolLM2-135M Q8_0 every kernel set, the scalar one
 * included, lands 3-4% (max |diff| / max |logit|) from a float64 numpy forward pass
 * with the same activation rounding, and as far from each other; the quantized kernels
 * are checked kernel by kernel (test_kernels.c) and against other engines instead.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyllama.h"

#define N_TOK 13

/* all logits of N_TOK tokens: one batch (batch=1) or one token at a time */
static int run(pl_model *m, int isa, int kv, int batch, int n_vocab, float *out) {
    if (pl_set_isa(isa) < 0) return -1;
    pl_context *c = pl_context_new(m, 32, 2, kv, kv);
    if (!c) return -1;
    int32_t toks[N_TOK];
    for (int i = 0; i < N_TOK; i++) toks[i] = (int32_t)((i * 7 + 3) % n_vocab);
    int rc = 0;
    if (batch) {
        rc = pl_eval(c, toks, N_TOK, 0, out, 1);
    } else {
        for (int i = 0; i < N_TOK && !rc; i++) rc = pl_eval(c, toks + i, 1, i, out + (size_t)i * n_vocab, 0);
    }
    pl_context_free(c);
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: forward_isa MODEL.gguf\n");
        return 2;
    }
    pl_model *m = pl_load_gguf(argv[1], 0);
    if (!m) {
        fprintf(stderr, "load: %s\n", pl_last_error());
        return 2;
    }
    for (int i = 0; i < pl_model_n_tensors(m); i++) {
        pl_tensor_info t;
        if (pl_model_tensor(m, i, &t) == 0 && t.n_dims == 2 && t.type != PL_TYPE_F32 &&
            t.type != PL_TYPE_F16 && t.type != PL_TYPE_BF16) {
            printf("skip: %s has quantized weights (%s); this check needs float weights\n", argv[1], t.name);
            pl_model_free(m);
            return 77;
        }
    }
    pl_config cfg;
    pl_model_config(m, &cfg);
    const int isa = pl_cpu_isa(), n_vocab = cfg.n_vocab;
    const size_t n = (size_t)N_TOK * n_vocab;
    float *ref = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    int failures = 0;
    for (int kv = 0; kv < 2; kv++) {
        const int type = kv ? PL_TYPE_F16 : PL_TYPE_F32;
        for (int batch = 0; batch < 2; batch++) {
            if (run(m, PL_ISA_SCALAR, type, batch, n_vocab, ref) || run(m, isa, type, batch, n_vocab, got)) {
                fprintf(stderr, "eval: %s\n", pl_last_error());
                return 2;
            }
            double maxabs = 0, maxdiff = 0;
            size_t nans = 0;
            for (size_t i = 0; i < n; i++) {
                maxabs = fmax(maxabs, fabs(ref[i]));
                const double d = fabs((double)got[i] - ref[i]);
                if (isnan(d)) nans++; /* a NaN on either side (fmax would drop it) */
                else maxdiff = fmax(maxdiff, d);
            }
            const double rel = maxdiff / maxabs;
            /* float weights: the kernels differ only in summation order. An F16 cache rounds
             * every key and value to 11 bits, so a last-bit difference can move a stored value by
             * 2^-11 of itself: SmolLM2-135M F16 (30 layers) reaches 1.5e-4 there, 1.5e-5 with an
             * F32 cache. */
            const int ok = nans == 0 && rel < (kv ? 5e-4 : 1e-4);
            printf("isa %d vs scalar, %s cache, %s: max |diff| / max |logit| = %.2g%s %s\n", isa,
                   kv ? "F16" : "F32", batch ? "one batch" : "token by token", rel, nans ? ", NaN logits" : "",
                   ok ? "ok" : "FAIL");
            failures += !ok;
        }
    }
    pl_model_free(m);
    free(ref);
    free(got);
    return failures ? 1 : 0;
}
