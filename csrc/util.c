/*
 * util.c - error reporting, file mapping and the table of tensor types.
 */
#define _DEFAULT_SOURCE /* madvise, sysconf under -std=c11 (the C test harness) */
#include <errno.h>
#include <fcntl.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "quants.h"

/* One message per thread, so Python threads using separate models don't trample each other. */
static __thread char error_message[512];

const char *pl_last_error(void) { return error_message; }

void pl_clear_error(void) { error_message[0] = '\0'; }

void pl_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
}

/*
 * use_mmap = 0: the file read into anonymous memory, aligned to 2 MB and advised to
 * sit on transparent huge pages. Decode reads every weight once per token, and with
 * 4 KB pages that is a TLB miss every 4 KB; in a VM each miss is a two-level page
 * walk. On the project's Intel VM, in the minutes when that is slow, F16 decode runs
 * far faster so than from the file mapping or from anonymous 4 KB pages (in others all
 * three run alike; bench/RESULTS.md, "Mapped or read into memory"). A file mapping gets
 * the same when the page cache holds the file in 2 MB folios (pl_map_file below).
 * llama.cpp's no-mmap load gains less, its buffers being on 4 KB pages. The region
 * stays writable until pl_map_seal, so the loader's in-place rewrites (pl_map_writable)
 * need no mprotect, which would split the huge pages.
 */
#define HUGE_PAGE ((size_t)2 << 20)

/* the copy's bytes rounded up to whole huge pages: advised and protected as one, so that
 * the file's last partial 2 MB is a huge page too */
static size_t huge_span(size_t size) { return (size + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1); }

static int read_into_anon(int fd, size_t size, const char *path, pl_mapping *out) {
    const size_t span = huge_span(size), len = span + HUGE_PAGE; /* room to start on a boundary */
    char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        pl_set_error("cannot allocate %zu bytes to read %s into: %s", size, path, strerror(errno));
        return -1;
    }
    char *p = (char *)(((uintptr_t)base + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
#ifdef MADV_HUGEPAGE
    madvise(p, span, MADV_HUGEPAGE); /* a hint: without THP the pages are 4 KB, nothing else changes */
#endif
    for (size_t got = 0; got < size;) {
        const size_t want = size - got < ((size_t)1 << 30) ? size - got : (size_t)1 << 30;
        const ssize_t r = pread(fd, p + got, want, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            pl_set_error("cannot read %s: %s", path, r < 0 ? strerror(errno) : "the file shrank while being read");
            munmap(base, len);
            return -1;
        }
        got += (size_t)r;
    }
    out->data = (const uint8_t *)p;
    out->size = (uint64_t)size;
    out->base = base;
    out->base_size = len;
    return 0;
}

int pl_map_file(const char *path, int use_mmap, pl_mapping *out) {
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        pl_set_error("cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        pl_set_error("%s is not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_size == 0) {
        pl_set_error("%s is empty", path);
        close(fd);
        return -1;
    }
    if ((uint64_t)st.st_size > (uint64_t)(SIZE_MAX / 2)) { /* a 32-bit build: size_t cannot hold it */
        pl_set_error("%s is too large for this process's address space", path);
        close(fd);
        return -1;
    }
    if (!use_mmap) {
        const int r = read_into_anon(fd, (size_t)st.st_size, path, out);
        close(fd);
        return r;
    }
    /* private: a loader may rewrite weights in place (the repacked Q4 types), which copies only those pages */
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); /* the mapping keeps the file alive */
    if (p == MAP_FAILED) {
        pl_set_error("cannot map %s: %s", path, strerror(errno));
        return -1;
    }
#ifdef MADV_HUGEPAGE
    /* Pages this mapping reads into the page cache (a file not cached yet) then come in 2 MB
     * folios, which the kernel maps with 2 MB entries, in this and later processes: fewer
     * TLB misses for files that stream from DRAM, at a small cost to files that fit in the
     * L3 (bench/RESULTS.md, "Mapped or read into memory"). A file already cached in small
     * folios stays as it is; without THP this does nothing. */
    madvise(p, (size_t)st.st_size, MADV_HUGEPAGE);
#endif
    out->data = p;
    out->size = (uint64_t)st.st_size;
    return 0;
}

void pl_map_seal(pl_mapping *m) {
    if (m->base && !m->sealed) mprotect((void *)m->data, huge_span((size_t)m->size), PROT_READ);
    m->sealed = 1;
}

void pl_release_pages(const pl_mapping *m, uint64_t begin, uint64_t end) {
    const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    if (end > m->size) end = m->size;
    begin = (begin + page - 1) / page * page;
    end = end / page * page;
    if (end > begin) madvise((char *)m->data + begin, (size_t)(end - begin), MADV_DONTNEED);
}

int pl_map_writable(const pl_mapping *m, const void *p, uint64_t n, int writable) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t a = (uintptr_t)p / page * page, b = ((uintptr_t)p + n + page - 1) / page * page;
    const uintptr_t lo = (uintptr_t)m->data, hi = lo + m->size;
    if ((uintptr_t)p < lo || (uintptr_t)p + n > hi) return -1;
    if (m->base && !m->sealed) return 0; /* an unsealed anonymous copy is writable already */
    return mprotect((void *)a, b - a, writable ? PROT_READ | PROT_WRITE : PROT_READ);
}

void pl_unmap_file(pl_mapping *m) {
    if (m->base) munmap(m->base, m->base_size);
    else if (m->data) munmap((void *)m->data, m->size);
    memset(m, 0, sizeof *m);
}

/* ---- tensor types ---- */

typedef struct {
    int type;
    const char *name;
    int block_size;
    int block_bytes;
} type_traits;

static const type_traits TYPES[] = {
    {PL_TYPE_F32, "F32", 1, 4},
    {PL_TYPE_F16, "F16", 1, 2},
    {PL_TYPE_BF16, "BF16", 1, 2},
    {PL_TYPE_Q8_0, "Q8_0", QK, sizeof(block_q8_0)},
    {PL_TYPE_Q4_0, "Q4_0", QK, sizeof(block_q4_0)},
    {PL_TYPE_Q4_1, "Q4_1", QK, sizeof(block_q4_1)},
    {PL_TYPE_Q5_0, "Q5_0", QK, sizeof(block_q5_0)},
    {PL_TYPE_Q5_1, "Q5_1", QK, sizeof(block_q5_1)},
    {PL_TYPE_IQ4_NL, "IQ4_NL", QK, sizeof(block_iq4_nl)},
    {PL_TYPE_Q2_K, "Q2_K", QK_K, sizeof(block_q2_k)},
    {PL_TYPE_Q3_K, "Q3_K", QK_K, sizeof(block_q3_k)},
    {PL_TYPE_Q4_K, "Q4_K", QK_K, sizeof(block_q4_k)},
    {PL_TYPE_Q5_K, "Q5_K", QK_K, sizeof(block_q5_k)},
    {PL_TYPE_Q6_K, "Q6_K", QK_K, sizeof(block_q6_k)},
    {PL_TYPE_IQ4_XS, "IQ4_XS", QK_K, sizeof(block_iq4_xs)},
    {PL_TYPE_Q4_0R, "Q4_0R", QK, sizeof(block_q4_0)}, /* repacked at load, never in a file */
    {PL_TYPE_Q4_1R, "Q4_1R", QK, sizeof(block_q4_1)},
    {PL_TYPE_Q4_KR, "Q4_KR", QK_K, sizeof(block_q4_k)},
    {PL_TYPE_Q6_KR, "Q6_KR", QK_K, sizeof(block_q6_k)},
    {PL_TYPE_Q4_0P, "Q4_0P", QK, sizeof(block_q4_0)},
    {PL_TYPE_Q4_1P, "Q4_1P", QK, sizeof(block_q4_1)},
    {PL_TYPE_Q8_0P, "Q8_0P", QK, sizeof(block_q8_0)},
};
#define N_TYPES ((int)(sizeof TYPES / sizeof TYPES[0]))

/* GGML's names for types we read but cannot compute with, so errors can name them. */
static const char *other_type_name(int type) {
    switch (type) {
    case 9: return "Q8_1";
    case 15: return "Q8_K";
    case 16: return "IQ2_XXS";
    case 17: return "IQ2_XS";
    case 18: return "IQ3_XXS";
    case 19: return "IQ1_S";
    case 21: return "IQ3_S";
    case 22: return "IQ2_S";
    case 24: return "I8";
    case 25: return "I16";
    case 26: return "I32";
    case 27: return "I64";
    case 28: return "F64";
    case 29: return "IQ1_M";
    case 34: return "TQ1_0";
    case 35: return "TQ2_0";
    default: return NULL;
    }
}

static const type_traits *traits(int type) {
    for (int i = 0; i < N_TYPES; i++)
        if (TYPES[i].type == type) return &TYPES[i];
    return NULL;
}

int pl_type_supported(int type) { return traits(type) != NULL; }

const char *pl_type_name(int type) {
    const type_traits *t = traits(type);
    if (t) return t->name;
    const char *other = other_type_name(type);
    return other ? other : "unknown";
}

int pl_type_block_size(int type) {
    const type_traits *t = traits(type);
    return t ? t->block_size : -1;
}

int pl_type_block_bytes(int type) {
    const type_traits *t = traits(type);
    return t ? t->block_bytes : -1;
}

int64_t pl_type_nbytes(int type, int64_t n) {
    const type_traits *t = traits(type);
    if (!t || n < 0 || n % t->block_size) return -1;
    int64_t blocks = n / t->block_size;
    if (blocks > INT64_MAX / t->block_bytes) return -1;
    return blocks * t->block_bytes;
}

void pl_release_free_heap(void) {
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
}
