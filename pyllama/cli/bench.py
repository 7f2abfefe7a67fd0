"""Prompt-processing and generation speed, measured the way llama.cpp's llama-bench does.

    python -m pyllama.bench -m MODEL [-m MODEL2 ...] -p 512 -n 128 [-pg 512,128] -t 1,2 -r 5 [-mmp 0,1]
                            [-o md|json|jsonl|csv]

For each model, thread count and test it prints one row of a table in llama-bench's
shape (model, size, params, backend, threads, test, t/s ± sd); ``-o json`` (or
``--json``) prints llama-bench's JSON fields instead (model_filename, model_type, model_size,
model_n_params, n_threads, n_prompt, n_gen, avg_ts, stddev_ts, samples_ts, ...) so
the two can be joined.

What is timed, from Python, through the public ``Llama`` API (users pay the same):
  ppN: a fresh context, one ``eval`` of N random tokens (batched prefill);
  tgN: a fresh context, N times ``eval([token])`` followed by an argmax over the
       logits to pick the next token (the decode loop of greedy generation);
  ppN+tgM (-pg N,M): ppN then tgM in one context, t/s counting all N + M tokens.
-ngl and -fa are accepted and ignored (a note on stderr), as the other tools do.
Each test runs once untimed as a warm-up (as llama-bench does), then ``-r`` times;
t/s is the mean over repetitions of tokens / seconds, ± the sample standard deviation.
Progress goes to stderr, the table or JSON to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import numpy as np

from ..gguf import ggml_type_name
from .options import ArgumentParser, add_cache_type_args, add_gpu_args, note_ignored

# llama.cpp's file types (general.file_type) -> the names llama-bench prints
FTYPE_NAMES = {0: "all F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
               11: "Q3_K - Small", 12: "Q3_K - Medium", 13: "Q3_K - Large", 14: "Q4_K - Small",
               15: "Q4_K - Medium", 16: "Q5_K - Small", 17: "Q5_K - Medium", 18: "Q6_K", 25: "IQ4_NL - 4.5 bpw",
               30: "IQ4_XS - 4.25 bpw", 32: "BF16"}


def _int_list(s: str) -> list[int]:
    try:
        out = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not out or any(v < 0 for v in out):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {s!r}")
    return out


def _size_label(n_params: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n_params >= div:
            return f"{n_params / div:.0f}{unit}"
    return str(n_params)


def describe(llm) -> dict:
    """Model facts as llama-bench reports them: bytes and elements of all tensors, a type string."""
    size = n_params = 0
    counts: dict[int, int] = {}
    for t in llm.tensors():
        size += int(t["data"].nbytes)
        n = int(np.prod(t["shape"]))
        n_params += n
        if len(t["shape"]) >= 2:
            counts[t["type"]] = counts.get(t["type"], 0) + n
    meta = llm.metadata
    arch = meta.get("general.architecture", "llama")
    ftype = meta.get("general.file_type")
    if ftype in FTYPE_NAMES:
        ftype_name = FTYPE_NAMES[ftype]
    else:  # llama2.c checkpoints and files without the key: the type of most weights
        main = max(counts, key=counts.get) if counts else 0
        ftype_name = ggml_type_name(main)
    label = meta.get("general.size_label") or _size_label(n_params)
    return {
        "model_filename": os.path.abspath(llm.model_path),
        "model_type": f"{arch} {label} {ftype_name}",
        "model_size": size,
        "model_n_params": n_params,
    }


def run_prompt(llm, tokens: np.ndarray) -> float:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(tokens)
    return time.perf_counter() - t0


def run_gen(llm, first: int, n_gen: int, reset: bool = True) -> float:
    if reset:
        llm.reset()
    token = first
    t0 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([token])
        token = int(np.argmax(llm.logits))
    return time.perf_counter() - t0


def run_prompt_gen(llm, tokens: np.ndarray, n_gen: int) -> float:
    """llama-bench's -pg test: the prompt, then n_gen decoded tokens, timed together."""
    dt = run_prompt(llm, tokens)
    return dt + run_gen(llm, int(np.argmax(llm.logits)), n_gen, reset=False)


def _test_name(n_prompt: int, n_gen: int) -> str:
    if n_prompt and n_gen:
        return f"pp{n_prompt}+tg{n_gen}"
    return f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"


def bench_model(path: str, use_mmap: bool, args, emit) -> None:
    from ..llama import Llama

    n_ctx = max(max(args.n_prompt) + max(args.n_gen), max((a + b for a, b in args.prompt_gen), default=0), 16)
    print(f"pyllama.bench: loading {path}{'' if use_mmap else ' (no mmap)'}", file=sys.stderr)
    llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=args.threads[0], n_batch=args.batch_size,
                type_k=args.cache_type_k, type_v=args.cache_type_v, use_mmap=use_mmap)
    info = describe(llm)
    rng = np.random.default_rng(1234)
    for n_threads in args.threads:
        llm.n_threads = n_threads
        tests = ([("pp", n, 0) for n in args.n_prompt if n > 0] + [("tg", 0, n) for n in args.n_gen if n > 0]
                 + [("pg", a, b) for a, b in args.prompt_gen])
        for kind, n_prompt, n_gen in tests:
            name = _test_name(n_prompt, n_gen)
            print(f"pyllama.bench: {os.path.basename(path)} threads={n_threads} {name} ", end="",
                  file=sys.stderr, flush=True)
            samples = []
            for rep in range(args.repetitions + 1):  # the first is the warm-up
                if kind in ("pp", "pg"):
                    tokens = rng.integers(0, llm.n_vocab(), n_prompt, dtype=np.int32)
                    if llm.tokenizer.add_bos and llm.token_bos() >= 0:
                        tokens[0] = llm.token_bos()
                    if kind == "pp":
                        dt = run_prompt(llm, tokens)
                    else:
                        dt = run_prompt_gen(llm, tokens, n_gen if rep else 1)
                    n = n_prompt + n_gen
                else:
                    bos = llm.token_bos()
                    first = bos if llm.tokenizer.add_bos and bos >= 0 else int(rng.integers(0, llm.n_vocab()))
                    dt = run_gen(llm, first, n_gen if rep else 1)
                    n = n_gen
                if rep:
                    samples.append(n / dt)
                print(".", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            emit({
                **info,
                "backends": f"CPU ({llm.isa})",
                "cpu_info": platform.processor() or platform.machine(),
                "n_threads": n_threads,
                "n_batch": args.batch_size,
                "type_k": args.cache_type_k,
                "type_v": args.cache_type_v,
                "use_mmap": use_mmap,
                "n_prompt": n_prompt,
                "n_gen": n_gen,
                "test_time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "avg_ts": statistics.fmean(samples),
                "stddev_ts": statistics.stdev(samples) if len(samples) > 1 else 0.0,
                "samples_ts": samples,
                "isa": llm.isa,
            })
    llm.close()


def format_row(r: dict, mmap_column: bool = False) -> str:
    test = _test_name(r["n_prompt"], r["n_gen"])
    params = r["model_n_params"]
    mmap = f" {int(r['use_mmap']):4d} |" if mmap_column else ""
    return (f"| {r['model_type']:<30} | {r['model_size'] / 2**20:7.2f} MiB | {params / 1e6:8.2f} M "
            f"| {r['backends']:<10} | {r['n_threads']:7d} |{mmap} {test:>13} | {r['avg_ts']:12.2f} ± "
            f"{r['stddev_ts']:.2f} |")


def header(mmap_column: bool = False) -> str:
    """The table's head; like llama-bench, an mmap column only when -mmp asks for something else than 1."""
    return ("| model                          |       size |     params | backend    | threads |"
            + (" mmap |" if mmap_column else "") + "          test |                  t/s |\n"
            "| ------------------------------ | ---------: | ---------: | ---------- | ------: |"
            + (" ---: |" if mmap_column else "") + " ------------: | -------------------: |")


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m pyllama.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", action="append", dest="models",
                   help="model file or catalog name (repeatable; default: the default model)")
    p.add_argument("-p", "--n-prompt", type=_int_list, default=[512], help="prompt lengths (comma list; 0 skips)")
    p.add_argument("-n", "--n-gen", type=_int_list, default=[128], help="tokens to generate (comma list; 0 skips)")
    p.add_argument("-t", "--threads", type=_int_list, default=None, help="thread counts (comma list)")
    p.add_argument("-r", "--repetitions", type=int, default=5, help="timed repetitions per test")
    p.add_argument("-b", "--batch-size", type=int, default=512, help="tokens per prefill call")
    p.add_argument("--isa", choices=["auto", "scalar", "avx2", "avx512", "neon"], default="auto",
                   help="force a kernel path (default: the best this CPU has)")
    add_cache_type_args(p)
    p.add_argument("-mmp", "--mmap", type=_int_list, default=[1],
                   help="1: map the model file (default), 0: read it into memory (Llama's use_mmap); "
                        "comma list, e.g. 0,1")
    p.add_argument("-pg", dest="prompt_gen", action="append", type=_pair, default=[], metavar="PP,TG",
                   help="a prompt of PP tokens then TG generated, timed together (repeatable)")
    p.add_argument("-o", "--output", choices=["md", "json", "jsonl", "csv"], default="md",
                   help="md: a table (default); json: llama-bench's JSON array; jsonl: one object a line; csv")
    p.add_argument("--json", dest="output", action="store_const", const="json", help="same as -o json")
    add_gpu_args(p)
    args = p.parse_args(argv)
    note_ignored(args)
    if args.repetitions < 1:
        p.error("-r must be at least 1")
    if args.threads is None:
        args.threads = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1]
    if 0 in args.threads:
        p.error("-t: thread counts must be positive")
    if any(v not in (0, 1) for v in args.mmap):
        p.error("-mmp: values must be 0 or 1")
    mmap_column = args.mmap != [1]
    if args.isa != "auto":
        os.environ["PYLLAMA_ISA"] = args.isa
        from .._core import lib

        isa = {"scalar": lib.PL_ISA_SCALAR, "avx2": lib.PL_ISA_AVX2, "avx512": lib.PL_ISA_AVX512,
               "neon": lib.PL_ISA_NEON}[args.isa]
        if lib.pl_set_isa(isa) != isa:
            p.error(f"--isa {args.isa} is not available on this CPU")

    results = []
    if args.output == "md":
        print(header(mmap_column), flush=True)

    def emit(r):
        results.append(r)
        if args.output == "md":
            print(format_row(r, mmap_column), flush=True)
        elif args.output == "jsonl":
            print(json.dumps(r), flush=True)
        elif args.output == "csv":
            if len(results) == 1:
                print(",".join(r), flush=True)
            print(",".join(_csv_field(v) for v in r.values()), flush=True)

    from ..errors import PyllamaError

    try:
        for path in args.models or [None]:
            if path is None:
                from ..models import default_model_path

                path = default_model_path()
            for use_mmap in args.mmap:
                bench_model(path, bool(use_mmap), args, emit)
    except (PyllamaError, OSError, ValueError, MemoryError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(results, indent=2))
    return 0


def _pair(s: str) -> tuple[int, int]:
    values = _int_list(s)
    if len(values) != 2 or 0 in values:
        raise argparse.ArgumentTypeError(f"expected PP,TG (two positive integers), got {s!r}")
    return values[0], values[1]


def _csv_field(v) -> str:
    text = " ".join(str(x) for x in v) if isinstance(v, list) else str(v)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text

