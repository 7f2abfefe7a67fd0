/*
 * test_team.c - the thread team's barrier and its dealing of work (csrc/team.c).
 *
 * For 2 to 8 threads, many steps between barriers, over several passes: every unit of
 * each step's work must be handed out exactly once, whatever thread is held up; a thread
 * held up at the start of a step must leave part of its share to the others. Steps that deal
 * nothing come between (their tags must not confuse the next). Build and run:
 * tests/c/run_team.sh. Exits 1 on a failure.
 */
#include <omp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "team.h"

#define MAX_UNITS 4096

static atomic_int handed[MAX_UNITS]; /* times each unit was handed out in the step */
static int failures;

static void fail(const char *what, int nth, int pass, int step, int n) {
#pragma omp critical
    {
        if (failures++ < 20) fprintf(stderr, "FAIL %s: %d threads, pass %d, step %d, %d units\n", what, nth, pass, step, n);
    }
}

static void spin_us(double us) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3 < us);
}

/* units of the step's work: small and large counts, fewer than the threads too */
static int units_of(int step) {
    static const int n[] = {1, 2, 3, 7, 16, 31, 64, 100, 257, 1000, 4096};
    return n[step % (int)(sizeof n / sizeof n[0])];
}

int main(void) {
    pl_team team = {0};
    if (pl_team_reserve(&team, 8)) return 1;
    long stolen_from_held = 0, held_steps = 0;
    for (int nth = 2; nth <= 8; nth++) {
        for (int pass = 0; pass < 3; pass++) {
            pl_team_reset(&team, nth);
            int got_threads = 0;
#pragma omp parallel num_threads(nth)
            {
#pragma omp single
                got_threads = omp_get_num_threads();
                const int me = omp_get_thread_num(), n_team = omp_get_num_threads();
                for (int step = 0; step < 60; step++) {
                    const int n = units_of(step);
                    /* every third step deals nothing: its tag must not confuse the next */
                    if (step % 3 == 2) {
                        pl_team_barrier(&team);
                        continue;
                    }
                    const int held = step % 6 == 0 ? step / 6 % n_team : -1; /* who starts late */
                    if (me == held) spin_us(3000);
                    int mine = 0, u0, u1;
                    const int even0 = (int)((long long)n * me / n_team), even1 = (int)((long long)n * (me + 1) / n_team);
                    while (pl_team_take(&team, n, &u0, &u1)) {
                        if (u0 < 0 || u1 > n || u0 >= u1) fail("piece out of range", n_team, pass, step, n);
                        for (int u = u0; u < u1 && u >= 0 && u < n; u++) atomic_fetch_add(&handed[u], 1);
                        mine += u1 - u0;
                        if (held < 0) spin_us(1); /* a little work per piece */
                    }
                    pl_team_barrier(&team);
#pragma omp single
                    {
                        for (int u = 0; u < n; u++)
                            if (atomic_load(&handed[u]) != 1) {
                                fail("a unit not handed out exactly once", n_team, pass, step, n);
                                break;
                            }
                        for (int u = 0; u < n; u++) atomic_store(&handed[u], 0);
                    }
                    if (me == held && n >= 8 * n_team) {
#pragma omp atomic
                        held_steps++;
#pragma omp atomic
                        stolen_from_held += mine < even1 - even0;
                    }
                    pl_team_barrier(&team); /* the check above is done before the next step deals */
                }
            }
            if (got_threads != nth) {
                printf("note: asked for %d threads, got %d\n", nth, got_threads);
            }
        }
    }
    if (held_steps && stolen_from_held * 2 < held_steps) {
        fprintf(stderr, "FAIL: a thread held up kept its whole share in %ld of %ld steps\n", held_steps - stolen_from_held,
                held_steps);
        failures++;
    }
    pl_team_free(&team);
    if (failures) return 1;
    printf("team: every unit dealt exactly once; held-up threads lost work in %ld of %ld steps\n", stolen_from_held,
           held_steps);
    return 0;
}
