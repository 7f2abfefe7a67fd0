/*
 * sampling.c - choosing the next token from the logits, in llama.cpp's order:
 * logit bias -> repetition penalties -> top-k -> typical -> top-p -> min-p -> temperature -> draw.
 *
 * It runs once per generated token over the whole vocabulary, so it must cost
 * little next to a forward pass: no full sort of the vocabulary. The k-th
 * largest logit (top-k) and the top-p boundary are found by bucketing the
 * logits below the maximum in one pass and sorting only the boundary bucket.
 * tests/support/reference_sampling.py holds the numpy definition this is tested against.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "internal.h"

#define N_BUCKETS 4096
#define BUCKET_RANGE 64.0f /* logits more than this below the maximum share the last bucket */

/* splitmix64: a tiny, good-quality generator whose whole state is one integer Python can hold */
static double next_uniform(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0); /* [0, 1) with 53 bits */
}

/* Candidates are ordered by decreasing logit, ties by increasing id (as numpy's lexsort does). */
static __thread const float *sort_vals;
static int by_logit(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float x = sort_vals[i], y = sort_vals[j];
    if (x != y) return x > y ? -1 : 1;
    return (i > j) - (i < j);
}

static void sort_candidates(int32_t *ids, int n, const float *vals) {
    sort_vals = vals; /* qsort has no context argument; the values ride in a thread-local */
    qsort(ids, (size_t)n, sizeof(int32_t), by_logit);
}

/*
 * Keep the shortest run of highest logits whose weight reaches `target`
 * (weight = exp(v - vmax) / z when z > 0, else 1 per token), sorted.
 * ids[0..n) is rewritten; returns the new count.
 */
static int top_prefix(int32_t *ids, int n, const float *vals, float vmax, double z, double target) {
    double weight[N_BUCKETS] = {0};
    const float scale = (N_BUCKETS - 1) / BUCKET_RANGE;
    for (int i = 0; i < n; i++) {
        float d = (vmax - vals[ids[i]]) * scale;
        int b = d < N_BUCKETS - 1 ? (int)d : N_BUCKETS - 1;
        weight[b] += z > 0 ? exp((double)vals[ids[i]] - vmax) / z : 1.0;
    }
    int edge = N_BUCKETS - 1;
    double before = 0.0; /* weight of the buckets above the edge */
    for (int b = 0; b < N_BUCKETS; b++) {
        if (before + weight[b] >= target) {
            edge = b;
            break;
        }
        before += weight[b];
    }
    /* buckets above the edge are kept whole; the edge bucket is sorted and cut */
    int n_core = 0, n_edge = 0;
    int32_t *edge_ids = malloc((size_t)n * sizeof(int32_t));
    if (!edge_ids) return n; /* out of memory: keep everything rather than fail the draw */
    for (int i = 0; i < n; i++) {
        float d = (vmax - vals[ids[i]]) * scale;
        int b = d < N_BUCKETS - 1 ? (int)d : N_BUCKETS - 1;
        if (b < edge) ids[n_core++] = ids[i];
        else if (b == edge) edge_ids[n_edge++] = ids[i];
    }
    sort_candidates(edge_ids, n_edge, vals);
    double acc = before;
    int take = 0;
    while (take < n_edge) {
        acc += z > 0 ? exp((double)vals[edge_ids[take]] - vmax) / z : 1.0;
        take++;
        if (acc >= target) break;
    }
    memcpy(ids + n_core, edge_ids, (size_t)take * sizeof(int32_t));
    free(edge_ids);
    sort_candidates(ids, n_core + take, vals);
    return n_core + take;
}

/*
 * Top-k without sorting the vocabulary: a strided sample of the logits gives a
 * threshold that about 4k + 64 of them pass (sample_top, merge_threshold), the pass
 * that finds the maximum also collects the ids at or above it (scan), and only those
 * are ordered (top_k_sorted). If the guess lets too few through (a strange
 * distribution), or the vocabulary is too small to sample, buckets do it instead.
 */
enum { SAMPLE = 1024 };
#define MAX_SAMPLE_THREADS 16

/* Threads of the last forward pass (pl_set_sample_threads). Only a speed hint: any
 * count gives the same result. */
static int sample_threads = 1;

void pl_set_sample_threads(int n_threads) { sample_threads = n_threads > 0 ? n_threads : 1; }

/* One thread's part of the pass over the logits (pl_sample). */
typedef struct {
    int a, m;              /* its range starts at a; m candidates found, at cand[a..a+m) */
    float max;             /* the largest logit in the range, first met in the chunk at best_chunk */
    int best_chunk, nan;
    int kept;              /* top[0..kept): the range's largest sampled logits, decreasing */
    float top[SAMPLE];
} scan_part;

/* The largest want+1 of the sampled logits (every (n / SAMPLE)-th) that lie in [a, b). */
static void sample_top(const float *vals, int n, int a, int b, int want, scan_part *r) {
    const int stride = n / SAMPLE;
    float *top = r->top;
    int kept = 0;
    for (int i = (a + stride - 1) / stride; i < SAMPLE && i * stride < b; i++) {
        float x = vals[i * stride];
        if (kept == want + 1 && x <= top[kept - 1]) continue;
        int j = kept < want + 1 ? kept++ : kept - 1;
        while (j > 0 && top[j - 1] < x) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = x;
    }
    r->kept = kept;
}

/* The (want+1)-th largest sampled logit of all parts: about 4k + 64 logits reach it.
 * +inf (no shortcut) if it is NaN. */
static float merge_threshold(const scan_part *part, int n_parts, int want) {
    int at[MAX_SAMPLE_THREADS] = {0};
    float x = INFINITY;
    for (int taken = 0; taken < want + 1; taken++) {
        int best = -1;
        for (int t = 0; t < n_parts; t++)
            if (at[t] < part[t].kept && (best < 0 || part[t].top[at[t]] > part[best].top[at[best]])) best = t;
        if (best < 0) break;
        x = part[best].top[at[best]++];
    }
    return x == x ? x : INFINITY;
}

/* The maximum of v[0..n), and whether any is NaN, in 16 independent running maxima (four
 * vectors of GCC's portable vector type: SSE on x86-64's baseline, NEON on ARM). One
 * accumulator is a chain of dependent max instructions that runs at a fraction of the rate
 * the loads allow. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static inline v4f max4(v4f a, v4f b) {
    const v4i gt = a > b;
    return (v4f)(((v4i)a & gt) | ((v4i)b & ~gt));
}

static float chunk_max(const float *v, int n, int *nan) {
    v4f m[4];
    v4i bad = {0, 0, 0, 0};
    for (int j = 0; j < 4; j++) m[j] = (v4f){-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 4; j++) {
            v4f x;
            memcpy(&x, v + i + 4 * j, sizeof x);
            m[j] = max4(x, m[j]);
            bad |= x != x;
        }
    m[0] = max4(max4(m[0], m[1]), max4(m[2], m[3]));
    float best = m[0][0];
    for (int j = 1; j < 4; j++) best = m[0][j] > best ? m[0][j] : best;
    int any = bad[0] | bad[1] | bad[2] | bad[3];
    for (; i < n; i++) {
        best = v[i] > best ? v[i] : best;
        any |= v[i] != v[i];
    }
    *nan |= any;
    return best;
}

/* Whether any of v[0..16) is >= t. */
static inline int any_reaches(const float *v, float t) {
    const v4f tt = {t, t, t, t};
    v4i hit = {0, 0, 0, 0};
    for (int j = 0; j < 4; j++) {
        v4f x;
        memcpy(&x, v + 4 * j, sizeof x);
        hit |= x >= tt;
    }
    return (hit[0] | hit[1] | hit[2] | hit[3]) != 0;
}

/*
 * Over vals[a, b): the maximum by chunks, each a vectorizable pass (a running argmax
 * is one long dependency chain), remembering the first chunk that holds it; and,
 * while a chunk is in L1, the ids at or above the threshold into cand[a..]: 16
 * logits are tested at once and only a group with a hit (~1 in 200) is gone through
 * one by one.
 */
static void scan(const float *v, int a, int b, float threshold, int32_t *cand, scan_part *r) {
    enum { CHUNK = 1024, GROUP = 16 };
    float vmax = -INFINITY;
    int nan = 0, best_chunk = a, m = 0;
    int32_t *out = cand + a;
    for (int c0 = a; c0 < b; c0 += CHUNK) {
        const int c1 = b - c0 < CHUNK ? b : c0 + CHUNK;
        const float cmax = chunk_max(v + c0, c1 - c0, &nan);
        if (cmax > vmax) {
            vmax = cmax;
            best_chunk = c0;
        }
        if (cmax < threshold) continue; /* also skips every chunk when there is no threshold */
        for (int g = c0; g < c1; g += GROUP) {
            const int g1 = c1 - g < GROUP ? c1 : g + GROUP;
            if (g1 - g == GROUP && !any_reaches(v + g, threshold)) continue;
            for (int i = g; i < g1; i++) {
                out[m] = i;
                m += v[i] >= threshold; /* branch-free compaction */
            }
        }
    }
    r->a = a;
    r->m = m;
    r->max = vmax;
    r->best_chunk = best_chunk;
    r->nan = nan;
}

/* The k highest logits, sorted, into ids; ids[0..m) already holds the m ids whose
 * logits reach the sampled threshold (m < k: the guess failed, or there was none). */
static int top_k_sorted(int32_t *ids, int m, int n, const float *vals, float vmax, int k) {
    if (m >= k) {
        /* the k best of the m survivors by insertion into a sorted run (qsort's
         * comparator calls cost more than the rest of the draw) */
        int len = 0;
        for (int i = 0; i < m; i++) {
            const int32_t id = ids[i];
            const float x = vals[id];
            if (len == k && !(x > vals[ids[len - 1]])) continue; /* ties keep the lower id: it came first */
            int j = len < k ? len++ : len - 1;
            while (j > 0 && vals[ids[j - 1]] < x) {
                ids[j] = ids[j - 1];
                j--;
            }
            ids[j] = id;
        }
        return k;
    }
    for (int i = 0; i < n; i++) ids[i] = i;
    return top_prefix(ids, n, vals, vmax, 0.0, (double)k);
}

/* A candidate's distance from the typical surprisal, and its place in the candidate list. */
typedef struct {
    double score;
    int32_t pos;
} typical_rank;

static int by_score(const void *a, const void *b) {
    const typical_rank *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos); /* stable: ties keep the list's order */
}

/*
 * Locally typical sampling (Meister et al. 2022): rank the candidates by how far their
 * surprisal -log p lies from the entropy of the distribution, and keep the closest
 * ones until their mass exceeds typical_p. ids[0..n) is rewritten, sorted by logit;
 * returns the new count. It sorts every candidate, like llama.cpp's: it is used rarely,
 * usually after top-k.
 */
static int typical_filter(int32_t *ids, int n, const float *vals, float vmax, double typical_p) {
    typical_rank *rank = malloc((size_t)n * sizeof *rank);
    double *p = malloc((size_t)n * sizeof *p);
    if (!rank || !p) { /* out of memory: keep everything rather than fail the draw */
        free(rank);
        free(p);
        return n;
    }
    double z = 0.0, entropy = 0.0;
    for (int i = 0; i < n; i++) z += p[i] = exp((double)vals[ids[i]] - vmax);
    for (int i = 0; i < n; i++) {
        p[i] /= z;
        const double logp = log(p[i] > 1e-300 ? p[i] : 1e-300); /* -inf logits: far from typical */
        entropy -= p[i] * logp;
        rank[i].score = -logp;
        rank[i].pos = i;
    }
    for (int i = 0; i < n; i++) rank[i].score = fabs(rank[i].score - entropy);
    qsort(rank, (size_t)n, sizeof *rank, by_score);
    double mass = 0.0;
    int keep = n;
    for (int i = 0; i < n; i++) {
        mass += p[rank[i].pos];
        if (mass > typical_p) {
            keep = i + 1;
            break;
        }
    }
    for (int i = 0; i < keep; i++) rank[i].pos = ids[rank[i].pos];
    for (int i = 0; i < keep; i++) ids[i] = rank[i].pos;
    free(rank);
    free(p);
    sort_candidates(ids, keep, vals);
    return keep;
}

/* counts is n_vocab ints of scratch; only the entries of recent tokens are touched */
static void apply_penalties(float *v, int n_vocab, const pl_sampler *s, const int32_t *recent, int n_recent,
                            int32_t *counts) {
    for (int i = 0; i < n_recent; i++)
        if (recent[i] >= 0 && recent[i] < n_vocab) counts[recent[i]] = 0;
    for (int i = 0; i < n_recent; i++)
        if (recent[i] >= 0 && recent[i] < n_vocab) counts[recent[i]]++;
    for (int i = 0; i < n_recent; i++) {
        int32_t t = recent[i];
        if (t < 0 || t >= n_vocab || counts[t] == 0) continue; /* each distinct token once */
        float x = v[t];
        if (s->repeat_penalty != 1.0f) x = x > 0 ? x / s->repeat_penalty : x * s->repeat_penalty;
        v[t] = x - (float)counts[t] * s->frequency_penalty - s->presence_penalty;
        counts[t] = 0;
    }
}

/* The 32 logits of one mask word: kept where its bit is set, -inf elsewhere. Branch-free:
 * the bits of a grammar's mask are as good as random, and a branch per token mispredicts. */
static void copy_word(float *dst, const float *src, uint32_t w) {
    /* bit j as a constant per lane (not w >> j: baseline x86-64 has no per-lane shift), so
     * the loop vectorizes to and / compare / select */
    static const uint32_t bit[32] = {
        1u << 0, 1u << 1, 1u << 2, 1u << 3, 1u << 4, 1u << 5, 1u << 6, 1u << 7,
        1u << 8, 1u << 9, 1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15,
        1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20, 1u << 21, 1u << 22, 1u << 23,
        1u << 24, 1u << 25, 1u << 26, 1u << 27, 1u << 28, 1u << 29, 1u << 30, 1u << 31};
    const uint32_t minus_inf = 0xff800000u;
    for (int j = 0; j < 32; j++) {
        const uint32_t keep = 0u - (uint32_t)((w & bit[j]) != 0);
        uint32_t x;
        memcpy(&x, src + j, sizeof x);
        x = (x & keep) | (minus_inf & ~keep);
        memcpy(dst + j, &x, sizeof x);
    }
}

/* dst[a..b) = src[a..b) where the bitmask allows the token, -inf elsewhere. Whole
 * words are the common case (a grammar allows few tokens, or all of a region). */
static void copy_allowed(float *dst, const float *src, const uint32_t *allowed, int a, int b) {
    int i = a;
    for (; i < b && (i & 31); i++) dst[i] = allowed[i >> 5] >> (i & 31) & 1 ? src[i] : -INFINITY;
    for (; i + 32 <= b; i += 32) {
        const uint32_t w = allowed[i >> 5];
        if (w == 0xffffffffu) {
            memcpy(dst + i, src + i, 32 * sizeof(float));
        } else if (w == 0) {
            for (int j = 0; j < 32; j++) dst[i + j] = -INFINITY;
        } else {
            copy_word(dst + i, src + i, w);
        }
    }
    for (; i < b; i++) dst[i] = allowed[i >> 5] >> (i & 31) & 1 ? src[i] : -INFINITY;
}

static int is_allowed(const uint32_t *allowed, int32_t id) { return allowed[id >> 5] >> (id & 31) & 1; }

/* What every thread of pl_sample's vocabulary passes reads and writes. */
typedef struct {
    const float *logits;
    float *work;
    int n_vocab, modify, penalize, shortcut, want;
    const pl_sampler *s;
    const int32_t *recent, *bias_ids;
    const float *bias_vals;
    int n_recent, n_bias;
    const uint32_t *allowed;
    int32_t *cand;
    scan_part *part; /* [thread] */
    float threshold; /* top-k's shortcut: what the scan keeps */
    int team;        /* threads that took part */
} vocab_pass;

/* The passes over the whole vocabulary, this thread's share of them: the logits copied where
 * something changes them (bias, penalties, a mask), top-k's threshold, the candidates. Run by
 * every thread of a team, or alone outside one (the barriers and singles then do nothing). */
static void scan_vocab(vocab_pass *j) {
    const int t = omp_get_thread_num();
    const float *v = j->modify ? j->work : j->logits;
    int a, b;
    pl_thread_share(j->n_vocab, &a, &b);
    if (t == 0) j->team = omp_get_num_threads();
    if (j->modify) {
        if (j->allowed) copy_allowed(j->work, j->logits, j->allowed, a, b);
        else memcpy(j->work + a, j->logits + a, (size_t)(b - a) * sizeof(float));
#pragma omp barrier
#pragma omp single
        {
            /* a banned token stays banned: -inf plus a +inf bias would be NaN */
            for (int i = 0; i < j->n_bias; i++)
                if (j->bias_ids[i] >= 0 && j->bias_ids[i] < j->n_vocab &&
                    (!j->allowed || is_allowed(j->allowed, j->bias_ids[i])))
                    j->work[j->bias_ids[i]] += j->bias_vals[i];
            if (j->penalize) /* cand: scratch */
                apply_penalties(j->work, j->n_vocab, j->s, j->recent, j->n_recent, j->cand);
        }
    }
    if (j->shortcut) {
        sample_top(v, j->n_vocab, a, b, j->want, &j->part[t]);
#pragma omp barrier
#pragma omp single
        {
            j->threshold = merge_threshold(j->part, omp_get_num_threads(), j->want);
            /* a mask leaves many -inf logits: collect only the allowed ones */
            if (j->allowed && j->threshold == -INFINITY) j->threshold = -FLT_MAX;
        }
    }
    scan(v, a, b, j->threshold, j->cand, &j->part[t]);
}

int pl_sample(const float *logits, int n_vocab, const pl_sampler *s, const int32_t *recent, int n_recent,
              const int32_t *bias_ids, const float *bias_vals, int n_bias, const uint32_t *allowed,
              uint64_t *rng, float *work, int32_t *cand, double *probs, int *n_cand) {
    const int penalize = n_recent > 0 && (s->repeat_penalty != 1.0f || s->frequency_penalty != 0.0f ||
                                          s->presence_penalty != 0.0f);
    const int modify = n_bias > 0 || penalize || allowed;
    const float *v = modify ? work : logits; /* copied only when something changes them */
    const int top_k = s->temperature > 0.0f && s->top_k > 0 && s->top_k < n_vocab;
    /* top-k's shortcut: the (want+1)-th largest of SAMPLE strided logits lets ~4k+64 through */
    const int shortcut = top_k && n_vocab > 8 * SAMPLE && s->top_k < n_vocab / 16;
    const int want = shortcut ? (int)(((long)s->top_k * 4 + 64) * SAMPLE / n_vocab) + 1 : 0;

    /*
     * The passes over the whole vocabulary are split over the threads of the last
     * forward pass the way its output layer split the rows: each thread then reads
     * the logits it wrote, from its own cache (one thread reading them all, half from
     * the other core's cache, made the maximum alone a visible share of a token).
     * One thread runs them outside any OpenMP region: even a region of one costs
     * libgomp a futex call, which a server pays for every slot's every token.
     */
    int nth = sample_threads < MAX_SAMPLE_THREADS ? sample_threads : MAX_SAMPLE_THREADS;
    if (nth < 1 || n_vocab < 16384) nth = 1;
    scan_part part[MAX_SAMPLE_THREADS];
    vocab_pass job = {logits, work, n_vocab, modify, penalize, shortcut, want, s, recent, bias_ids, bias_vals,
                      n_recent, n_bias, allowed, cand, part, INFINITY, 1};
    if (nth > 1) {
#pragma omp parallel num_threads(nth)
        {
            pl_team_enter();
            scan_vocab(&job);
        }
    } else {
        scan_vocab(&job);
    }
    const int team = job.team;
    float vmax = -INFINITY;
    int nan = 0, best_chunk = 0, m = 0;
    for (int t = 0; t < team; t++) { /* in range order: candidates stay in increasing id order */
        nan |= part[t].nan;
        if (part[t].max > vmax) {
            vmax = part[t].max;
            best_chunk = part[t].best_chunk;
        }
        if (part[t].m && part[t].a != m) memmove(cand + m, cand + part[t].a, (size_t)part[t].m * sizeof(int32_t));
        m += part[t].m;
    }
    if (nan) {
        pl_set_error("the logits contain NaN (the model produced invalid numbers)");
        return -1;
    }
    if (vmax == -INFINITY) {
        pl_set_error(allowed ? "the grammar allows no token here (every allowed token has logit -inf)"
                             : "every token has logit -inf (a logit_bias that bans the whole vocabulary?)");
        return -1;
    }
    int best = best_chunk;
    while (best < n_vocab - 1 && v[best] != vmax) best++;
    if (s->temperature <= 0.0f || vmax == INFINITY) { /* greedy, or a token forced by a +inf bias */
        cand[0] = best;
        probs[0] = 1.0;
        *n_cand = 1;
        return best;
    }

    int n = n_vocab, sorted = 0;
    if (top_k) {
        n = top_k_sorted(cand, m, n, v, vmax, s->top_k);
        sorted = 1;
    } else {
        for (int i = 0; i < n; i++) cand[i] = i;
    }
    if (s->typical_p < 1.0f && n > 1) {
        n = typical_filter(cand, n, v, vmax, (double)s->typical_p);
        sorted = 1;
    }
    if (s->top_p < 1.0f && n > 1) {
        double z = 0.0;
        for (int i = 0; i < n; i++) z += exp((double)v[cand[i]] - vmax);
        if (!sorted && s->min_p > 0.0f) {
            /* min-p keeps a prefix of the sorted order, and so does top-p: the result is the
             * shorter one, so top-p only has to look inside min-p's (small) set */
            const float threshold = vmax + logf(s->min_p);
            int m = 0;
            for (int i = 0; i < n; i++)
                if (v[cand[i]] >= threshold) cand[m++] = cand[i];
            n = m;
            sort_candidates(cand, n, v);
            sorted = 1;
        }
        if (sorted) {
            double acc = 0.0;
            int keep = n;
            for (int i = 0; i < n; i++) {
                acc += exp((double)v[cand[i]] - vmax) / z;
                if (acc >= s->top_p) {
                    keep = i + 1;
                    break;
                }
            }
            n = keep;
        } else {
            n = top_prefix(cand, n, v, vmax, z, (double)s->top_p);
            sorted = 1;
        }
    }
    if (s->min_p > 0.0f && n > 1) {
        const float threshold = vmax + logf(s->min_p);
        int m = 0;
        for (int i = 0; i < n; i++)
            if (v[cand[i]] >= threshold) cand[m++] = cand[i];
        n = m;
    }

    if (allowed) { /* banned tokens have probability 0: drop them, so no rounding can draw one */
        int m = 0;
        for (int i = 0; i < n; i++)
            if (v[cand[i]] > -INFINITY) cand[m++] = cand[i];
        n = m;
    }
    if (n <= 0) { /* cannot happen with parameters in range; keep the best token rather than read cand[-1] */
        cand[0] = best;
        n = 1;
    }
    /* temperature, then the distribution the draw uses */
    double z = 0.0;
    for (int i = 0; i < n; i++) {
        probs[i] = exp(((double)v[cand[i]] - vmax) / s->temperature);
        z += probs[i];
    }
    for (int i = 0; i < n; i++) probs[i] /= z;
    *n_cand = n;
    if (!rng) return cand[0];

    double u = next_uniform(rng), acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += probs[i];
        if (u < acc) return cand[i];
    }
    return cand[n - 1]; /* rounding left u above the last partial sum */
}
