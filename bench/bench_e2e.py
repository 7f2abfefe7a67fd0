"""End-to-end decode and prefill through pyllama.Llama, timed from Python.

    pytest bench/bench_e2e.py --benchmark-only -s

Models: the default model and the cached variants of bench/make_variants.py.
tg: 64 times eval([token]) + argmax (greedy decode loop); pp: one eval of 512 tokens.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import THREADS, model_variants, report

MODELS = model_variants()
if not MODELS:
    pytest.skip("the default model is not available (offline?)", allow_module_level=True)

_loaded = {}


def get_llm(path):
    from pyllama import Llama

    if path not in _loaded:
        _loaded.clear()
        _loaded[path] = Llama(model_path=path, n_ctx=640, n_threads=THREADS, n_batch=512)
    return _loaded[path]


@pytest.mark.parametrize("wtype,path", MODELS, ids=[m[0] for m in MODELS])
def test_decode(benchmark, wtype, path):
    llm = get_llm(path)
    n_gen = 64

    def run():
        llm.reset()
        tok = 1
        for _ in range(n_gen):
            llm.eval([tok])
            tok = int(np.argmax(llm.logits))

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    ts = n_gen / benchmark.stats.stats.median
    benchmark.extra_info.update({"tok/s": round(ts, 2), "threads": THREADS})
    report(f"decode  {wtype:5s} tg{n_gen}: {ts:7.1f} tok/s (median of 3, {THREADS} threads)")


@pytest.mark.parametrize("wtype,path", MODELS, ids=[m[0] for m in MODELS])
def test_prefill(benchmark, wtype, path):
    llm = get_llm(path)
    toks = np.random.default_rng(0).integers(0, llm.n_vocab(), 512, dtype=np.int32)

    def run():
        llm.reset()
        llm.eval(toks)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    ts = 512 / benchmark.stats.stats.median
    benchmark.extra_info.update({"tok/s": round(ts, 2), "threads": THREADS})
    report(f"prefill {wtype:5s} pp512: {ts:7.1f} tok/s (median of 3, {THREADS} threads)")
