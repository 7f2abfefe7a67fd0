/*
 * team.c - a barrier for the forward pass's thread team that gives the CPU away.
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
    for (int i = 0; i < n_threads; i++) atomic_store_explicit(&t->slots[i].count, 0, memory_order_relaxed);
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
