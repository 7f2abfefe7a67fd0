"""Perplexity of a model on a text file, by llama.cpp's definition (llama-perplexity).

    python -m pyllama.perplexity -m MODEL -f TEXT -c 512 [-t THREADS] [-b BATCH] [--chunks N]

(llama-perplexity's options; bad arguments, files and models end in one line on stderr.)
The computation is :func:`pyllama.perplexity.perplexity`. Progress goes to stderr as
llama.cpp prints it; the last line on stdout is ``Final estimate: PPL = <value> +/- <error>``.
"""
from __future__ import annotations

import sys
import time

from ..perplexity import perplexity
from .loading import load_model
from .options import ArgumentParser, add_model_args, check_model_args, read_text_file


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m pyllama.perplexity", description=__doc__.split("\n\n")[0])
    add_model_args(p, n_ctx_default=512)
    p.add_argument("-f", "--file", required=True, help="text file to score")
    p.add_argument("--chunks", type=int, default=-1, help="score at most this many windows (default: all)")
    args = p.parse_args(argv)
    check_model_args(p, args)
    if args.ctx_size < 4:
        p.error("-c must be at least 4")
    args.batch_size = min(args.batch_size, args.ctx_size)

    from ..errors import PyllamaError

    text = read_text_file(p, args.file)
    llm = load_model(args)
    try:
        t0 = time.perf_counter()
        tokens = llm.tokenize(text, add_bos=True)
        print(f"perplexity: tokenizing the input took {(time.perf_counter() - t0) * 1000:.0f} ms, "
              f"{len(tokens)} tokens", file=sys.stderr)
        ppl, err, _ = perplexity(llm, tokens, args.ctx_size, args.chunks)
    except (PyllamaError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Final estimate: PPL = {ppl:.4f} +/- {err:.5f}")
    return 0
