"""pyllama and llama.cpp (through llama-cpp-python) side by side, in one run, same threads.

    python bench/bench_vs_llamacpp.py [-r 5] [-t 2] [--pp 512] [--tg 128] [MODEL ...]
    pytest bench/bench_vs_llamacpp.py --benchmark-only -s      (the same, as a benchmark)

Both engines are driven the same way from Python: prefill = one eval of N random
tokens into an empty cache; decode = N times eval([token]) + argmax over the logits.
The runs alternate (pyllama, llama.cpp, pyllama, ...) so that load from other
processes hits both alike; each figure is the median over repetitions, and the
ratio is pyllama / llama.cpp. Skips when llama_cpp is not installed.
Models: the arguments, else the default model and the variants of make_variants.py.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


class PyllamaEngine:
    name = "pyllama"

    def __init__(self, path, n_ctx, threads):
        from pyllama import Llama

        self.llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_batch=512)
        self.isa = self.llm.isa

    def prefill(self, toks):
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(toks)
        return time.perf_counter() - t0

    def decode(self, first, n):
        self.llm.reset()
        tok = first
        t0 = time.perf_counter()
        for _ in range(n):
            self.llm.eval([tok])
            tok = int(np.argmax(self.llm.logits))
        return time.perf_counter() - t0

    def close(self):
        self.llm.close()


class LlamaCppEngine:
    name = "llama.cpp"

    def __init__(self, path, n_ctx, threads):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   n_batch=512, n_ubatch=512, verbose=False)

    def prefill(self, toks):
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(list(map(int, toks)))
        return time.perf_counter() - t0

    def decode(self, first, n):
        self.llm.reset()
        tok = first
        t0 = time.perf_counter()
        for _ in range(n):
            self.llm.eval([tok])
            tok = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
        return time.perf_counter() - t0

    def close(self):
        self.llm.close() if hasattr(self.llm, "close") else None


def compare(path, threads=2, pp=512, tg=128, reps=5, log=sys.stderr):
    """Returns rows: dict(test, pyllama, llamacpp, ratio) with tok/s medians."""
    n_ctx = pp + tg + 16
    engines = [PyllamaEngine(path, n_ctx, threads), LlamaCppEngine(path, n_ctx, threads)]
    rng = np.random.default_rng(0)
    n_vocab = engines[0].llm.n_vocab()
    toks = rng.integers(0, n_vocab, pp, dtype=np.int32)
    res = {e.name: {"pp": [], "tg": []} for e in engines}
    for e in engines:  # warm-up: page the weights in, start the threads
        e.prefill(toks[:32])
        e.decode(1, 2)
    for rep in range(reps):
        for e in engines:
            if pp:
                res[e.name]["pp"].append(pp / e.prefill(toks))
            if tg:
                res[e.name]["tg"].append(tg / e.decode(int(toks[0]), tg))
        print(f"  {os.path.basename(path)} rep {rep + 1}/{reps}: " + ", ".join(
            f"{n} pp {v['pp'][-1]:.1f} tg {v['tg'][-1]:.1f}" for n, v in res.items() if v["pp"] and v["tg"]),
            file=log, flush=True)
    isa = engines[0].isa
    for e in engines:
        e.close()
    rows = []
    for kind, n in (("pp", pp), ("tg", tg)):
        if not n:
            continue
        a = statistics.median(res["pyllama"][kind])
        b = statistics.median(res["llama.cpp"][kind])
        rows.append({"test": f"{kind}{n}", "pyllama": a, "llamacpp": b, "ratio": a / b, "isa": isa,
                     "samples_pyllama": res["pyllama"][kind], "samples_llamacpp": res["llama.cpp"][kind]})
    return rows


def default_models():
    from conftest import model_variants

    return model_variants()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("-r", "--reps", type=int, default=5)
    p.add_argument("--pp", type=int, default=512)
    p.add_argument("--tg", type=int, default=128)
    args = p.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama_cpp is not installed (pip install llama-cpp-python)", file=sys.stderr)
        return 1
    models = [(Path(m).stem, m) for m in args.models] if args.models else default_models()
    print(f"| model | test | pyllama t/s | llama.cpp (llama-cpp-python) t/s | ratio |\n| --- | --- | ---: | ---: | ---: |")
    for label, path in models:
        for r in compare(path, args.threads, args.pp, args.tg, args.reps):
            print(f"| {label} | {r['test']} | {r['pyllama']:.1f} | {r['llamacpp']:.1f} | {r['ratio']:.2f} |",
                  flush=True)
    return 0


# ---------------------------------------------------------------- pytest-benchmark form

try:
    import pytest
except ImportError:  # running as a script without pytest
    pytest = None

if pytest is not None and "pytest" in sys.modules and not __name__ == "__main__":
    from conftest import THREADS, model_variants, report

    _MODELS = model_variants()

    @pytest.mark.parametrize("wtype,path", _MODELS, ids=[m[0] for m in _MODELS])
    def test_side_by_side(benchmark, wtype, path):
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
        rows = benchmark.pedantic(compare, args=(path, THREADS, 512, 128, 3), rounds=1, iterations=1)
        for r in rows:
            benchmark.extra_info[r["test"]] = {k: v for k, v in r.items() if k != "test"}
            report(f"{wtype:5s} {r['test']:6s} pyllama {r['pyllama']:7.1f} t/s  llama.cpp {r['llamacpp']:7.1f} t/s  "
                   f"ratio {r['ratio']:.2f}")

if __name__ == "__main__":
    sys.exit(main())
