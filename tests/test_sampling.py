"""The sampler against independent references.

Two implementations are checked: pyllama's C sampler (csrc/sampling.c, through
``Sampler``) and the numpy one in support/reference_sampling.py. Both are compared with a
plain-Python loop per definition (small vocabularies; it follows the published
definitions: llama.cpp's sampler chain and penalty rule, OpenAI's frequency/presence
penalties, nucleus, min-p and locally typical sampling), and hand-worked examples pin
each definition down. On large vocabularies, where the loop is too slow, the C sampler
is checked against the numpy one (itself checked against the loop above), for every
split of its passes over threads; and its draws must follow its distribution.
"""
import math
from collections import Counter

import numpy as np
import pytest

from pyllama.sampling import Sampler, SamplingParams, log_softmax, make_rng
from support.reference_sampling import candidate_distribution

# ------------------------------------------------------------------ reference (plain Python)


def _softmax(values):
    m = max(values)
    e = [math.exp(v - m) for v in values]
    s = sum(e)
    return [x / s for x in e]


def reference_distribution(logits, history=(), temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
                           typical_p=1.0, repeat_penalty=1.0, frequency_penalty=0.0,
                           presence_penalty=0.0, penalty_last_n=64, logit_bias=None):
    """Dense probability vector the sampler should draw from."""
    n = len(logits)
    x = [float(v) for v in logits]
    for tid, b in (logit_bias or {}).items():
        x[tid] += b
    if penalty_last_n != 0 and history:
        window = list(history) if penalty_last_n < 0 else list(history)[-penalty_last_n:]
        for tid, count in Counter(window).items():
            v = x[tid]
            if v > 0:
                v = v / repeat_penalty
            else:
                v = v * repeat_penalty
            v -= count * frequency_penalty + presence_penalty
            x[tid] = v
    dense = [0.0] * n
    if temperature <= 0:
        best = max(range(n), key=lambda i: (x[i], -i))
        dense[best] = 1.0
        return np.array(dense)
    cand = sorted(range(n), key=lambda i: (-x[i], i))  # by logit, ties: lower id first
    if 0 < top_k < n:
        cand = cand[:top_k]
    if typical_p < 1.0 and len(cand) > 1:
        p = _softmax([x[i] for i in cand])
        entropy = -sum(q * math.log(q) for q in p if q > 0)
        score = [abs(-math.log(q) - entropy) for q in p]
        order = sorted(range(len(cand)), key=lambda j: score[j])
        kept, mass = [], 0.0
        for j in order:
            kept.append(j)
            mass += p[j]
            if mass > typical_p:
                break
        cand = [cand[j] for j in sorted(kept)]
    if top_p < 1.0 and len(cand) > 1:
        p = _softmax([x[i] for i in cand])
        mass, keep = 0.0, len(cand)
        for j, q in enumerate(p):
            mass += q
            if mass >= top_p:
                keep = j + 1
                break
        cand = cand[:keep]
    if min_p > 0.0 and len(cand) > 1:
        p = _softmax([x[i] for i in cand])
        pmax = max(p)
        cand = [i for i, q in zip(cand, p) if q >= min_p * pmax] or cand[:1]
    p = _softmax([x[i] / temperature for i in cand])
    for i, q in zip(cand, p):
        dense[i] = q
    return np.array(dense)


@pytest.fixture(params=["c", "numpy"])
def impl(request):
    """Which sampler gives the distribution: pyllama's C one, or the numpy reference."""
    return request.param


def sampler_dense(impl, logits, history=(), **kw):
    """The distribution as a dense vector over the vocabulary."""
    logits = np.asarray(logits, dtype=np.float32)
    if impl == "c":
        ids, probs = Sampler(SamplingParams(**kw), make_rng(0)).distribution(logits, history)
    else:
        ids, probs = candidate_distribution(logits, history, SamplingParams(**kw))
        if ids.size <= 4096 and ids.size < len(logits):  # narrowed by a filter: sorted
            assert np.all(np.diff(probs) <= 1e-12), "candidates must come sorted by probability"
    assert probs.sum() == pytest.approx(1.0)
    dense = np.zeros(len(logits))
    dense[ids] = probs
    return dense


def random_logits(seed, n=60, scale=3.0):
    return np.random.default_rng(seed).normal(0, scale, n).astype(np.float32)


OFF = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0)

# ------------------------------------------------------------------ each parameter vs the reference


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("params", [
    dict(OFF),
    dict(OFF, temperature=0.5),
    dict(OFF, temperature=2.0),
    dict(OFF, temperature=0.0),
    dict(OFF, top_k=1),
    dict(OFF, top_k=7),
    dict(OFF, top_p=0.5),
    dict(OFF, top_p=0.9),
    dict(OFF, min_p=0.1),
    dict(OFF, min_p=0.5),
    dict(OFF, typical_p=0.5),
    dict(OFF, typical_p=0.9),
    dict(OFF, repeat_penalty=1.3),
    dict(OFF, repeat_penalty=0.7),
    dict(OFF, frequency_penalty=0.8),
    dict(OFF, presence_penalty=1.5),
    dict(OFF, repeat_penalty=1.2, frequency_penalty=0.3, presence_penalty=0.4, penalty_last_n=5),
    dict(OFF, repeat_penalty=1.5, penalty_last_n=-1),
    dict(OFF, repeat_penalty=1.5, penalty_last_n=0),
    dict(OFF, logit_bias={3: 5.0, 10: -100.0, 0: 1.5}),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),  # llama-cpp-python defaults
    dict(temperature=0.7, top_k=20, top_p=0.8, min_p=0.1, typical_p=0.95, repeat_penalty=1.1,
         frequency_penalty=0.2, presence_penalty=0.1, logit_bias={5: 2.0}),
    dict(temperature=0.0, repeat_penalty=3.0, logit_bias={1: 0.5}),
])
def test_distribution_matches_reference(impl, seed, params):
    logits = random_logits(seed)
    history = list(np.random.default_rng(100 + seed).integers(0, 60, 30))
    got = sampler_dense(impl, logits, history, **params)
    ref = reference_distribution(logits, history, **params)
    np.testing.assert_array_equal(got > 1e-30, ref > 1e-30)  # the same candidate set
    np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("params", [
    dict(OFF, top_p=0.9),
    dict(OFF, top_p=0.5, min_p=0.3),
    dict(OFF, min_p=0.2),
    dict(OFF, top_k=100, top_p=0.8),
    dict(temperature=0.8, top_k=0, top_p=0.95, min_p=0.05, repeat_penalty=1.3),
])
@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_large_vocabulary_matches_reference(impl, params, scale):
    # Big flat distributions take the sampler's paths that avoid sorting the vocabulary.
    logits = random_logits(7, n=30000, scale=scale)
    history = list(range(0, 30000, 500))
    got = sampler_dense(impl, logits, history, **params)
    ref = reference_distribution(logits, history, **params)
    np.testing.assert_array_equal(got > 1e-30, ref > 1e-30)  # the same candidate set
    np.testing.assert_allclose(got, ref, atol=1e-6)


# ------------------------------------------------------------------ hand-worked definitions


def probs_logits(*p):
    return np.log(np.array(p, dtype=np.float32))


def test_greedy_is_argmax():
    logits = random_logits(9)
    for _ in range(3):
        assert Sampler(SamplingParams(temperature=0.0)).sample(logits) == int(np.argmax(logits))


def test_temperature_scales_logits(impl):
    logits = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    got = sampler_dense(impl, logits, **dict(OFF, temperature=0.5))
    e = np.exp(np.array([2.0, 4.0, 6.0]) - 6.0)
    np.testing.assert_allclose(got, e / e.sum(), rtol=1e-6)


def test_top_k_keeps_k_largest(impl):
    logits = np.array([0.1, 5.0, 3.0, 4.0, -1.0], dtype=np.float32)
    got = sampler_dense(impl, logits, **dict(OFF, top_k=2))
    assert set(np.nonzero(got)[0]) == {1, 3}


def test_top_p_smallest_set_reaching_p(impl):
    logits = probs_logits(0.5, 0.3, 0.15, 0.05)
    assert set(np.nonzero(sampler_dense(impl, logits, **dict(OFF, top_p=0.75)))[0]) == {0, 1}
    assert set(np.nonzero(sampler_dense(impl, logits, **dict(OFF, top_p=0.79)))[0]) == {0, 1}
    assert set(np.nonzero(sampler_dense(impl, logits, **dict(OFF, top_p=0.81)))[0]) == {0, 1, 2}
    assert set(np.nonzero(sampler_dense(impl, logits, **dict(OFF, top_p=0.1)))[0]) == {0}
    got = sampler_dense(impl, logits, **dict(OFF, top_p=0.75))
    np.testing.assert_allclose(got[:2], [0.625, 0.375], rtol=1e-5)


def test_min_p_relative_to_best(impl):
    logits = probs_logits(0.4, 0.3, 0.2, 0.1)
    got = sampler_dense(impl, logits, **dict(OFF, min_p=0.45))
    assert set(np.nonzero(got)[0]) == {0, 1, 2}  # 0.2 >= 0.45 * 0.4
    got = sampler_dense(impl, logits, **dict(OFF, min_p=0.6))
    assert set(np.nonzero(got)[0]) == {0, 1}


def test_typical_keeps_tokens_near_entropy(impl):
    # p = (0.6, 0.2, 0.1, 0.1): entropy H = 1.0889 nats; surprisals 0.511, 1.609, 2.303, 2.303;
    # |surprisal - H| ranks 0.2 (0.52) before 0.6 (0.578) before the 0.1s (1.21).
    logits = probs_logits(0.6, 0.2, 0.1, 0.1)
    assert set(np.nonzero(sampler_dense(impl, logits, **dict(OFF, typical_p=0.15)))[0]) == {1}
    assert set(np.nonzero(sampler_dense(impl, logits, **dict(OFF, typical_p=0.5)))[0]) == {0, 1}


def test_repeat_penalty_divides_positive_multiplies_negative(impl):
    logits = np.array([2.0, -2.0, 1.0], dtype=np.float32)
    got = sampler_dense(impl, logits, [0, 1, 1], **dict(OFF, repeat_penalty=2.0))
    e = np.exp(np.array([1.0, -4.0, 1.0]))
    np.testing.assert_allclose(got, e / e.sum(), rtol=1e-6)


def test_frequency_and_presence_penalties(impl):
    logits = np.zeros(3, dtype=np.float32)
    got = sampler_dense(impl, logits, [0, 0, 0, 1], **dict(OFF, frequency_penalty=0.5, presence_penalty=1.0))
    e = np.exp(np.array([-1.5 - 1.0, -0.5 - 1.0, 0.0]))
    np.testing.assert_allclose(got, e / e.sum(), rtol=1e-6)


def test_penalty_window_is_last_n(impl):
    logits = np.zeros(3, dtype=np.float32)
    got = sampler_dense(impl, logits, [0, 1, 2, 2], **dict(OFF, presence_penalty=1.0, penalty_last_n=2))
    assert got[0] == pytest.approx(got[1]) and got[2] < got[0]


def test_logit_bias_can_ban_and_force():
    logits = random_logits(3)
    best = int(np.argmax(logits))
    assert Sampler(SamplingParams(temperature=0, logit_bias={best: -math.inf})).sample(logits) != best
    assert Sampler(SamplingParams(temperature=1.0, logit_bias={7: 1000.0})).sample(logits) == 7


def test_min_keep_one_survives_everything(impl):
    logits = np.array([0.0, 0.0, 0.0], dtype=np.float32)
    got = sampler_dense(impl, logits, temperature=1.0, top_k=1, top_p=0.01, min_p=1.0, typical_p=0.01)
    assert got.sum() == pytest.approx(1.0) and np.count_nonzero(got) == 1


# ------------------------------------------------------------------ draws follow the distribution


def test_draws_follow_distribution():
    logits = random_logits(11, n=12, scale=1.0)
    params = SamplingParams(temperature=0.9, top_k=8, top_p=0.95, min_p=0.02)
    sampler = Sampler(params, make_rng(1234))
    n = 20000
    draws = np.array([sampler.sample(logits) for _ in range(n)])
    freq = np.bincount(draws, minlength=12) / n
    expect = sampler_dense("numpy", logits, temperature=0.9, top_k=8, top_p=0.95, min_p=0.02)
    sigma = np.sqrt(expect * (1 - expect) / n)
    assert np.all(np.abs(freq - expect) <= 5 * sigma + 1e-12)
    assert np.all(freq[expect == 0] == 0)


def test_seeded_generators_reproduce():
    logits = random_logits(5)
    a = [Sampler(SamplingParams(temperature=1.0), make_rng(42)).sample(logits) for _ in range(1)]
    s1, s2 = Sampler(SamplingParams(temperature=1.5, top_k=0), make_rng(42)), \
        Sampler(SamplingParams(temperature=1.5, top_k=0), make_rng(42))
    assert [s1.sample(logits) for _ in range(50)] == [s2.sample(logits) for _ in range(50)]
    s3 = Sampler(SamplingParams(temperature=1.5, top_k=0), make_rng(43))
    s1 = Sampler(SamplingParams(temperature=1.5, top_k=0), make_rng(42))
    assert [s1.sample(logits) for _ in range(50)] != [s3.sample(logits) for _ in range(50)]
    assert a


def test_log_softmax():
    x = random_logits(2)
    ref = np.log(np.exp(x.astype(np.float64)) / np.exp(x.astype(np.float64)).sum())
    np.testing.assert_allclose(log_softmax(x), ref, atol=1e-9)


@pytest.mark.parametrize("bad", [dict(top_p=1.5), dict(min_p=-0.1), dict(typical_p=2.0),
                                 dict(repeat_penalty=0.0), dict(temperature=float("nan"))])
def test_invalid_params(bad):
    with pytest.raises(ValueError):
        Sampler(SamplingParams(**bad))


# ------------------------------------------------------------------ C against numpy, large vocabularies

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
    # typical_p: a mass no flat distribution reaches exactly (k/300, k/40, k/49152)
    dict(temperature=0.9, top_k=40, typical_p=0.537, top_p=0.95, min_p=0.05),
    dict(temperature=1.0, top_k=0, typical_p=0.8725, top_p=1.0, min_p=0.0),
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
def test_c_distribution_equals_numpy_on_large_vocabularies(case, n, sample_threads):
    params = SamplingParams(**CASES[case])
    history = list(np.random.default_rng(case).integers(0, n, 80))
    for kind, logits in logits_kinds(n):
        c_ids, c_probs = Sampler(params, np.random.default_rng(0)).distribution(logits, history)
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
    ids, probs = sampler.distribution(logits)
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
