"""One forward pass of N sequences against one sequence's decode step (the server's rounds).

    python bench/batch_step.py [-m MODEL] [-t 2] [-n 8] [--steps 40] [--rounds 6]

Each of N forks of the model holds the same prompt; a round truncates them back to it and runs
`steps` passes of `eval_batch` (one token per sequence), then the same steps on one sequence
alone (`eval`), alternating. Prints the median ms per pass of each, over all rounds, and the
ratio of their token rates (N x one pass / N-sequence pass), the ceiling of what N streams
can gain over one. Runs in batch-invariant mode, as the server does. To compare two builds,
alternate runs of this script with PYTHONPATH set to each tree.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from pyllama import Llama
from pyllama._core import lib
from pyllama.batch import eval_batch
from pyllama.models import resolve_model

PROMPT = b"Write a long story about a lighthouse keeper who finds a message in a bottle. Chapter 1:"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--sequences", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    llm = Llama(model_path=resolve_model(args.model), n_ctx=1024, n_threads=args.threads, verbose=False)
    lib.pl_set_batch_invariant(1)
    forks = [llm.fork() for _ in range(args.sequences)]
    prompt = llm.tokenize(PROMPT)
    for f in forks:
        f.eval(prompt)
    one, many = [], []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        for f in forks:
            f.truncate(len(prompt))
        for i in range(args.steps):
            t0 = time.perf_counter()
            eval_batch([(f, [100 + i]) for f in forks])
            many.append(time.perf_counter() - t0)
        forks[0].truncate(len(prompt))
        for i in range(args.steps):
            t0 = time.perf_counter()
            forks[0].eval([100 + i])
            one.append(time.perf_counter() - t0)
    a, b = statistics.median(one) * 1e3, statistics.median(many) * 1e3
    print(f"1 sequence: {a:.2f} ms/pass, {args.sequences} sequences: {b:.2f} ms/pass, "
          f"tokens/s ratio {args.sequences * a / b:.2f}x")


if __name__ == "__main__":
    main()
