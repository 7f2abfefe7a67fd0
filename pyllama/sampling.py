"""Token sampling: turn a logits vector into the next token id.

The work runs in C (``pl_sample`` in csrc/sampling.c, one call per token); this module
holds the parameters, checks them, and keeps the C sampler's buffers. The chain follows
llama.cpp's default order:

    logit bias -> penalties -> top-k -> typical -> top-p -> min-p -> temperature -> draw

Definitions (p = softmax of the current candidates' logits):

* logit_bias: ``logits[id] += bias`` for each ``{id: bias}``.
* repeat_penalty (llama.cpp / CTRL): every token that occurs in the last
  ``penalty_last_n`` tokens has its logit divided by the penalty when
  positive, multiplied by it when negative.
* frequency_penalty / presence_penalty (OpenAI): ``logit -= count * frequency
  + (count > 0) * presence`` with counts over the same window.
* top_k: keep the k highest logits (k <= 0: keep all).
* typical_p (locally typical sampling): keep the tokens whose surprisal
  ``-log p`` is closest to the entropy, until their mass exceeds typical_p.
* top_p (nucleus): keep the smallest set of most probable tokens whose mass
  reaches top_p.
* min_p: keep tokens with ``p >= min_p * max(p)``.
* temperature: divide the logits by it; temperature <= 0 means greedy
  (argmax after bias and penalties; the other filters do not matter).

Each filter keeps at least one token. tests/support/reference_sampling.py is the same chain
written in numpy, the definition the C code is tested against.
"""
from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass, field

import numpy as np

from .errors import c_error

__all__ = ["SamplingParams", "Sampler", "make_rng", "log_softmax"]


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: dict | None = field(default=None)

    def validate(self) -> None:
        """Check every setting, naming the first bad one (TypeError for a wrong type,
        ValueError for a bad value), so a caller's mistake is never blamed on the model."""
        def bad(name, value, why):
            raise ValueError(f"{name}={value!r}: {why}")

        for name in ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "frequency_penalty",
                     "presence_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number (got {type(value).__name__} {value!r})")
            if not math.isfinite(value):
                bad(name, value, "must be a finite number")
        for name in ("top_k", "penalty_last_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an integer (got {type(value).__name__} {value!r})")
        if not 0.0 <= self.top_p <= 1.0:
            bad("top_p", self.top_p, "must be in [0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", self.min_p, "must be in [0, 1]")
        if not 0.0 <= self.typical_p <= 1.0:
            bad("typical_p", self.typical_p, "must be in [0, 1]")
        if not self.repeat_penalty > 0.0:
            bad("repeat_penalty", self.repeat_penalty, "must be > 0 (1.0 disables it)")
        if self.penalty_last_n < -1:
            bad("penalty_last_n", self.penalty_last_n, "must be >= -1 (-1: whole history, 0: off)")
        if self.logit_bias is not None and not isinstance(self.logit_bias, dict):
            raise TypeError(f"logit_bias must be a dict of token id -> bias (got {type(self.logit_bias).__name__})")


def make_rng(seed) -> random.Random:
    """The generator a Sampler draws with; seed None or negative picks a random seed.

    Python's Mersenne Twister, not numpy's Generator: it only seeds the C sampler's own
    generator (and draws for the numpy fallback), and importing numpy.random would load
    hashlib and OpenSSL into every generating process (megabytes resident; bench/RESULTS.md, "Memory").
    A numpy Generator passed to Sampler works as well."""
    if seed is None:
        return random.Random()
    seed = int(seed)
    return random.Random() if seed < 0 else random.Random(seed)


def _bias_arrays(logit_bias: dict | None, n_vocab: int):
    if not logit_bias:
        return None
    ids = np.fromiter((int(k) for k in logit_bias.keys()), dtype=np.int64, count=len(logit_bias))
    vals = np.fromiter((float(v) for v in logit_bias.values()), dtype=np.float64, count=len(logit_bias))
    if np.isnan(vals).any():
        raise ValueError("logit_bias values must be numbers (got NaN)")
    if ids.size and (ids.min() < 0 or ids.max() >= n_vocab):
        bad = ids[(ids < 0) | (ids >= n_vocab)][0]
        raise ValueError(f"logit_bias token id {int(bad)} is outside the vocabulary (0..{n_vocab - 1})")
    return ids, vals


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = np.max(x)
    shifted = x - m
    return shifted - np.log(np.sum(np.exp(shifted)))


_CORE: tuple = ()


def _core():
    """(ffi, lib) of the C core, imported on first use (this module also serves without it)."""
    global _CORE
    if not _CORE:
        from ._core import ffi, lib

        _CORE = (ffi, lib)
    return _CORE


def _draw_state(rng) -> int:
    """63 random bits from a random.Random or a numpy Generator."""
    if isinstance(rng, random.Random):
        return rng.getrandbits(63)
    return int(rng.integers(0, 2**63))


class Sampler:
    """Draws token ids with a given :class:`SamplingParams` and random generator (see :func:`make_rng`).

    The draw runs in C (``pl_sample`` in csrc/sampling.c: one call per token, no
    sort of the vocabulary).
    """

    def __init__(self, params: SamplingParams | None = None, rng=None):
        self.params = params or SamplingParams()
        self.params.validate()
        self.rng = rng if rng is not None else make_rng(None)
        self._c = None  # buffers for the C sampler, made on first use

    @property
    def untruncated(self) -> bool:
        """Whether draws come from the whole distribution (greedy, or temperature alone):
        no top-k, typical, top-p or min-p cut."""
        p = self.params
        return p.temperature <= 0.0 or (p.top_k <= 0 and p.typical_p >= 1.0 and p.top_p >= 1.0 and p.min_p <= 0.0)

    def sample(self, logits, history=(), allowed=None) -> int:
        """Draw a token. ``allowed``: None, or a token bitmask (uint32 words, bit
        ``i % 32`` of word ``i // 32`` for token i, as llguidance fills it): only tokens
        whose bit is set can be drawn."""
        return self._c_sample(logits, history, draw=True, allowed=allowed)[0]

    def distribution(self, logits, history=(), allowed=None):
        """The distribution a draw uses, ``(ids, probs)``, without drawing; highest first
        after a top-k, typical or top-p cut."""
        _, ids, probs = self._c_sample(logits, history, draw=False, allowed=allowed)
        return ids, probs

    def _setup_c(self, n_vocab: int):
        ffi, _ = _core()
        p = self.params
        bias = _bias_arrays(p.logit_bias, n_vocab)
        c = {
            "n": n_vocab,
            "params": ffi.new("pl_sampler *", {
                # any top_k at or above the vocabulary keeps it all; C's int holds those up to 2^31-1
                "temperature": p.temperature, "top_k": max(-1, min(int(p.top_k), 2**31 - 1)),
                "typical_p": p.typical_p, "top_p": p.top_p, "min_p": p.min_p,
                "repeat_penalty": p.repeat_penalty, "frequency_penalty": p.frequency_penalty,
                "presence_penalty": p.presence_penalty}),
            "work": np.empty(n_vocab, dtype=np.float32),
            "cand": np.empty(n_vocab, dtype=np.int32),
            "probs": np.empty(n_vocab, dtype=np.float64),
            "n_cand": ffi.new("int *"),
            # the C generator's state is drawn from the numpy one, so seeds stay reproducible
            "rng": ffi.new("uint64_t *", _draw_state(self.rng)),
            "bias_ids": np.ascontiguousarray(bias[0], dtype=np.int32) if bias else np.zeros(0, np.int32),
            "bias_vals": np.ascontiguousarray(bias[1], dtype=np.float32) if bias else np.zeros(0, np.float32),
            "penalize": p.penalty_last_n != 0 and (p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0
                                                   or p.presence_penalty != 0.0),
            "logits": None,  # the last float32 logits array seen, and its cffi pointer
            "logits_p": None,
            "mask": None,  # the same for the last token bitmask
            "mask_p": None,
        }
        for k, ctype in (("work", "float[]"), ("cand", "int32_t[]"), ("probs", "double[]"),
                         ("bias_ids", "int32_t[]"), ("bias_vals", "float[]")):
            c[k + "_p"] = ffi.from_buffer(ctype, c[k])
        self._c = c
        return c

    def _c_sample(self, logits, history, draw: bool, allowed=None):
        ffi, lib = _core()
        c = self._c
        if c is not None and logits is c["logits"]:  # decode: the same array every step
            x, n, x_p = logits, c["n"], c["logits_p"]
        else:
            x = np.ascontiguousarray(logits, dtype=np.float32)
            n = x.shape[0]
            if c is None or c["n"] != n:
                c = self._setup_c(n)
            x_p = ffi.from_buffer("float[]", x)
            if x is logits:  # a caller's float32 array: its address stays, remember it
                c["logits"], c["logits_p"] = logits, x_p
        recent = ffi.NULL
        n_recent = 0
        if c["penalize"] and len(history):
            last_n = self.params.penalty_last_n
            window = history if last_n < 0 else history[-last_n:]
            if type(window) is not list or len(window) > 4096:
                window = np.ascontiguousarray(window, dtype=np.int32)
                recent = ffi.from_buffer("int32_t[]", window)
            else:  # cffi converts a short list of ints itself, faster than through numpy
                recent = window
            n_recent = len(window)
        mask = ffi.NULL
        if allowed is None:
            pass
        elif allowed is c["mask"]:  # a grammar's mask: the same array every step
            mask = c["mask_p"]
        else:
            if allowed.dtype.itemsize != 4 or allowed.size != (n + 31) // 32 or not allowed.flags.c_contiguous:
                raise ValueError(f"allowed must be a contiguous array of {(n + 31) // 32} 32-bit words "
                                 f"(got {allowed.size} of {allowed.dtype})")
            mask = ffi.cast("const uint32_t *", ffi.from_buffer(allowed))
            c["mask"], c["mask_p"] = allowed, mask
        args = (c["params"], recent, n_recent, c["bias_ids_p"], c["bias_vals_p"], len(c["bias_ids"]), mask,
                c["rng"] if draw else ffi.NULL, c["work_p"], c["cand_p"], c["probs_p"], c["n_cand"])
        try:
            token = lib.pl_sample(x_p, n, *args)
        except OverflowError:  # a history id beyond int32 (the C side ignores ids outside the vocabulary)
            window = np.clip(np.asarray(window, dtype=np.int64), -1, 2**31 - 1).astype(np.int32)
            token = lib.pl_sample(x_p, n, args[0], ffi.from_buffer("int32_t[]", window), n_recent, *args[3:])
        if token < 0:
            raise ValueError(c_error("the sampler failed"))
        if draw:
            return int(token), None, None
        k = c["n_cand"][0]
        return int(token), c["cand"][:k].astype(np.int64), c["probs"][:k].copy()
