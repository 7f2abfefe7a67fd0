"""A plain decode or prefill loop to run under a profiler (perf record python bench/profile_decode.py ...).

    python bench/profile_decode.py [-m MODEL] [-t THREADS] [-r R] [--no-mmap] tg N   # R x (reset, then N x (eval([tok]) + argmax))
    python bench/profile_decode.py [-m MODEL] [-t THREADS] pp R     # R x (reset + eval of 512 tokens)
"""
import argparse

import numpy as np

from pyllama import Llama

p = argparse.ArgumentParser()
p.add_argument("-m", "--model", default=None)
p.add_argument("-t", "--threads", type=int, default=2)
p.add_argument("-r", "--repeat", type=int, default=1, help="tg: decode runs of N tokens, each from an empty cache")
p.add_argument("--no-mmap", action="store_true", help="read the file into memory (use_mmap=False)")
p.add_argument("mode", choices=["tg", "pp"])
p.add_argument("n", type=int)
a = p.parse_args()
llm = Llama(a.model, n_ctx=max(600, a.n + 8), n_threads=a.threads, use_mmap=not a.no_mmap)
if a.mode == "tg":
    for _ in range(a.repeat):
        llm.reset()
        tok = 1
        for _ in range(a.n):
            llm.eval([tok])
            tok = int(np.argmax(llm.logits))
else:
    toks = np.arange(100, 612, dtype=np.int32)
    for _ in range(a.n):
        llm.reset()
        llm.eval(toks)
