/*
 * fuzz_model.c - libFuzzer harness for the model loaders and the first forward passes: the
 * input is a whole model file (GGUF, or llama2.c with -DFUZZ_LLAMA2C), written to a memfd
 * and loaded through the public path API. A file the loader refuses must come with an
 * error message; one it accepts gets a context (n_ctx 8) and three evaluations (one token,
 * two more, a batch of 8 from position 0), none of which may fail. llama2.c inputs also go
 * through the converter's reader (pl_read_llama2c). Run by
 * tests/c/run_fuzz_model.sh under ASan and UBSan.
 *
 * util.c is compiled with -Dmmap=fuzz_mmap etc. (run_fuzz_model.sh), so the "mapping" is a
 * page-aligned heap copy of exactly the file's size: ASan then reports any read past the
 * file's end (a real mmap would silently read zeros up to the page end). Inputs whose size
 * has bit 2 set are loaded with PL_LOAD_NO_MMAP instead, into a region whose bytes past the
 * file are poisoned. Pages the loader releases (madvise MADV_DONTNEED) are poisoned too.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <sanitizer/asan_interface.h>

#include "pyllama.h"

/* ---- the mmap stand-ins used by util.c ---- */
static size_t file_size; /* the input being loaded */

void *fuzz_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    (void)addr; (void)prot;
    void *p = NULL;
    if (flags & MAP_ANONYMOUS) {
        /* the no-mmap load's region: aligned to 2 MB, so util.c reads the file into its start;
         * the slack after the file is poisoned, so reads past the file's end are caught here too */
        if (posix_memalign(&p, (size_t)2 << 20, len)) return MAP_FAILED;
        memset(p, 0, len);
        if (file_size < len) ASAN_POISON_MEMORY_REGION((char *)p + file_size, len - file_size);
        return p;
    }
    if (posix_memalign(&p, 4096, len ? len : 1)) return MAP_FAILED;
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, (char *)p + got, len - got, off + (off_t)got);
        if (r <= 0) { free(p); return MAP_FAILED; }
        got += (size_t)r;
    }
    return p;
}
int fuzz_munmap(void *addr, size_t len) {
    ASAN_UNPOISON_MEMORY_REGION(addr, len);
    free(addr);
    return 0;
}
int fuzz_mprotect(void *addr, size_t len, int prot) { (void)addr; (void)len; (void)prot; return 0; }
/* released pages (the GGUF header after parsing) must not be read again: poisoned */
int fuzz_madvise(void *addr, size_t len, int advice) {
    if (advice == MADV_DONTNEED) ASAN_POISON_MEMORY_REGION(addr, len);
    return 0;
}

static int memfd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    memfd = memfd_create("fuzz_model", 0);
    if (memfd < 0) { perror("memfd_create"); abort(); }
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
    return 0;
}

#ifdef FUZZ_LLAMA2C
/* The converter's reader (pl_read_llama2c): refused with a message, or every tensor it lists
 * is F32 and readable to its last byte. */
static void read_for_conversion(void) {
    pl_llama2c_format fmt;
    pl_model *r = pl_read_llama2c(path, &fmt);
    if (!r) {
        if (!pl_last_error()[0]) { fprintf(stderr, "read failed without a message\n"); abort(); }
        return;
    }
    volatile float sum = 0.0f;
    pl_tensor_info t;
    for (int i = 0; i < pl_model_n_tensors(r); i++) {
        if (pl_model_tensor(r, i, &t) || t.type != PL_TYPE_F32) { fprintf(stderr, "tensor %d not F32\n", i); abort(); }
        const float *d = t.data;
        for (uint64_t j = 0; j < t.nbytes / 4; j++) sum += d[j];
    }
    if (pl_context_new(r, 8, 1, PL_TYPE_F32, PL_TYPE_F32)) { fprintf(stderr, "context on a read-only model\n"); abort(); }
    pl_model_free(r);
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (ftruncate(memfd, 0) || (size && pwrite(memfd, data, size, 0) != (ssize_t)size)) abort();
    file_size = size;
    /* both load paths, chosen by the input's size: the file mapping and the no-mmap read
     * (whose region is 2 MB larger than the file, so ASan sees overreads only in the first) */
    const int load_flags = (size & 4) ? PL_LOAD_NO_MMAP : 0;
#ifdef FUZZ_LLAMA2C
    read_for_conversion();
    pl_model *m = pl_load_llama2c(path, 10000.0f, load_flags);
#else
    pl_model *m = pl_load_gguf(path, load_flags);
#endif
    if (!m) {
        if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "load error: %s\n", pl_last_error());
        if (!pl_last_error()[0]) { fprintf(stderr, "load failed without a message\n"); abort(); }
        return 0;
    }
    pl_config cfg;
    pl_model_config(m, &cfg);
    if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "loaded: vocab %d dim %d hidden %d layers %d heads %d/%d hd %d\n",
                                        cfg.n_vocab, cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    /* vary the cache types with the input so both paths are covered */
    const int kt = (size & 1) ? PL_TYPE_F32 : PL_TYPE_F16, vt = (size & 2) ? PL_TYPE_F32 : PL_TYPE_F16;
    static int threads = 0;
    if (!threads) threads = getenv("FUZZ_THREADS") ? atoi(getenv("FUZZ_THREADS")) : 1;
    pl_context *c = pl_context_new(m, 8, threads, kt, vt);
    if (c) {
        float *logits = malloc((size_t)cfg.n_vocab * 8 * sizeof(float));
        int32_t toks[3] = {0, cfg.n_vocab > 1 ? 1 : 0, cfg.n_vocab - 1};
        if (logits) {
            if (pl_eval(c, toks, 1, 0, logits, 0)) { fprintf(stderr, "eval: %s\n", pl_last_error()); abort(); }
            if (pl_eval(c, toks + 1, 2, 1, logits, 1)) { fprintf(stderr, "eval: %s\n", pl_last_error()); abort(); }
            /* a batch of 8 from position 0 (the tile kernels' widened path needs >= 8 tokens) */
            int32_t batch[8];
            for (int i = 0; i < 8; i++) batch[i] = (int32_t)((i * 7 + 3) % cfg.n_vocab);
            if (pl_eval(c, batch, 8, 0, logits, 1)) { fprintf(stderr, "eval8: %s\n", pl_last_error()); abort(); }
        }
        free(logits);
        pl_context_free(c);
    } else if (!pl_last_error()[0]) {
        fprintf(stderr, "context failed without a message\n");
        abort();
    }
    pl_model_free(m);
    return 0;
}
