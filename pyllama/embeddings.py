"""Pooling final hidden states into one embedding per text (``Llama.embed``).

The pooling types are GGUF's ``{arch}.pooling_type`` values, as llama.cpp numbers them.
"""
from __future__ import annotations

import numpy as np

POOLING_NONE, POOLING_MEAN, POOLING_CLS, POOLING_LAST = 0, 1, 2, 3


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v.astype(np.float64)))
    return v / norm if norm > 0 else v


def pool(hidden: np.ndarray, pooling: int, normalize: bool):
    """One vector (list of floats) from hidden states (n_tokens, dim), or with
    POOLING_NONE one per token (list of lists)."""
    if pooling == POOLING_NONE:
        rows = [_unit(r) if normalize else r for r in hidden]
        return [r.astype(float).tolist() for r in rows]
    if pooling == POOLING_MEAN:
        v = hidden.astype(np.float64).mean(axis=0)
    elif pooling == POOLING_CLS:
        v = hidden[0].astype(np.float64)
    elif pooling == POOLING_LAST:
        v = hidden[-1].astype(np.float64)
    else:
        raise ValueError(f"pooling type {pooling} is not supported (mean=1, cls=2, last=3, none=0)")
    return (_unit(v) if normalize else v).tolist()
