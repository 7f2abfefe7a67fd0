"""Perplexity of a model on a text file, by llama.cpp's definition (llama-perplexity).

    python -m pyllama.perplexity -m MODEL -f TEXT -c 512 [-t THREADS] [-b BATCH] [--chunks N]

(llama-perplexity's options; bad arguments, files and models end in one line on stderr.)

The whole file is tokenized once (BOS added when the model adds one). It is cut
into non-overlapping windows ("chunks") of n_ctx tokens; each window is evaluated
from an empty cache with its first token replaced by BOS when the model adds BOS,
and only the second half of the window is scored: the log-probability of token
i+1 given tokens up to i, for i from n_ctx/2 to n_ctx-2. The result is
exp(mean negative log-likelihood) with llama.cpp's error estimate
(standard error of the mean NLL, times the perplexity).

Progress goes to stderr as llama.cpp prints it ("[chunk]running-ppl,"); the last
line on stdout is ``Final estimate: PPL = <value> +/- <error>``.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from .cli_common import ArgumentParser, add_model_args, check_model_args, load_model, read_text_file


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-softmax probability of targets[i] under logits[i] (rows), in float64."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
    return lse - x[np.arange(len(targets)), targets]


def perplexity(llm, tokens: list[int], n_ctx: int, n_chunks: int = -1, out=sys.stderr):
    """Returns (ppl, error, per-chunk running values) over the token list."""
    n_chunk_max = len(tokens) // n_ctx
    if n_chunk_max < 1 or len(tokens) < 2 * n_ctx:
        raise ValueError(
            f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of {n_ctx} "
            f"(the text has {len(tokens)} tokens)"
        )
    n_chunk = n_chunk_max if n_chunks < 0 else min(n_chunks, n_chunk_max)
    first = n_ctx // 2
    bos = llm.token_bos()
    add_bos = bool(getattr(llm.tokenizer, "add_bos", False)) and bos >= 0
    toks = np.asarray(tokens, dtype=np.int32)

    nll_sum = 0.0
    nll2_sum = 0.0
    count = 0
    running = []
    print(f"perplexity: calculating perplexity over {n_chunk} chunks, n_ctx={n_ctx}", file=out)
    t_start = time.perf_counter()
    for i in range(n_chunk):
        window = toks[i * n_ctx:(i + 1) * n_ctx].copy()
        if add_bos:
            window[0] = bos
        llm.reset()
        llm.eval(window, logits_all=True)
        logits = llm.eval_logits
        nll = token_nll(logits[first:n_ctx - 1], window[first + 1:n_ctx])
        nll_sum += float(nll.sum())
        nll2_sum += float((nll * nll).sum())
        count += len(nll)
        running.append(math.exp(nll_sum / count))
        if i == 0:
            per = time.perf_counter() - t_start
            print(f"perplexity: {per:.2f} seconds per pass - ETA {per * n_chunk / 60:.2f} minutes", file=out)
        print(f"[{i + 1}]{running[-1]:.4f},", end="", file=out, flush=True)
    print(file=out)

    mean = nll_sum / count
    ppl = math.exp(mean)
    var = nll2_sum / count - mean * mean
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0
    return ppl, err, running


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

    from .errors import PyllamaError

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


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(130)
