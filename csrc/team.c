/*
 * team.c - a barrier for the forward pass's thread team that gives the CPU away, and
 * the dealing of a product's rows among the team.
 *
 * libgomp's barrier spins for milliseconds before sleeping. When the cores are
 * shared with other work (a laptop), the spinning thread occupies the core its
 * partner needs to reach the barrier, and a decode step, with hundreds of barriers,
 * becomes a hundred times slower. This one spins briefly, then yields the core on
 * every check.
 */
#include <omp.h>
#include <sched.h>
#include <stdlib.h>

#include "internal.h"
#include "team.h"

static void cpu_relax(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

int pl_team_reserve(pl_team *t, int n) {
    if (n <= t->capacity) return 0;
    pl_barrier_slot *s = aligned_alloc(128, (size_t)n * sizeof *s);
    if (!s) {
        pl_set_error("out of memory");
        return -1;
    }
    free(t->slots);
    t->slots = s;
    t->capacity = n;
    return 0;
}

void pl_team_free(pl_team *t) {
    free(t->slots);
    t->slots = NULL;
    t->capacity = 0;
}

void pl_team_reset(pl_team *t, int n_threads) {
    for (int i = 0; i < n_threads; i++) {
        atomic_store_explicit(&t->slots[i].count, 0, memory_order_relaxed);
        atomic_store_explicit(&t->slots[i].work, 0, memory_order_relaxed); /* tag 0: no step */
    }
}

/*
 * A dissemination barrier: in round r (r = 0, 1, ... while 2^r < n) every thread
 * signals by raising its own counter and waits for the counter of the thread 2^r
 * places before it; after the last round every thread has heard, through a chain
 * of release/acquire pairs, from every other. Nobody writes a shared line: with one
 * shared arrival counter every thread's arrival was a read-modify-write of the same
 * line, one after another, which made decode steps at 8 and 16 threads measurably
 * longer (at 2-4 threads the two cost the same). Counters only
 * grow during a forward pass (reset before it): a partner's counter at or past the
 * value this round asks for means it has signalled.
 */
void pl_team_barrier(pl_team *t) {
    const int n = omp_get_num_threads();
    if (n == 1) return;
    const int me = omp_get_thread_num();
    pl_barrier_slot *slots = t->slots;
    int count = atomic_load_explicit(&slots[me].count, memory_order_relaxed);
    for (int step = 1; step < n; step *= 2) {
        count++;
        atomic_store_explicit(&slots[me].count, count, memory_order_release);
        atomic_int *partner = &slots[(me - step + n) % n].count;
        for (int spins = 0; atomic_load_explicit(partner, memory_order_acquire) < count; spins++) {
            if (spins < 256) cpu_relax();
            else sched_yield();
        }
    }
}

/*
 * Dealing work out. An even split of a product's rows is only even in work: a thread
 * that the machine stops for a while (the host preempts a virtual CPU, another program
 * takes the core) holds every other thread at the next barrier. On the 2-vCPU VMs a
 * decode step of 8 sequences lost 0.5-0.7 ms of 9 per thread that way, half of it in a
 * few waits of 50-250 us. So each thread works through its even share from the front, a
 * third of what is left at a time, and a thread that runs out takes the back half of
 * what another has left: the even split when nobody is held up, one atomic word per
 * thread (its slot's line, rarely shared) otherwise.
 *
 * slots[j].work packs (tag, first, end): thread j's share still to do in the step tagged
 * tag. The tag is the barrier count + 1 (equal on every thread within a step, 0 after
 * pl_team_reset); a word with another tag is from an earlier step, so j's share is then
 * still whole. Whoever touches it first in a step, j itself or another, starts from that.
 */
#define UNIT_BITS 20
_Static_assert(PL_TEAM_MAX_UNITS == (1 << UNIT_BITS) - 1, "team.h's limit is the field's");
#define UNIT_MASK ((1ull << UNIT_BITS) - 1)
#define TAG_MASK ((1u << (64 - 2 * UNIT_BITS)) - 1) /* 16M barrier rounds before a tag comes back */

static unsigned long long work_word(unsigned tag, int first, int end) {
    return (unsigned long long)(tag & TAG_MASK) << (2 * UNIT_BITS) | (unsigned long long)first << UNIT_BITS |
           (unsigned long long)end;
}

/* what thread j has left of n units in the step tagged tag, given its word v */
static void work_left(unsigned long long v, unsigned tag, int n, int j, int nth, int *first, int *end) {
    if ((unsigned)(v >> (2 * UNIT_BITS)) == (tag & TAG_MASK)) {
        *first = (int)((v >> UNIT_BITS) & UNIT_MASK);
        *end = (int)(v & UNIT_MASK);
    } else {
        *first = (int)((long long)n * j / nth);
        *end = (int)((long long)n * (j + 1) / nth);
    }
}

int pl_team_take(pl_team *t, int n, int *u0, int *u1) {
    const int me = omp_get_thread_num(), nth = omp_get_num_threads();
    if (n <= 0 || n > PL_TEAM_MAX_UNITS) return 0; /* callers keep to the limit (pl_matmul_share) */
    const unsigned tag = (unsigned)atomic_load_explicit(&t->slots[me].count, memory_order_relaxed) + 1;
    for (int k = 0; k < nth; k++) { /* k = 0: this thread's own share; then the others' */
        const int j = (me + k) % nth;
        _Atomic unsigned long long *w = &t->slots[j].work;
        unsigned long long v = atomic_load_explicit(w, memory_order_relaxed);
        int first, end;
        for (work_left(v, tag, n, j, nth, &first, &end); first < end; work_left(v, tag, n, j, nth, &first, &end)) {
            int a, b;
            if (k == 0) { /* from the front */
                const int piece = (end - first) / 3 > 0 ? (end - first) / 3 : 1;
                a = first, b = first + piece;
                first = b;
            } else { /* from the back */
                a = end - (end - first + 1) / 2, b = end;
                end = a;
            }
            /* the rows themselves reach the others through the barrier that ends the step */
            if (atomic_compare_exchange_weak_explicit(w, &v, work_word(tag, first, end), memory_order_relaxed,
                                                      memory_order_relaxed)) {
                *u0 = a, *u1 = b;
                return 1;
            }
        }
    }
    return 0;
}
