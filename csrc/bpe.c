/*
 * bpe.c - byte-level BPE: the vocabularies GGUF files call "gpt2" (SmolLM, Qwen, Llama 3).
 *
 * Python cuts text into pre-tokens with the model's split expressions; this file turns the
 * bytes of each pre-token into token ids. Every byte starts as the token of its character in
 * GPT-2's byte alphabet, then the adjacent pair with the lowest merge rank is merged, leftmost
 * first, until no adjacent pair has a merge. A byte whose character has no token splits the
 * pre-token there and is dropped (llama.cpp does the same).
 *
 * The tables are built straight from the GGUF string arrays, so a 49k-token vocabulary costs
 * a few hundred kilobytes here instead of ~100k Python strings and a second copy in a BPE
 * library (bench/RESULTS.md, "Memory").
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct {
    int32_t left, right; /* token ids; left == -1 marks an empty slot */
    int32_t rank, id;    /* position in the merge list; the merged token */
} pl_merge;

struct pl_bpe {
    int32_t n_tokens;
    int ignore_merges;        /* a run that is a token of its own is taken whole (llama3) */
    uint8_t *text;            /* token strings as the file has them, back to back */
    uint32_t *text_off;       /* n_tokens + 1 offsets into text */
    uint8_t *bytes;           /* the bytes each token stands for */
    uint32_t *bytes_off;      /* n_tokens + 1 offsets into bytes */
    int32_t *slots;           /* hash of token strings: token id or -1 */
    uint32_t slot_mask;
    pl_merge *merges;         /* hash of merge pairs */
    uint32_t merge_mask;
    int32_t byte_token[256];  /* token of each byte's alphabet character, or -1 */
    uint16_t byte_char[256];  /* each byte's alphabet character */
};

/* ---- GPT-2's byte alphabet ---- */

/* Printable Latin-1 bytes stand for themselves; the 68 others get U+0100.. in byte order. */
static int byte_is_printable(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; }

static void alphabet(uint16_t to_char[256], int16_t to_byte[0x144]) {
    int extra = 0;
    for (int c = 0; c < 0x144; c++) to_byte[c] = -1;
    for (int b = 0; b < 256; b++) {
        to_char[b] = (uint16_t)(byte_is_printable(b) ? b : 0x100 + extra++);
        to_byte[to_char[b]] = (int16_t)b;
    }
}

static int put_utf8(uint8_t *out, unsigned c) {
    if (c < 0x80) {
        out[0] = (uint8_t)c;
        return 1;
    }
    out[0] = (uint8_t)(0xC0 | (c >> 6));
    out[1] = (uint8_t)(0x80 | (c & 0x3F));
    return 2; /* the alphabet ends below U+0800 */
}

/* Length of the valid UTF-8 sequence at s[0..n) and its code point, or 0 when invalid
 * (overlong forms, surrogates and values past U+10FFFF are invalid, as in Python). */
static int get_utf8(const uint8_t *s, uint64_t n, unsigned *cp) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (len == 0 || c > 0xF4 || (uint64_t)len > n) return 0;
    c &= 0x3Fu >> (len - 1);
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3Fu);
    }
    static const unsigned least[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < least[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *cp = c;
    return len;
}

/* ---- hashing ---- */

static uint64_t hash_bytes(const uint8_t *s, uint64_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (uint64_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static uint64_t hash_pair(int32_t a, int32_t b) {
    uint64_t h = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 31);
}

static uint32_t table_mask(int64_t n) {
    uint32_t size = 16;
    while (size < 2 * (uint64_t)n) size <<= 1; /* at most half full */
    return size - 1;
}

static int32_t find_token(const pl_bpe *b, const uint8_t *s, uint64_t n) {
    for (uint64_t i = hash_bytes(s, n) & b->slot_mask;; i = (i + 1) & b->slot_mask) {
        int32_t id = b->slots[i];
        if (id < 0) return -1;
        uint32_t off = b->text_off[id];
        if (b->text_off[id + 1] - off == n && memcmp(b->text + off, s, n) == 0) return id;
    }
}

static const pl_merge *find_merge(const pl_bpe *b, int32_t left, int32_t right) {
    for (uint64_t i = hash_pair(left, right) & b->merge_mask;; i = (i + 1) & b->merge_mask) {
        const pl_merge *m = &b->merges[i];
        if (m->left < 0) return NULL;
        if (m->left == left && m->right == right) return m;
    }
}

/* ---- building ---- */

/* Walk a GGUF string array (n x (u64 length, bytes)) in data[0..size): offsets of each string's
 * bytes (n + 1 entries, the last one the end) relative to data, or -1 when it runs past size. */
static int string_offsets(const uint8_t *data, uint64_t size, int64_t n, uint64_t *starts, const char *what) {
    uint64_t pos = 0;
    for (int64_t i = 0; i < n; i++) {
        uint64_t len;
        if (size - pos < 8) {
            pl_set_error("%s[%lld]: the array ends inside a string length", what, (long long)i);
            return -1;
        }
        memcpy(&len, data + pos, 8); /* GGUF is little-endian, like every host we build for */
        pos += 8;
        if (len > size - pos) {
            pl_set_error("%s[%lld]: string length %llu runs past the array", what, (long long)i,
                         (unsigned long long)len);
            return -1;
        }
        starts[i] = pos;
        pos += len;
    }
    starts[n] = pos;
    return 0;
}

static uint64_t string_length(const uint64_t *starts, int64_t i, int64_t n) {
    return (i + 1 < n ? starts[i + 1] - 8 : starts[n]) - starts[i];
}

/* The token strings and what each stands for: alphabet characters back to their bytes, any
 * other character (or invalid UTF-8) kept as it is in the file. */
static int copy_tokens(pl_bpe *b, const uint8_t *data, const uint64_t *starts, int64_t n) {
    int16_t to_byte[0x144];
    alphabet(b->byte_char, to_byte);
    uint64_t total = 0;
    for (int64_t i = 0; i < n; i++) total += string_length(starts, i, n);
    if (total >= UINT32_MAX) {
        pl_set_error("tokenizer.ggml.tokens: %llu bytes of token strings is too many", (unsigned long long)total);
        return -1;
    }
    b->text = malloc(total + 1);
    b->bytes = malloc(total + 1);
    b->text_off = malloc((size_t)(n + 1) * sizeof(uint32_t));
    b->bytes_off = malloc((size_t)(n + 1) * sizeof(uint32_t));
    if (!b->text || !b->bytes || !b->text_off || !b->bytes_off) {
        pl_set_error("out of memory for a %lld-token vocabulary", (long long)n);
        return -1;
    }
    uint32_t t = 0, o = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *s = data + starts[i];
        uint64_t len = string_length(starts, i, n);
        b->text_off[i] = t;
        memcpy(b->text + t, s, len);
        t += (uint32_t)len;
        b->bytes_off[i] = o;
        for (uint64_t k = 0; k < len;) {
            unsigned cp;
            int step = get_utf8(s + k, len - k, &cp);
            if (step > 0 && cp < 0x144 && to_byte[cp] >= 0) {
                b->bytes[o++] = (uint8_t)to_byte[cp];
            } else {
                if (step == 0) step = 1;
                memcpy(b->bytes + o, s + k, (size_t)step);
                o += (uint32_t)step;
            }
            k += (uint64_t)step;
        }
    }
    b->text_off[n] = t;
    b->bytes_off[n] = o;
    return 0;
}

static int index_tokens(pl_bpe *b) {
    b->slot_mask = table_mask(b->n_tokens);
    b->slots = malloc(((size_t)b->slot_mask + 1) * sizeof(int32_t));
    if (!b->slots) {
        pl_set_error("out of memory for the token table");
        return -1;
    }
    memset(b->slots, 0xFF, ((size_t)b->slot_mask + 1) * sizeof(int32_t));
    for (int32_t id = 0; id < b->n_tokens; id++) {
        const uint8_t *s = b->text + b->text_off[id];
        uint32_t n = b->text_off[id + 1] - b->text_off[id];
        if (n == 0 || find_token(b, s, n) >= 0) continue; /* the first of equal strings wins */
        uint64_t i = hash_bytes(s, n) & b->slot_mask;
        while (b->slots[i] >= 0) i = (i + 1) & b->slot_mask;
        b->slots[i] = id;
    }
    for (int c = 0; c < 256; c++) {
        uint8_t u[2];
        b->byte_token[c] = find_token(b, u, (uint64_t)put_utf8(u, b->byte_char[c]));
    }
    return 0;
}

/* Merges are "left right": the split is at the first space after the first byte. */
static int index_merges(pl_bpe *b, const uint8_t *data, const uint64_t *starts, int64_t n) {
    b->merge_mask = table_mask(n);
    b->merges = malloc(((size_t)b->merge_mask + 1) * sizeof(pl_merge));
    uint8_t *joined = malloc(starts[n] + 1);
    if (!b->merges || !joined) {
        free(joined);
        pl_set_error("out of memory for the merge table");
        return -1;
    }
    for (uint64_t i = 0; i <= b->merge_mask; i++) b->merges[i].left = -1;
    int rc = 0;
    for (int64_t r = 0; r < n && rc == 0; r++) {
        const uint8_t *s = data + starts[r];
        uint64_t len = string_length(starts, r, n);
        const uint8_t *cut = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!cut) {
            pl_set_error("tokenizer.ggml.merges[%lld] = '%.*s' is not 'left right'", (long long)r,
                         (int)(len < 64 ? len : 64), (const char *)s);
            rc = -1;
            break;
        }
        uint64_t nl = (uint64_t)(cut - s), nr = len - nl - 1;
        int32_t left = find_token(b, s, nl), right = find_token(b, cut + 1, nr);
        memcpy(joined, s, nl);
        memcpy(joined + nl, cut + 1, nr);
        int32_t id = find_token(b, joined, nl + nr);
        if (left < 0 || right < 0 || id < 0) {
            pl_set_error("inconsistent BPE vocabulary/merges: merge %lld ('%.*s') names a token that is not in "
                         "the vocabulary", (long long)r, (int)(len < 64 ? len : 64), (const char *)s);
            rc = -1;
            break;
        }
        uint64_t i = hash_pair(left, right) & b->merge_mask;
        while (b->merges[i].left >= 0 && !(b->merges[i].left == left && b->merges[i].right == right))
            i = (i + 1) & b->merge_mask;
        /* a pair listed twice keeps its later rank, as the `tokenizers` library does */
        b->merges[i] = (pl_merge){left, right, (int32_t)r, id};
    }
    free(joined);
    return rc;
}

pl_bpe *pl_bpe_new(const uint8_t *tokens, uint64_t tokens_size, int64_t n_tokens, const uint8_t *merges,
                   uint64_t merges_size, int64_t n_merges, int ignore_merges) {
    pl_clear_error();
    if (n_tokens <= 0 || n_tokens > INT32_MAX / 2 || n_merges < 0 || n_merges > INT32_MAX / 2) {
        pl_set_error("a BPE vocabulary needs 1 to %d tokens and merges (got %lld, %lld)", INT32_MAX / 2,
                     (long long)n_tokens, (long long)n_merges);
        return NULL;
    }
    if ((uint64_t)n_tokens > tokens_size / 8 || (uint64_t)n_merges > merges_size / 8) {
        pl_set_error("the vocabulary arrays are shorter than their counts");
        return NULL;
    }
    pl_bpe *b = calloc(1, sizeof *b);
    uint64_t *starts = malloc((size_t)((n_tokens > n_merges ? n_tokens : n_merges) + 1) * sizeof(uint64_t));
    if (!b || !starts) {
        free(b);
        free(starts);
        pl_set_error("out of memory for a BPE vocabulary");
        return NULL;
    }
    b->n_tokens = (int32_t)n_tokens;
    b->ignore_merges = ignore_merges != 0;
    int rc = string_offsets(tokens, tokens_size, n_tokens, starts, "tokenizer.ggml.tokens");
    if (rc == 0) rc = copy_tokens(b, tokens, starts, n_tokens);
    if (rc == 0) rc = index_tokens(b);
    if (rc == 0) rc = string_offsets(merges, merges_size, n_merges, starts, "tokenizer.ggml.merges");
    if (rc == 0) rc = index_merges(b, merges, starts, n_merges);
    free(starts);
    if (rc != 0) {
        pl_bpe_free(b);
        return NULL;
    }
    return b;
}

void pl_bpe_free(pl_bpe *b) {
    if (!b) return;
    free(b->text);
    free(b->text_off);
    free(b->bytes);
    free(b->bytes_off);
    free(b->slots);
    free(b->merges);
    free(b);
}

int pl_bpe_n_tokens(const pl_bpe *b) { return b->n_tokens; }

const uint8_t *pl_bpe_token_text(const pl_bpe *b, int32_t id, int *len) {
    if (id < 0 || id >= b->n_tokens) return NULL;
    *len = (int)(b->text_off[id + 1] - b->text_off[id]);
    return b->text + b->text_off[id];
}

const uint8_t *pl_bpe_token_bytes(const pl_bpe *b, int32_t id, int *len) {
    if (id < 0 || id >= b->n_tokens) return NULL;
    *len = (int)(b->bytes_off[id + 1] - b->bytes_off[id]);
    return b->bytes + b->bytes_off[id];
}

/* The merges as (rank, left id, right id) triples into out (3 * cap ints), in table order; returns
 * how many there are (a pair listed twice counts once, with its later rank). */
int pl_bpe_merges(const pl_bpe *b, int32_t *out, int cap) {
    int k = 0;
    for (uint64_t i = 0; i <= b->merge_mask; i++) {
        const pl_merge *m = &b->merges[i];
        if (m->left < 0) continue;
        if (k < cap) {
            out[3 * k] = m->rank;
            out[3 * k + 1] = m->left;
            out[3 * k + 2] = m->right;
        }
        k++;
    }
    return k;
}

/* ---- encoding ---- */

typedef struct {
    int32_t rank, pos;   /* heap order: lowest rank, then leftmost */
    int32_t left, right; /* the pair as it was when pushed (stale entries are skipped) */
} pl_candidate;

static int before(const pl_candidate *a, const pl_candidate *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(pl_candidate *h, int *n, pl_candidate c) {
    int i = (*n)++;
    while (i > 0 && before(&c, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = c;
}

static pl_candidate heap_pop(pl_candidate *h, int *n) {
    pl_candidate top = h[0], last = h[--(*n)];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && before(&h[c + 1], &h[c])) c++;
        if (!before(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

typedef struct {
    int32_t *id, *prev, *next; /* symbols of the run as a linked list; id -1 once merged away */
    pl_candidate *heap;
} pl_scratch;

static void push_pair(const pl_bpe *b, pl_scratch *w, int *nh, int32_t pos) {
    if (pos < 0) return;
    int32_t nx = w->next[pos];
    if (nx < 0) return;
    const pl_merge *m = find_merge(b, w->id[pos], w->id[nx]);
    if (m) heap_push(w->heap, nh, (pl_candidate){m->rank, pos, w->id[pos], w->id[nx]});
}

/* Merge the bytes run[0..n) (each with a token) and append the ids to out. */
static int64_t merge_run(const pl_bpe *b, const uint8_t *run, int32_t n, pl_scratch *w, uint8_t *chars,
                         int32_t *out) {
    if (b->ignore_merges) {
        uint64_t k = 0;
        for (int32_t i = 0; i < n; i++) k += (uint64_t)put_utf8(chars + k, b->byte_char[run[i]]);
        int32_t whole = find_token(b, chars, k);
        if (whole >= 0) {
            out[0] = whole;
            return 1;
        }
    }
    for (int32_t i = 0; i < n; i++) {
        w->id[i] = b->byte_token[run[i]];
        w->prev[i] = i - 1;
        w->next[i] = i + 1 < n ? i + 1 : -1;
    }
    int nh = 0;
    for (int32_t i = 0; i + 1 < n; i++) push_pair(b, w, &nh, i);
    while (nh > 0) {
        pl_candidate c = heap_pop(w->heap, &nh);
        int32_t nx = w->next[c.pos];
        if (w->id[c.pos] != c.left || nx < 0 || w->id[nx] != c.right) continue; /* stale */
        w->id[c.pos] = find_merge(b, c.left, c.right)->id;
        w->id[nx] = -1;
        w->next[c.pos] = w->next[nx];
        if (w->next[nx] >= 0) w->prev[w->next[nx]] = c.pos;
        push_pair(b, w, &nh, w->prev[c.pos]);
        push_pair(b, w, &nh, c.pos);
    }
    int64_t k = 0;
    for (int32_t i = 0; i >= 0; i = w->next[i]) out[k++] = w->id[i];
    return k;
}

int64_t pl_bpe_encode(const pl_bpe *b, const uint8_t *text, int64_t size, const int64_t *ends, int64_t n_pieces,
                      int32_t *out, int64_t out_cap) {
    pl_clear_error();
    int64_t longest = 0, start = 0;
    if (size < 0 || n_pieces < 0 || (n_pieces > 0 ? ends[n_pieces - 1] : 0) != size) {
        pl_set_error("the last piece must end at the text's length (%lld bytes)", (long long)size);
        return -1;
    }
    for (int64_t p = 0; p < n_pieces; p++) {
        if (ends[p] < start || ends[p] > size) {
            pl_set_error("piece ends must rise from 0 to the text's length");
            return -1;
        }
        if (ends[p] - start > longest) longest = ends[p] - start;
        start = ends[p];
    }
    if (out_cap < size) { /* every byte gives at most one token */
        pl_set_error("the output holds %lld ids for %lld bytes", (long long)out_cap, (long long)size);
        return -1;
    }
    if (longest >= INT32_MAX / 4) {
        pl_set_error("a piece of %lld bytes is too long to encode", (long long)longest);
        return -1;
    }
    size_t m = (size_t)longest + 1;
    pl_scratch w = {malloc(m * sizeof(int32_t)), malloc(m * sizeof(int32_t)), malloc(m * sizeof(int32_t)),
                    malloc(3 * m * sizeof(pl_candidate))};
    uint8_t *chars = malloc(2 * m);
    int64_t k = 0;
    if (!w.id || !w.prev || !w.next || !w.heap || !chars) {
        pl_set_error("out of memory encoding a %lld-byte piece", (long long)longest);
        k = -1;
    }
    /* each piece is split where a byte has no token; those bytes are dropped */
    for (int64_t p = 0, s = 0; k >= 0 && p < n_pieces; s = ends[p++]) {
        for (int64_t i = s; i < ends[p];) {
            if (b->byte_token[text[i]] < 0) {
                i++;
                continue;
            }
            int64_t j = i;
            while (j < ends[p] && b->byte_token[text[j]] >= 0) j++;
            k += merge_run(b, text + i, (int32_t)(j - i), &w, chars, out + k);
            i = j;
        }
    }
    free(w.id);
    free(w.prev);
    free(w.next);
    free(w.heap);
    free(chars);
    return k;
}
