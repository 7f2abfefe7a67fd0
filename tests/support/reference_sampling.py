"""The numpy sampler: the definition pyllama's C sampler (csrc/sampling.c) is tested against.

``candidate_distribution`` gives the distribution a draw uses, ``(ids, probs)``, for a
:class:`pyllama.sampling.SamplingParams`, written with numpy over the whole vocabulary;
test_sampling.py checks it in turn against a plain-Python loop per definition.
The chain follows llama.cpp's default order:

    logit bias -> penalties -> top-k -> typical -> top-p -> min-p -> temperature -> draw
"""
from __future__ import annotations

import numpy as np

from pyllama.sampling import SamplingParams

__all__ = ["candidate_distribution", "apply_token_mask", "mask_bits", "apply_logit_bias", "apply_penalties"]


def mask_bits(allowed: np.ndarray, n_vocab: int) -> np.ndarray:
    """A token bitmask (32-bit words, bit ``i % 32`` of word ``i // 32``) as n_vocab booleans."""
    words = np.ascontiguousarray(allowed).view(np.uint32)
    return np.unpackbits(words.view(np.uint8), bitorder="little")[:n_vocab].astype(bool)


def apply_token_mask(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """A float32 copy of logits with the tokens the bitmask does not allow at -inf."""
    out = np.array(logits, dtype=np.float32)
    out[~mask_bits(allowed, out.shape[0])] = -np.inf
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x)).astype(np.float64)
    return e / e.sum()


def apply_logit_bias(logits: np.ndarray, logit_bias: dict | None) -> np.ndarray:
    """Return a float32 copy of logits with the biases added."""
    out = np.array(logits, dtype=np.float32)
    for token, bias in (logit_bias or {}).items():
        out[int(token)] += np.float32(bias)
    return out


def apply_penalties(logits: np.ndarray, history, repeat_penalty=1.0, frequency_penalty=0.0,
                    presence_penalty=0.0, penalty_last_n=64) -> np.ndarray:
    """Penalize tokens seen in the last ``penalty_last_n`` ids of ``history`` (in place on a float array)."""
    if penalty_last_n == 0 or len(history) == 0:
        return logits
    if repeat_penalty == 1.0 and frequency_penalty == 0.0 and presence_penalty == 0.0:
        return logits
    window = history if penalty_last_n < 0 else history[-penalty_last_n:]
    ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
    ids_ok = (ids >= 0) & (ids < logits.shape[0])
    ids, counts = ids[ids_ok], counts[ids_ok]
    vals = logits[ids]
    if repeat_penalty != 1.0:
        vals = np.where(vals > 0, vals / repeat_penalty, vals * repeat_penalty)
    vals = vals - counts * frequency_penalty - presence_penalty
    logits[ids] = vals
    return logits


def _order(ids, vals):
    """Positions sorting candidates by decreasing logit, ties by increasing id."""
    return np.lexsort((ids, -vals))


_SORT_LIMIT = 4096  # candidate sets up to this size are returned sorted
_N_BINS = 4096


def _top_prefix(ids, vals, weights, target):
    """Positions of the shortest run of highest logits (in the sorted order:
    decreasing logit, ties by id) whose ``weights`` sum reaches ``target``
    (weights None: count tokens). Returns ``(positions, is_sorted)``.

    Instead of sorting the vocabulary, the logits are binned below the maximum
    (one O(n) pass); every bin above the one where the running weight reaches
    the target lies wholly inside the prefix, and only that boundary bin is sorted.
    """
    n = vals.size
    top = np.max(vals)
    if not np.isfinite(top) or n <= 256:
        w = np.ones(n) if weights is None else weights
        sel = np.arange(n)[_order(ids, vals)]
        reach = np.nonzero(np.cumsum(w[sel]) >= target)[0]
        return sel[:(int(reach[0]) + 1) if reach.size else n], True
    low = max(float(np.min(vals)), float(top) - 64.0)  # -inf logits land in the last bin
    scale = (_N_BINS - 1) / max(float(top) - low, 1e-30)
    bins = np.minimum((top - vals) * scale, _N_BINS - 1).astype(np.intp)  # larger logit, smaller bin
    per_bin = np.bincount(bins, weights=weights, minlength=_N_BINS)
    reach = np.nonzero(np.cumsum(per_bin) >= target)[0]
    b = int(reach[0]) if reach.size else _N_BINS - 1
    w = np.ones(n) if weights is None else weights
    core = np.flatnonzero(bins < b)
    band = np.flatnonzero(bins == b)
    band = band[_order(ids[band], vals[band])]
    need = target - (w[core].sum() if core.size else 0.0)
    hit = np.nonzero(np.cumsum(w[band]) >= need)[0]
    band = band[:(int(hit[0]) + 1) if hit.size else band.size]
    sel = np.concatenate([core, band])
    if sel.size <= _SORT_LIMIT:
        return sel[_order(ids[sel], vals[sel])], True
    return sel, False


def candidate_distribution(logits: np.ndarray, history=(), params: SamplingParams | None = None):
    """The distribution the sampler draws from: ``(ids, probs)``; probs sum to 1.

    When filters leave at most 4096 candidates, ``ids`` are sorted by
    decreasing probability (ties: lower id first); larger sets are left
    unsorted (sorting the whole vocabulary every token would cost more than
    the draw is worth). With temperature <= 0 it is the single greedy token.
    """
    p = params or SamplingParams()
    x = apply_logit_bias(logits, p.logit_bias)
    apply_penalties(x, history, p.repeat_penalty, p.frequency_penalty, p.presence_penalty,
                    p.penalty_last_n)
    n = x.shape[0]
    min_keep = 1  # the C sampler, like llama-cpp-python's chain, keeps at least one token
    if np.isnan(np.max(x)):
        raise ValueError("the logits contain NaN (the model produced invalid numbers)")

    if p.temperature <= 0.0:
        best = int(np.argmax(x))
        return np.array([best], dtype=np.int64), np.array([1.0])

    ids, vals, is_sorted = np.arange(n), x, False

    # top-k: the k highest logits.
    k = int(p.top_k)
    if 0 < k < n:
        k = max(k, min_keep)
        sel, is_sorted = _top_prefix(ids, vals, None, k)
        ids, vals = ids[sel], vals[sel]

    # typical: keep the most "typical" tokens until their mass exceeds typical_p.
    if p.typical_p < 1.0 and ids.size > min_keep:
        probs = _softmax(vals)
        logp = np.log(np.maximum(probs, 1e-300))
        entropy = -np.sum(probs * logp)
        shifted = np.abs(-logp - entropy)
        t_order = np.argsort(shifted, kind="stable")
        cum = np.cumsum(probs[t_order])
        over = np.nonzero(cum > p.typical_p)[0]
        last = (int(over[0]) + 1) if over.size else ids.size
        keep = t_order[:max(last, min_keep)]
        keep = keep[_order(ids[keep], vals[keep])]  # back to decreasing-logit order
        ids, vals, is_sorted = ids[keep], vals[keep], True

    # top-p: smallest set of most probable tokens whose mass reaches top_p.
    if p.top_p < 1.0 and ids.size > min_keep:
        probs = _softmax(vals)
        if is_sorted:
            reach = np.nonzero(np.cumsum(probs) >= p.top_p)[0]
            sel = np.arange(max((int(reach[0]) + 1) if reach.size else ids.size, min_keep))
        else:
            sel, is_sorted = _top_prefix(ids, vals, probs, p.top_p)
            if sel.size < min_keep:
                sel, is_sorted = _top_prefix(ids, vals, None, min_keep)
        ids, vals = ids[sel], vals[sel]

    # min-p: tokens at least min_p times as likely as the best one.
    if p.min_p > 0.0 and ids.size > min_keep:
        threshold = np.max(vals) + np.log(p.min_p)
        if is_sorted:  # a prefix
            last = max(int(np.count_nonzero(vals >= threshold)), min_keep)
            ids, vals = ids[:last], vals[:last]
        else:
            sel = np.flatnonzero(vals >= threshold)
            if sel.size < min_keep:
                sel = _top_prefix(ids, vals, None, min_keep)[0]
            if sel.size <= _SORT_LIMIT:
                sel, is_sorted = sel[_order(ids[sel], vals[sel])], True
            ids, vals = ids[sel], vals[sel]

    probs = _softmax(vals / p.temperature)
    return ids, probs
