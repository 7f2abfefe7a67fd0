"""In-process A/B of decode with two barrier implementations, alternated every 16 tokens.

    patch -p1 < bench/barrier_switch.patch && python setup.py build_ext --inplace
    ROUNDS=30 python bench/barrier_ab.py MODEL [THREADS=2]
    git checkout csrc/model.c && python setup.py build_ext --inplace

The patch keeps the old shared-counter barrier beside the dissemination barrier and picks
it per forward pass when PL_OLD_BARRIER is set; this script sets and clears the variable
between rounds of 16 single-token evals (order swapped every round), so both variants see
the same minutes of a shared host. Prints each variant's ms per token and the per-round
ratio old/new (median and quartiles): > 1 means the new barrier is faster.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

from pyllama import Llama


def main() -> None:
    model = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    llm = Llama(model_path=model, n_ctx=256, n_threads=threads, verbose=False)
    times: dict[str, list[float]] = {"old": [], "new": []}
    llm.eval([1])
    for rnd in range(int(os.environ.get("ROUNDS", 60))):
        for variant in ("old", "new") if rnd % 2 == 0 else ("new", "old"):
            if variant == "old":
                os.environ["PL_OLD_BARRIER"] = "1"
            else:
                os.environ.pop("PL_OLD_BARRIER", None)
            if llm.n_tokens > 200:
                llm.reset()
                llm.eval([1])
            t0 = time.perf_counter()
            for _ in range(16):
                llm.eval([42])
            times[variant].append((time.perf_counter() - t0) / 16 * 1e3)
    for variant, x in times.items():
        print(f"{variant}: median {statistics.median(x):.3f} ms/token  mean {statistics.fmean(x):.3f}  (n={len(x)})")
    ratios = [a / b for a, b in zip(times["old"], times["new"])]
    print(f"old/new per round: median {statistics.median(ratios):.3f}, "
          f"quartiles {np.percentile(ratios, 25):.3f}-{np.percentile(ratios, 75):.3f}")


if __name__ == "__main__":
    main()
