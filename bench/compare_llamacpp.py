#!/usr/bin/env python3
"""pyllama against llama.cpp, side by side on the same model files: the one comparison driver.

    python bench/compare_llamacpp.py [-m MODEL ...] [-p 512] [-n 128] [-t 2] [-r 3] [--rounds 1]
                                     [--mmap 0|1] [--isa native|avx2] [--llama-bench PATH] [--no-variants]
                                     [--llama-cpp-python] [--no-stream] [--json-out FILE]

For every model file and test (ppN = prefill of N tokens, tgN = N decode steps) it runs
llama.cpp's `llama-bench ... -o json` and then pyllama's `python -m pyllama.bench ... --json`,
alternating the two engines test by test so that both see the same machine load. With
--rounds R the alternation is repeated R times (the engine that goes first swaps each round)
and the samples of all rounds are pooled.

--llama-cpp-python: llama.cpp through llama-cpp-python instead of llama-bench, both engines
loaded once in this process and driven alike from Python (ppN = one eval of N tokens into an
empty cache; tgN = N times eval([token]) + argmax over the logits), so each pays the same
Python overhead that a Python user of either pays. Needs `pip install llama-cpp-python`.

Models: the ones given with -m, else the default model (pyllama.models.default_model_path())
plus the Q4_0/Q8_0/F16/F32 variants bench/make_variants.py writes.
llama-bench: --llama-bench, else $LLAMA_BENCH, else the binary bench/build_llamacpp.sh built.
--isa avx2 compares the two engines' AVX2 code on a CPU that has more (the instruction set of an
AVX2-only machine): pyllama runs with PYLLAMA_ISA=avx2, llama-bench is the LLAMACPP_ISA=avx2 build.
After each model's decode tests, bench/stream_read.c reads 1 GiB with the same thread count:
decode's weight bandwidth is given as a share of it (the bandwidth a shared host leaves moves
from minute to minute, so only a reading taken in the same minutes is a fair denominator).

Prints a markdown table: tokens/s of each engine (mean ± sd over repetitions, as llama-bench
reports them) and the ratio pyllama / llama.cpp; then the best repetition of each and their
ratio, which is the steadier figure on a machine shared with other work (a 2-thread run whose
thread is preempted can lose an order of magnitude in one repetition). The load average
before and after heads the table. Progress -> stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def log(msg: str) -> None:
    print(f"compare_llamacpp: {msg}", file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def find_llama_bench(explicit: str | None, isa: str = "native") -> str:
    for cand in (explicit, os.environ.get("LLAMA_BENCH")):
        if cand:
            if not os.access(cand, os.X_OK):
                sys.exit(f"compare_llamacpp: {cand} is not an executable llama-bench")
            return cand
    script = os.path.join(HERE, "build_llamacpp.sh")
    log("locating llama-bench through bench/build_llamacpp.sh (builds it on first use: several minutes)")
    res = subprocess.run(["bash", script], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "LLAMACPP_ISA": isa})
    if res.returncode != 0 or not res.stdout.strip():
        sys.exit("compare_llamacpp: bench/build_llamacpp.sh failed; pass --llama-bench PATH")
    return os.path.join(res.stdout.strip().splitlines()[-1], "llama-bench")


def default_models(no_variants: bool) -> list[str]:
    sys.path.insert(0, ROOT)
    from pyllama.models import default_model_path

    models = [default_model_path()]
    variants = os.path.join(HERE, "make_variants.py")
    if no_variants or not os.path.exists(variants):
        if not no_variants:
            log("bench/make_variants.py not found: only the default model")
        return models
    log("bench/make_variants.py: making (or finding) the requantized variants")
    res = subprocess.run([sys.executable, variants], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(f"compare_llamacpp: bench/make_variants.py failed (exit {res.returncode})")
    for line in res.stdout.splitlines():  # it prints the paths of the files it made, one per line
        for word in line.split():
            if word.endswith(".gguf") and os.path.isfile(word) and word not in models:
                models.append(os.path.abspath(word))
    return models


def llama_bench_no_mmap_args(exe: str) -> list[str]:
    """llama-bench's flag for loading without mmap: -lm none in newer builds, -mmp 0 before."""
    res = subprocess.run([exe, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return ["-lm", "none"] if "--load-mode" in res.stdout else ["-mmp", "0"]


def run_llama_bench(exe: str, model: str, n_prompt: int, n_gen: int, threads: int, reps: int,
                    extra: list[str] = ()) -> dict:
    cmd = [exe, "-m", model, "-p", str(n_prompt), "-n", str(n_gen), "-t", str(threads),
           "-r", str(reps), "-o", "json", *extra]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        sys.exit(f"compare_llamacpp: {' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    rows = json.loads(res.stdout)
    if len(rows) != 1:
        sys.exit(f"compare_llamacpp: expected one result from llama-bench, got {len(rows)}")
    return rows[0]


def run_pyllama_bench(model: str, n_prompt: int, n_gen: int, threads: int, reps: int, use_mmap: bool = True,
                      isa: str = "native") -> dict:
    cmd = [sys.executable, "-m", "pyllama.bench", "-m", model, "-p", str(n_prompt), "-n", str(n_gen),
           "-t", str(threads), "-r", str(reps), "--json", *([] if use_mmap else ["-mmp", "0"]),
           *([] if isa == "native" else ["--isa", isa])]  # an error there if this CPU lacks it
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(f"compare_llamacpp: {' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    rows = json.loads(res.stdout)
    if len(rows) != 1:
        sys.exit(f"compare_llamacpp: expected one result from pyllama.bench, got {len(rows)}")
    return rows[0]


class InProcess:
    """Both engines in this process (--llama-cpp-python), each model loaded once per engine."""

    def __init__(self, n_ctx: int, threads: int, use_mmap: bool):
        self.n_ctx, self.threads, self.use_mmap = n_ctx, threads, use_mmap
        self.loaded: dict[tuple[str, str], tuple] = {}

    def open(self, engine: str, model: str):
        """(llm, a function returning the last position's logits), loaded and warmed up on first use."""
        key = (engine, model)
        if key not in self.loaded:
            if engine == "pyllama":
                from pyllama import Llama

                llm = Llama(model_path=model, n_ctx=self.n_ctx, n_threads=self.threads, n_batch=512,
                            use_mmap=self.use_mmap)
                logits = lambda: llm.logits  # noqa: E731
            else:
                import llama_cpp

                llm = llama_cpp.Llama(model_path=model, n_ctx=self.n_ctx, n_threads=self.threads,
                                      n_threads_batch=self.threads, n_batch=512, n_ubatch=512,
                                      use_mmap=self.use_mmap, verbose=False)
                logits = lambda: llm.scores[llm.n_tokens - 1]  # noqa: E731
            self.loaded[key] = (llm, logits)
            self.time_once(engine, model, list(range(1, 33)), 0)  # page the weights in, start the threads
            self.time_once(engine, model, [], 2)
        return self.loaded[key]

    def time_once(self, engine: str, model: str, tokens: list[int], n_gen: int) -> float:
        llm, logits = self.open(engine, model)
        llm.reset()
        t0 = time.perf_counter()
        if tokens:
            llm.eval(tokens)
        token = 1
        for _ in range(n_gen):
            llm.eval([token])
            token = int(logits().argmax())
        return time.perf_counter() - t0

    def run(self, engine: str, model: str, n_prompt: int, n_gen: int, reps: int) -> dict:
        """The same fields as llama-bench's and pyllama.bench's JSON that the table uses."""
        llm, _ = self.open(engine, model)
        tokens = random.Random(1234).choices(range(llm.n_vocab()), k=n_prompt)  # the same ids for both
        samples = [(n_prompt + n_gen) / self.time_once(engine, model, tokens, 0 if n_prompt else n_gen)
                   for _ in range(reps)]
        return {"avg_ts": statistics.fmean(samples), "samples_ts": samples,
                "stddev_ts": statistics.stdev(samples) if len(samples) > 1 else 0.0}

    def weight_bytes(self, model: str) -> int:
        """What decode reads per token: the bytes of all tensors (llama-bench's model_size)."""
        llm, _ = self.open("pyllama", model)
        return sum(int(t["data"].nbytes) for t in llm.tensors())

    def close(self) -> None:
        for llm, _ in self.loaded.values():
            llm.close()


def build_stream_read() -> str | None:
    """Compile bench/stream_read.c into the cache (once); None when no compiler works."""
    out = os.path.join(os.environ.get("PYLLAMA_CACHE", os.path.expanduser("~/.cache/pyllama")), "stream_read")
    src = os.path.join(HERE, "stream_read.c")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    flags = ["-mavx2"] if platform.machine() in ("x86_64", "AMD64") else []
    r = subprocess.run([os.environ.get("CC", "cc"), "-O2", "-fopenmp", *flags, src, "-o", out],
                       capture_output=True, text=True)
    if r.returncode:
        log(f"cannot build stream_read ({r.stderr.strip()[:200]}); no stream-read column")
        return None
    return out


def stream_read_gbs(exe: str, threads: int) -> float:
    """Median of 10 read passes over 1 GiB with `threads` threads, in GB/s."""
    out = subprocess.run([exe, "1024", str(threads), "10"], capture_output=True, text=True, check=True).stdout
    return float(out.split("median ")[1].split(" GB/s")[0])


def summarize(samples: list[float]) -> tuple[float, float]:
    return statistics.fmean(samples), (statistics.stdev(samples) if len(samples) > 1 else 0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", action="append", dest="models", help="model file (repeatable)")
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("-r", "--repetitions", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1, help="repeat the alternation this many times")
    p.add_argument("--llama-bench", help="path of llama-bench (default: $LLAMA_BENCH or the cache build)")
    p.add_argument("--no-variants", action="store_true", help="skip bench/make_variants.py's files")
    p.add_argument("--json-out", help="also write every raw result to this JSON file")
    p.add_argument("--mmap", type=int, choices=[0, 1], default=1,
                   help="1: both engines map the model file (their default); 0: both read it into memory "
                        "(llama-bench -lm none / -mmp 0, pyllama.bench -mmp 0)")
    p.add_argument("--isa", choices=["native", "avx2"], default="native",
                   help="avx2: pyllama with PYLLAMA_ISA=avx2 against llama.cpp built for AVX2 only "
                        "(bench/build_llamacpp.sh with LLAMACPP_ISA=avx2)")
    p.add_argument("--llama-cpp-python", action="store_true",
                   help="llama.cpp through llama-cpp-python, both engines timed in this process from Python")
    p.add_argument("--no-stream", action="store_true",
                   help="skip the stream-read measurement after each decode test (bench/stream_read.c)")
    args = p.parse_args(argv)

    if args.isa != "native":
        if args.llama_cpp_python:
            sys.exit("compare_llamacpp: --isa applies to llama-bench builds; llama-cpp-python runs as installed")
        os.environ["PYLLAMA_ISA"] = args.isa  # inherited by pyllama.bench
    if args.llama_cpp_python:
        try:
            import llama_cpp
        except ImportError:
            sys.exit("compare_llamacpp: --llama-cpp-python needs llama_cpp (pip install llama-cpp-python)")
        exe = f"llama-cpp-python {llama_cpp.__version__}, in process"
        in_process = InProcess(args.n_prompt + args.n_gen + 16, args.threads, bool(args.mmap))
    else:
        exe = find_llama_bench(args.llama_bench, args.isa)
    given_exe = bool(args.llama_bench or os.environ.get("LLAMA_BENCH"))
    llama_extra = [] if args.mmap or args.llama_cpp_python else llama_bench_no_mmap_args(exe)
    models = [os.path.abspath(m) for m in args.models] if args.models else default_models(args.no_variants)
    for m in models:
        if not os.path.isfile(m):
            sys.exit(f"compare_llamacpp: model file {m} does not exist")
    tests = [(f"pp{args.n_prompt}", args.n_prompt, 0)] if args.n_prompt else []
    tests += [(f"tg{args.n_gen}", 0, args.n_gen)] if args.n_gen else []

    load_before = load_average()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    samples: dict[tuple[str, str, str], list[float]] = {}
    info: dict[str, dict] = {}
    raw = []
    stream_exe = None if args.no_stream or not args.n_gen else build_stream_read()
    streams: dict[str, list[float]] = {}  # model -> stream reads taken right after its decode tests
    for rnd in range(args.rounds):
        for model in models:
            for name, n_prompt, n_gen in tests:
                order = ("llama.cpp", "pyllama") if rnd % 2 == 0 else ("pyllama", "llama.cpp")
                for engine in order:
                    log(f"round {rnd + 1}/{args.rounds} {os.path.basename(model)} {name} {engine} "
                        f"(load {load_average()})")
                    if args.llama_cpp_python:
                        r = in_process.run("pyllama" if engine == "pyllama" else "llama_cpp", model,
                                           n_prompt, n_gen, args.repetitions)
                        info.setdefault(model, {"model_type": "-", "model_size": in_process.weight_bytes(model)})
                    elif engine == "llama.cpp":
                        r = run_llama_bench(exe, model, n_prompt, n_gen, args.threads, args.repetitions, llama_extra)
                        info.setdefault(model, r)
                    else:
                        r = run_pyllama_bench(model, n_prompt, n_gen, args.threads, args.repetitions, bool(args.mmap),
                                              args.isa)
                    samples.setdefault((model, name, engine), []).extend(r.get("samples_ts") or [r["avg_ts"]])
                    raw.append({"round": rnd, "model": model, "test": name, "engine": engine, **r})
                if n_gen and stream_exe:  # memory bandwidth now: it moves with the neighbours' load
                    streams.setdefault(model, []).append(stream_read_gbs(stream_exe, args.threads))
                    raw.append({"round": rnd, "model": model, "test": "stream_read", "GB/s": streams[model][-1]})
    load_after = load_average()
    if args.llama_cpp_python:
        in_process.close()

    first = next(iter(info.values()), {})
    build = "" if args.llama_cpp_python else f", build {first.get('build_commit')}/{first.get('build_number')}"
    isa = ""
    if args.isa != "native":
        isa = f"{args.isa} instruction set{' (pyllama; llama-bench as given)' if given_exe else ''}, "
    mmap = "mmap" if args.mmap else "no mmap" + (f" ({' '.join(llama_extra)} / -mmp 0)" if llama_extra else "")
    lines = [
        f"pyllama vs llama.cpp ({exe}{build}), {args.threads} threads, {args.repetitions} repetitions x "
        f"{args.rounds} round(s), {started}, {platform.machine()} {os.cpu_count()} CPUs, {isa}{mmap}; "
        f"load average before {load_before}, after {load_after}",
        "",
        "| model | type | size MiB | test | llama.cpp t/s | pyllama t/s | pyllama / llama.cpp "
        "| llama.cpp best | pyllama best | ratio of bests | decode GB/s llama.cpp / pyllama (% of stream read) |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for model in models:
        meta = info.get(model, {})
        size = meta.get("model_size", os.path.getsize(model)) / 2**20
        for name, _, _ in tests:
            lm, ls = summarize(samples[(model, name, "llama.cpp")])
            pm, ps = summarize(samples[(model, name, "pyllama")])
            lb, pb = max(samples[(model, name, "llama.cpp")]), max(samples[(model, name, "pyllama")])
            bw = ""
            if name.startswith("tg"):  # weights read per token x tokens per second
                nbytes = meta.get("model_size", os.path.getsize(model))
                bw = f"{nbytes * lm / 1e9:.1f} / {nbytes * pm / 1e9:.1f}"
                if streams.get(model):
                    st = statistics.fmean(streams[model])
                    bw += (f" ({100 * nbytes * lm / 1e9 / st:.0f}% / {100 * nbytes * pm / 1e9 / st:.0f}% "
                           f"of {st:.1f})")
            lines.append(f"| {os.path.basename(model)} | {meta.get('model_type', '?')} | {size:.1f} | {name} "
                         f"| {lm:.1f} ± {ls:.1f} | {pm:.1f} ± {ps:.1f} | {pm / lm:.2f} "
                         f"| {lb:.1f} | {pb:.1f} | {pb / lb:.2f} | {bw} |")
    print("\n".join(lines))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"llama_bench": exe, "load_before": load_before, "load_after": load_after,
                       "results": raw}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
