/*
 * team.h - the thread team of a forward pass: one OpenMP parallel region per batch,
 * whose threads meet at pl_team_barrier between steps (team.c says why not omp barrier).
 */
#ifndef PL_TEAM_H
#define PL_TEAM_H

#include <stdatomic.h>

/* One thread's barrier counter, alone on a pair of cache lines (Intel cores fetch lines
 * in pairs), so that signalling it never disturbs another thread's counter. */
typedef struct {
    atomic_int count;
    char pad[128 - sizeof(atomic_int)];
} pl_barrier_slot;

typedef struct {
    pl_barrier_slot *slots; /* [thread] */
    int capacity;           /* threads the slots are allocated for */
} pl_team;

/* Room for n threads; 0 or -1 (error set). */
int pl_team_reserve(pl_team *t, int n);
void pl_team_free(pl_team *t);
/* Before each parallel region that uses the barrier (counters restart from zero). */
void pl_team_reset(pl_team *t, int n_threads);
/* Called by every thread of the running team; returns once all have called it. */
void pl_team_barrier(pl_team *t);

#endif
