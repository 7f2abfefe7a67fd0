/*
 * team.h - the thread team of a forward pass: one OpenMP parallel region per batch,
 * whose threads meet at pl_team_barrier between steps (team.c says why not omp barrier)
 * and deal the rows of a product out among themselves with pl_team_take.
 */
#ifndef PL_TEAM_H
#define PL_TEAM_H

#include <stdatomic.h>

/* One thread's barrier counter and the work it holds in the current step, alone on a pair
 * of cache lines (Intel cores fetch lines in pairs), so that signalling it or taking work
 * from it never disturbs another thread's. */
typedef struct {
    atomic_int count;
    _Atomic unsigned long long work; /* step tag, first and end unit left (team.c) */
    char pad[128 - 2 * sizeof(unsigned long long)];
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
/*
 * The next piece [*u0, *u1) of the n units of work that the team shares out in this step
 * (between two barriers); 0 once none is left. Each thread starts on its even share and
 * then takes half of what another has left. At most one work list per step, and at most
 * PL_TEAM_MAX_UNITS units in it.
 */
#define PL_TEAM_MAX_UNITS ((1 << 20) - 1)
int pl_team_take(pl_team *t, int n, int *u0, int *u1);

#endif
