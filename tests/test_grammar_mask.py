"""The token bitmask of constrained decoding, applied inside the C sampler (pl_sample's
``allowed``), against independent definitions.

Reference: the numpy sampler (``candidate_distribution`` in support/reference_sampling.py, itself
tested against the plain definitions in test_sampling.py) run on logits where the banned tokens were set
to -inf by a loop over the bits written here, not by pyllama's own mask helpers. With
the mask switched off (None) or allowing everything, the C sampler must give exactly
what it gave before: the same distribution and the same draws for a seed.
"""
from __future__ import annotations

import numpy as np
import pytest

from pyllama.sampling import Sampler, SamplingParams
from support.reference_sampling import candidate_distribution
from test_sampling import CASES, logits_kinds


@pytest.fixture(params=[1, 2], ids=lambda t: f"{t}thr")
def sample_threads(request):
    """pl_sample splits its passes over this many threads; the mask must hold for each split."""
    from pyllama._core import lib

    lib.pl_set_sample_threads(request.param)
    yield request.param
    lib.pl_set_sample_threads(1)


def words_from_allowed(allowed: np.ndarray) -> np.ndarray:
    """bool per token -> uint32 words, bit i % 32 of word i // 32 (llguidance's layout), by hand."""
    n = allowed.size
    bits = np.zeros(((n + 31) // 32) * 32, dtype=np.uint64)
    bits[:n] = allowed
    return (bits.reshape(-1, 32) << np.arange(32, dtype=np.uint64)).sum(axis=1).astype(np.uint32)


def masked_reference(logits, allowed):
    out = np.array(logits, dtype=np.float32)
    out[~allowed] = -np.inf
    return out


def mask_kinds(n):
    rng = np.random.default_rng(n)
    yield "sparse", rng.random(n) < 0.01
    yield "half", rng.random(n) < 0.5
    single = np.zeros(n, bool)
    single[n - 1] = True  # the last token, in the last (partial) word
    yield "single", single
    words = np.zeros(n, bool)  # whole words on and off, and a run across a word boundary
    words[64:128] = True
    words[200:237] = True
    yield "words", words
    most = np.ones(n, bool)
    most[rng.integers(0, n, 20)] = False
    yield "all-but-20", most


@pytest.mark.parametrize("n", [301, 49152])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_masked_distribution_equals_reference(case, n, sample_threads):
    params = SamplingParams(**CASES[case])
    history = list(np.random.default_rng(case).integers(0, n, 80))
    for kind, logits in logits_kinds(n):
        for mkind, allowed in mask_kinds(n):
            x = masked_reference(logits, allowed)
            if not np.isfinite(x).any() or np.isnan(x).any():
                continue
            words = words_from_allowed(allowed)
            c_ids, c_probs = Sampler(params, np.random.default_rng(0)).distribution(logits, history, words)
            assert allowed[c_ids].all(), (kind, mkind)
            ref_ids, ref_probs = candidate_distribution(x, history, params)
            keep = ref_probs > 0  # the reference keeps -inf tokens at probability 0; C drops them
            ref = dict(zip(ref_ids[keep].tolist(), ref_probs[keep].tolist()))
            if sorted(c_ids.tolist()) != sorted(ref):
                # the knife edge of test_c_distribution_equals_numpy_on_large_vocabularies: a flat top_p boundary
                assert kind == "flat" and abs(len(c_ids) - len(ref)) == 1, (kind, mkind, len(c_ids), len(ref))
                continue
            got = np.array([ref[i] for i in c_ids.tolist()])
            np.testing.assert_allclose(c_probs, got, rtol=1e-5, atol=1e-9, err_msg=f"{kind}/{mkind}")


@pytest.mark.parametrize("case", range(len(CASES)))
def test_all_allowed_mask_and_no_mask_change_nothing(case, sample_threads):
    n = 49152
    params = SamplingParams(**CASES[case])
    everything = words_from_allowed(np.ones(n, bool))
    for kind, logits in logits_kinds(n):
        before = logits.copy()
        a = Sampler(params, np.random.default_rng(5))
        b = Sampler(params, np.random.default_rng(5))
        c = Sampler(params, np.random.default_rng(5))
        draws_a = [a.sample(logits) for _ in range(20)]
        draws_b = [b.sample(logits, allowed=everything) for _ in range(20)]
        draws_c = [c.sample(logits, allowed=None) for _ in range(20)]
        assert draws_a == draws_b == draws_c, kind
        np.testing.assert_array_equal(logits, before)  # the caller's logits are never written


def test_draws_stay_in_the_mask(sample_threads):
    rng = np.random.default_rng(11)
    n = 49152
    logits = (rng.normal(size=n) * 3).astype(np.float32)
    logits[:100] += 20  # the model's favourites are all banned
    allowed = np.zeros(n, bool)
    allowed[rng.integers(100, n, 50)] = True
    words = words_from_allowed(allowed)
    for params in (SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0), SamplingParams(),
                   SamplingParams(temperature=0.0), SamplingParams(typical_p=0.9)):
        s = Sampler(params, np.random.default_rng(2))
        assert all(allowed[s.sample(logits, allowed=words)] for _ in range(300))


def test_a_mask_that_allows_nothing_is_an_error():
    logits = np.zeros(1000, np.float32)
    with pytest.raises(ValueError, match="grammar allows no token"):
        Sampler(SamplingParams(), np.random.default_rng(0)).sample(logits, allowed=np.zeros(32, np.uint32))


def test_a_mask_of_the_wrong_size_is_refused():
    logits = np.zeros(1000, np.float32)
    with pytest.raises(ValueError, match="32-bit words"):
        Sampler(SamplingParams(), np.random.default_rng(0)).sample(logits, allowed=np.zeros(31, np.uint32))


def test_bias_cannot_revive_a_banned_token():
    logits = np.zeros(64, np.float32)
    allowed = np.zeros(64, bool)
    allowed[5] = True
    params = SamplingParams(temperature=1.0, logit_bias={7: float("inf"), 9: 50.0})
    s = Sampler(params, np.random.default_rng(0))
    assert {s.sample(logits, allowed=words_from_allowed(allowed)) for _ in range(50)} == {5}
