"""Milliseconds per decoded token (min / median / max over N steps), one eval([tok]) + argmax per step.

    python bench/decode_latency.py [-m MODEL] [-t THREADS] [-n 30] [--depth D]

--depth D evaluates D prompt tokens first, so the N decoded tokens attend over D.. positions
(attention's share of a token grows with them).

Meant for quick A/B runs of thread settings, e.g. GOMP_SPINCOUNT=1000 or OMP_WAIT_POLICY=passive in
the environment (libgomp reads them when the extension loads).
"""
import argparse
import time

import numpy as np

from pyllama import Llama

p = argparse.ArgumentParser()
p.add_argument("-m", "--model", default=None)
p.add_argument("-t", "--threads", type=int, default=2)
p.add_argument("-n", type=int, default=30)
p.add_argument("--depth", type=int, default=0, help="prompt tokens evaluated before timing")
a = p.parse_args()
llm = Llama(a.model, n_ctx=a.depth + a.n + 8, n_threads=a.threads)
if a.depth:
    llm.eval([100 + i % 1000 for i in range(a.depth)])
tok, ts = 1, []
for _ in range(a.n):
    t0 = time.perf_counter()
    llm.eval([tok])
    ts.append(time.perf_counter() - t0)
    tok = int(np.argmax(llm.logits))
ts = np.array(ts) * 1000
print(f"threads {a.threads}, depth {a.depth}: ms/token min {ts.min():.2f} median {np.median(ts):.2f} max {ts.max():.2f}")
