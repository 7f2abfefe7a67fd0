"""The C sampler (csrc/sampling.c) against the numpy definition in pyllama.sampling.

``candidate_distribution`` is the reference: it is itself tested against the
plain definitions of each parameter in test_sampling.py. Here the C code must
produce the same candidate set and probabilities, and its draws must follow them.
"""
from __future__ import annotations

import numpy as np
import pytest

from pyllama.sampling import Sampler, SamplingParams, candidate_distribution

CASES = [
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),  # the defaults
    dict(temperature=0.8, top_k=0, top_p=0.95, min_p=0.05),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=0.7, top_k=0, top_p=0.9, min_p=0.0),
    dict(temperature=1.3, top_k=5, top_p=1.0, min_p=0.0),
    dict(temperature=0.5, top_k=2000, top_p=0.5, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2),
    dict(temperature=0.9, top_k=100, top_p=0.99, min_p=0.01, repeat_penalty=1.3, frequency_penalty=0.4,
         presence_penalty=0.2, penalty_last_n=32),
    dict(temperature=0.9, top_k=50, logit_bias={5: 12.0, 7: -3.0, 11: -np.inf}),
    dict(temperature=0.0),
    dict(temperature=0.0, repeat_penalty=2.0),
]


def logits_kinds(n):
    rng = np.random.default_rng(123)
    yield "normal", (rng.normal(size=n) * 3).astype(np.float32)
    peaked = (rng.normal(size=n)).astype(np.float32)
    peaked[17] += 25
    yield "peaked", peaked
    yield "ties", np.round(rng.normal(size=n) * 2).astype(np.float32)  # many exact ties
    with_inf = (rng.normal(size=n) * 3).astype(np.float32)
    with_inf[::7] = -np.inf
    yield "-inf", with_inf
    yield "flat", np.zeros(n, dtype=np.float32)


@pytest.fixture(params=[1, 2, 3], ids=lambda t: f"{t}thr")
def sample_threads(request):
    """pl_sample splits its passes over the vocabulary across this many threads (the
    forward pass's count in real use); every count must give the same answer."""
    from pyllama._core import lib

    lib.pl_set_sample_threads(request.param)
    yield request.param
    lib.pl_set_sample_threads(1)


@pytest.mark.parametrize("n", [300, 49152])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_c_distribution_equals_numpy(case, n, sample_threads):
    params = SamplingParams(**CASES[case])
    history = list(np.random.default_rng(case).integers(0, n, 80))
    for kind, logits in logits_kinds(n):
        c_ids, c_probs = Sampler(params, np.random.default_rng(0)).c_distribution(logits, history)
        ref_ids, ref_probs = candidate_distribution(logits.copy(), history, params)
        if sorted(c_ids.tolist()) != sorted(ref_ids.tolist()):
            # Only allowed on a knife edge: a flat distribution whose running mass hits
            # top_p exactly (285/300 = 0.95), where rounding decides one token either way.
            assert kind == "flat" and abs(len(c_ids) - len(ref_ids)) == 1, (kind, len(c_ids), len(ref_ids))
            k = min(len(c_ids), len(ref_ids))
            assert abs(k / min(n, params.top_k or n) - params.top_p) < 1e-6
            continue
        ref = dict(zip(ref_ids.tolist(), ref_probs.tolist()))
        got = np.array([ref[i] for i in c_ids.tolist()])
        np.testing.assert_allclose(c_probs, got, rtol=1e-5, atol=1e-9, err_msg=kind)
        assert abs(c_probs.sum() - 1.0) < 1e-9


def test_c_draws_follow_the_distribution():
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=1000) * 2).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_k=8, top_p=1.0, min_p=0.0)
    sampler = Sampler(params, np.random.default_rng(1))
    ids, probs = sampler.c_distribution(logits)
    draws = np.array([sampler.sample(logits) for _ in range(20000)])
    counts = np.array([(draws == i).sum() for i in ids])
    assert counts.sum() == len(draws)  # never outside the candidate set
    expected = probs * len(draws)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 30, (chi2, counts, expected)  # 7 degrees of freedom: p < 1e-4 to fail by chance


def test_c_sampler_is_reproducible_and_seed_dependent(sample_threads):
    logits = (np.random.default_rng(3).normal(size=5000) * 2).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)

    def run(seed):
        s = Sampler(params, np.random.default_rng(seed))
        return [s.sample(logits) for _ in range(50)]

    assert run(42) == run(42)
    assert run(42) != run(43)


@pytest.mark.parametrize("n,at", [(100, 3), (49152, 3), (49152, 40000)])  # 40000: the second thread's part
def test_nan_logits_are_an_error(sample_threads, n, at):
    logits = np.zeros(n, dtype=np.float32)
    logits[at] = np.nan
    for temperature in (0.8, 0.0):
        with pytest.raises(ValueError, match="NaN"):
            Sampler(SamplingParams(temperature=temperature), np.random.default_rng(0)).sample(logits)


def test_typical_sampling_falls_back_to_numpy():
    s = Sampler(SamplingParams(typical_p=0.5), np.random.default_rng(0))
    assert not s.uses_c
    logits = (np.random.default_rng(0).normal(size=500)).astype(np.float32)
    ids, _ = candidate_distribution(logits.copy(), (), s.params)
    assert s.sample(logits) in set(ids.tolist())
