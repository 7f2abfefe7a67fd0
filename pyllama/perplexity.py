"""Perplexity of a model on a text, by llama.cpp's definition (llama-perplexity's).

The command ``python -m pyllama.perplexity`` (pyllama/cli/perplexity.py) scores a text file.
The whole text is tokenized once (BOS added when the model adds one). It is cut
into non-overlapping windows ("chunks") of n_ctx tokens; each window is evaluated
from an empty cache with its first token replaced by BOS when the model adds BOS,
and only the second half of the window is scored: the log-probability of token
i+1 given tokens up to i, for i from n_ctx/2 to n_ctx-2. The result is
exp(mean negative log-likelihood) with llama.cpp's error estimate
(standard error of the mean NLL, times the perplexity).

Progress goes to stderr as llama.cpp prints it ("[chunk]running-ppl,").
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np


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


if __name__ == "__main__":  # python -m pyllama.perplexity: the command is pyllama/cli/perplexity.py
    from .cli import run
    from .cli.perplexity import main

    run(main)
