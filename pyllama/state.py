"""A saved sequence: what ``Llama.save_state`` returns and ``Llama.load_state`` takes,
shaped like llama-cpp-python's ``LlamaState`` (picklable: plain arrays and bytes)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._core import ffi, lib
from .errors import c_error


class LlamaState:
    """Token ids, logits rows and KV cache bytes of a cached sequence.

    ``scores`` holds one row of logits per cached position when the model was built
    with ``logits_all=True``, else the last position's row only. ``llama_state`` is
    the KV cache in pyllama's own layout (csrc/state.c), not llama.cpp's.
    """

    def __init__(self, input_ids: np.ndarray, scores: np.ndarray, n_tokens: int, llama_state: bytes,
                 llama_state_size: int, seed: Optional[int] = None):
        self.input_ids = input_ids
        self.scores = scores
        self.n_tokens = n_tokens
        self.llama_state = llama_state
        self.llama_state_size = llama_state_size
        self.seed = seed

    def __repr__(self) -> str:
        return f"LlamaState(n_tokens={self.n_tokens}, llama_state_size={self.llama_state_size})"


def save_kv(ctx, n_tokens: int) -> bytes:
    """The first n_tokens positions of a C context's KV cache, as bytes."""
    size = lib.pl_state_size(ctx, n_tokens)
    buf = bytearray(size)
    if size == 0 or lib.pl_state_save(ctx, n_tokens, ffi.from_buffer("uint8_t[]", buf), size) != 0:
        raise ValueError(c_error("could not save the state"))
    return bytes(buf)


def load_kv(ctx, n_tokens: int, data) -> None:
    """Write bytes from :func:`save_kv` back into a C context (ValueError if they do not fit it)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"llama_state must be bytes (got {type(data).__name__})")
    data = bytes(data)
    if lib.pl_state_load(ctx, n_tokens, ffi.from_buffer("uint8_t[]", data), len(data)) != 0:
        raise ValueError(f"cannot load this state: {c_error('it does not fit this model')}")
