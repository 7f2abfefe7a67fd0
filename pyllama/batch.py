"""Advance several sequences in one forward pass (continuous batching).

Each sequence is a :meth:`pyllama.Llama.fork` (a KV cache of its own over shared
weights). :func:`eval_batch` appends each one's tokens to its own cache with one C
call (``pl_eval_batch``), so every weight matrix is read once for all of them, and
leaves each object exactly as its own ``eval(tokens)`` would: ``input_ids``,
``n_tokens`` and ``logits`` (its last token's) updated.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ._core import ffi, lib
from .errors import ContextOverflowError, PyllamaError, c_error


def eval_batch(requests: Sequence[tuple[object, Sequence[int]]]) -> None:
    """Evaluate ``tokens`` on each ``llm`` of ``requests`` [(llm, tokens), ...] in one forward pass.

    Every llm must come from the same loaded model (the object and its forks), each may
    appear once, and each needs at least one token. The first llm's context lends the pass
    its scratch and threads, so it is the one with the largest ``n_ctx`` (the list is
    reordered for that). Objects made with ``logits_all=True`` are refused. Raises
    ValueError for bad arguments, ContextOverflowError when a sequence would not fit;
    nothing is evaluated then.
    """
    from .llama import Llama, _token_ids

    if not requests:
        return
    seen: set[int] = set()
    model = None
    parts = []
    for llm, tokens in requests:
        if not isinstance(llm, Llama):
            raise ValueError(f"eval_batch takes (Llama, tokens) pairs, got {type(llm).__name__}")
        llm._live()
        if id(llm) in seen:
            raise ValueError("eval_batch: a Llama appears twice; give it all its tokens in one entry")
        seen.add(id(llm))
        if model is None:
            model = llm._model
        elif llm._model != model:
            raise ValueError("eval_batch: every Llama must share one loaded model (use fork())")
        ids = _token_ids(tokens, llm._n_vocab)
        if llm.scores is not None:
            raise ValueError("eval_batch gives each sequence its last logits only; a Llama made with "
                             "logits_all=True needs eval()")
        if len(ids) == 0:
            raise ValueError("eval_batch: every sequence needs at least one token")
        if llm.n_tokens + len(ids) > llm._n_ctx:
            raise ContextOverflowError(
                f"context overflow: {llm.n_tokens} cached + {len(ids)} new tokens exceed n_ctx = {llm._n_ctx}")
        parts.append((llm, ids))
    parts.sort(key=lambda p: -p[0]._n_ctx)  # stable: the largest context first lends the scratch
    lead = parts[0][0]
    n = sum(len(ids) for _, ids in parts)
    tokens = np.concatenate([ids for _, ids in parts]).astype(np.int32)
    pos = np.concatenate([np.arange(llm.n_tokens, llm.n_tokens + len(ids), dtype=np.int32)
                          for llm, ids in parts])
    want = np.zeros(n, dtype=np.int8)
    ends = np.cumsum([len(ids) for _, ids in parts]) - 1
    want[ends] = 1
    logits = np.empty((len(parts), lead._n_vocab), dtype=np.float32)
    if lead._c_threads != lead._n_threads:
        lead._set_c_threads(lead._n_threads)
    with lead._c_lock:  # one lock for a model and its forks: no other evaluation meanwhile
        for llm, _ in parts:
            llm._live()
        ctxs = ffi.new("pl_context *[]", [llm._ctx for llm, ids in parts for _ in range(len(ids))])
        rc = lib.pl_eval_batch(ctxs, ffi.from_buffer("int32_t[]", tokens), ffi.from_buffer("int32_t[]", pos),
                               n, ffi.from_buffer("int8_t[]", want), ffi.from_buffer("float[]", logits))
    if rc != 0:
        raise PyllamaError(c_error("batch evaluation failed"))
    for k, (llm, ids) in enumerate(parts):
        llm.input_ids.extend(ids.tolist())
        llm.n_tokens += len(ids)
        llm._logits[:] = logits[k]
