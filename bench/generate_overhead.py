"""Time spent per generated token outside the forward pass (sampling, detokenizing, Python).

    python bench/generate_overhead.py [-m MODEL] [-n 128] [-t 2]

Runs Llama.generate with Llama.eval wrapped to sum its time; what remains is the overhead.
"""
import argparse
import time

from pyllama import Llama

p = argparse.ArgumentParser()
p.add_argument("-m", "--model", default=None)
p.add_argument("-n", type=int, default=128)
p.add_argument("-t", "--threads", type=int, default=2)
a = p.parse_args()

llm = Llama(a.model, n_ctx=512, n_threads=a.threads)
prompt = llm.tokenize(b"Once upon a time, in a small village by the sea,")


def run(**kw):
    spent = [0.0]
    plain_eval = llm.eval

    def timed_eval(tokens, logits_all=False):
        t0 = time.perf_counter()
        plain_eval(tokens, logits_all)
        spent[0] += time.perf_counter() - t0

    llm.reset()
    llm.eval(prompt)
    llm.eval = timed_eval
    try:
        n, t0 = 0, time.perf_counter()
        for _ in llm.generate(prompt, reset=False, **kw):
            n += 1
            if n == a.n:
                break
        total = time.perf_counter() - t0
    finally:
        del llm.eval
    return n, total, spent[0]


for kw in [dict(temp=0.0), dict(temp=0.8, top_k=40, top_p=0.95, min_p=0.05),
           dict(temp=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1)]:
    run(**kw)  # warm-up
    n, total, ev = run(**kw)
    print(f"{kw}: {n / total:.1f} tok/s, eval {ev / n * 1e3:.2f} ms/token, "
          f"outside eval {(total - ev) / n * 1e3:.3f} ms/token = {100 * (total - ev) / ev:.1f}% of eval")
