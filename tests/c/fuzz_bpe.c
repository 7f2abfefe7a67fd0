/*
 * fuzz_bpe.c - csrc/bpe.c under random vocabularies, random text and damaged arrays.
 *
 * Built with AddressSanitizer/UBSan by tests/c/run_bpe.sh. Checks what must hold whatever
 * the vocabulary: the ids of a text stand for exactly its bytes minus the bytes that have no
 * token; a damaged string array is refused with a message or, when it still parses, encodes
 * without touching memory it does not own. (Agreement with a reference BPE is checked in
 * tests/test_bpe.py against the `tokenizers` library.)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyllama.h"

static uint64_t state = 88172645463325252ull;
static uint32_t rnd(uint32_t n) { /* xorshift64 */
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (uint32_t)(state % n);
}

typedef struct {
    uint8_t *data;
    size_t size, cap;
    int64_t n;
} strings;

static void add(strings *s, const uint8_t *p, uint64_t len) {
    if (s->size + 8 + len > s->cap) {
        s->cap = 2 * (s->size + 8 + len);
        s->data = realloc(s->data, s->cap);
    }
    memcpy(s->data + s->size, &len, 8);
    memcpy(s->data + s->size + 8, p, len);
    s->size += 8 + len;
    s->n++;
}

/* GPT-2 alphabet character of byte b, as UTF-8 (mirrors pyllama._bpe._byte_alphabet) */
static int alpha(int b, uint8_t *out) {
    int extra = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) extra++;
    unsigned cp = ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) ? (unsigned)b : 0x100u + extra;
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    out[0] = (uint8_t)(0xC0 | (cp >> 6));
    out[1] = (uint8_t)(0x80 | (cp & 0x3F));
    return 2;
}

static int failures = 0;

static void check_roundtrip(pl_bpe *b, const uint8_t *text, int64_t n, const int *has_token) {
    int64_t ends[3] = {n / 3, 2 * n / 3, n};
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n + 1));
    int64_t k = pl_bpe_encode(b, text, n, ends, 3, ids, n);
    if (k < 0) {
        printf("encode failed: %s\n", pl_last_error());
        failures++;
        free(ids);
        return;
    }
    uint8_t *back = malloc((size_t)n + 1), *want = malloc((size_t)n + 1);
    int64_t nb = 0, nw = 0;
    for (int64_t i = 0; i < n; i++)
        if (has_token[text[i]]) want[nw++] = text[i];
    for (int64_t i = 0; i < k; i++) {
        int len;
        const uint8_t *p = pl_bpe_token_bytes(b, ids[i], &len);
        if (!p || nb + len > n) {
            nb = -1;
            break;
        }
        memcpy(back + nb, p, (size_t)len);
        nb += len;
    }
    if (nb != nw || memcmp(back, want, (size_t)nw) != 0) {
        printf("round trip failed: %lld bytes in, %lld back (%lld expected)\n", (long long)n, (long long)nb,
               (long long)nw);
        failures++;
    }
    free(ids);
    free(back);
    free(want);
}

int main(void) {
    for (int round = 0; round < 200; round++) {
        /* a vocabulary: the byte alphabet (some bytes left out), then merges of random pairs */
        strings tok = {0}, mer = {0};
        int has_token[256];
        int piece_len[4096];
        static uint8_t texts[4096][32]; /* each token's alphabet string */
        int n = 0;
        for (int c = 0; c < 256; c++) {
            has_token[c] = rnd(20) != 0;
            if (!has_token[c]) continue;
            piece_len[n] = alpha(c, texts[n]);
            add(&tok, texts[n], (uint64_t)piece_len[n]);
            n++;
        }
        int n_merges = (int)rnd(600);
        for (int m = 0; m < n_merges && n < 4096; m++) {
            int a = (int)rnd((uint32_t)n), c = (int)rnd((uint32_t)n);
            if (piece_len[a] + piece_len[c] > 30) continue;
            uint8_t line[64];
            memcpy(line, texts[a], (size_t)piece_len[a]);
            line[piece_len[a]] = ' ';
            memcpy(line + piece_len[a] + 1, texts[c], (size_t)piece_len[c]);
            add(&mer, line, (uint64_t)(piece_len[a] + 1 + piece_len[c]));
            memcpy(texts[n], texts[a], (size_t)piece_len[a]);
            memcpy(texts[n] + piece_len[a], texts[c], (size_t)piece_len[c]);
            piece_len[n] = piece_len[a] + piece_len[c];
            add(&tok, texts[n], (uint64_t)piece_len[n]); /* duplicates allowed: the first wins */
            n++;
        }
        pl_bpe *b = pl_bpe_new(tok.data, tok.size, tok.n, mer.data, mer.size, mer.n, (int)rnd(2));
        if (!b) {
            printf("round %d: a valid vocabulary was refused: %s\n", round, pl_last_error());
            return 1;
        }
        uint8_t text[3000];
        int64_t len = rnd(sizeof text);
        for (int64_t i = 0; i < len; i++) text[i] = rnd(4) ? (uint8_t)("ab c"[rnd(4)]) : (uint8_t)rnd(256);
        check_roundtrip(b, text, len, has_token);
        pl_bpe_free(b);

        /* the same arrays damaged: a byte changed, or cut short */
        for (int d = 0; d < 20; d++) {
            strings *s = rnd(2) ? &tok : &mer;
            size_t size = s->size;
            uint8_t saved = 0;
            size_t at = s->size ? rnd((uint32_t)s->size) : 0;
            if (rnd(2) && s->size) {
                saved = s->data[at];
                s->data[at] = (uint8_t)rnd(256);
            } else {
                s->size = at;
            }
            b = pl_bpe_new(tok.data, tok.size, tok.n, mer.data, mer.size, mer.n, (int)rnd(2));
            if (b) {
                int64_t ends[1] = {len};
                int32_t ids[3000];
                if (pl_bpe_encode(b, text, len, ends, 1, ids, len) < 0) failures++;
                pl_bpe_free(b);
            } else if (pl_last_error()[0] == '\0') {
                printf("refused without a message\n");
                failures++;
            }
            if (s->size != size) s->size = size;
            else s->data[at] = saved;
        }
        free(tok.data);
        free(mer.data);
    }
    /* bad arguments */
    if (pl_bpe_new((const uint8_t *)"", 0, 0, NULL, 0, 0, 0) != NULL) failures++;
    {
        strings tok = {0};
        uint8_t a = 'a';
        add(&tok, &a, 1);
        pl_bpe *b = pl_bpe_new(tok.data, tok.size, tok.n, NULL, 0, 0, 0);
        int64_t ends[2] = {1, 3};
        int32_t ids[4];
        if (!b || pl_bpe_encode(b, (const uint8_t *)"aaa", 2, ends, 2, ids, 4) != -1) failures++; /* ends past the text */
        if (!b || pl_bpe_encode(b, (const uint8_t *)"aaa", 3, ends, 2, ids, 2) != -1) failures++; /* output too small */
        if (!b || pl_bpe_encode(b, (const uint8_t *)"aaa", 3, ends, 2, ids, 4) != 3) failures++;
        pl_bpe_free(b);
        free(tok.data);
    }
    if (failures) {
        printf("FAILED: %d\n", failures);
        return 1;
    }
    printf("bpe fuzz: ok\n");
    return 0;
}
