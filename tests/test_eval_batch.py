"""pl_eval_batch / pyllama.batch.eval_batch: several sequences (forks with caches of
their own) advanced in one forward pass.

References: the independent float64 numpy forward pass (tests/support/reference.py), each
sequence's logits at its last position of the batch; and each sequence evaluated alone
with eval() on the scalar kernel path, where batching must change nothing at all
(every token's arithmetic is the same whatever else is in the batch)."""
from __future__ import annotations

import numpy as np
import pytest

from support import reference

pyllama = pytest.importorskip("pyllama", reason="pyllama is not importable")
from pyllama import ContextOverflowError, Llama  # noqa: E402
from pyllama._core import ffi, lib  # noqa: E402
from pyllama.batch import eval_batch  # noqa: E402

FLOAT_TOL = 1e-4


def _open(path, n_ctx=64, **kw):
    kw.setdefault("n_threads", 2)
    return Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, type_k="f32", type_v="f32", **kw)


def _eval_in_rounds(llms, seqs):
    """Three eval_batch rounds over sequences of 7, 3 and 11 tokens: a prompt chunk of one
    sequence riding with decode tokens of the others."""
    cuts = [(4, 6, 7), (1, 2, 3), (8, 10, 11)]
    prev = [0, 0, 0]
    for r in range(3):
        eval_batch([(llm, s[prev[i]:cuts[i][r]]) for i, (llm, s) in enumerate(zip(llms, seqs))])
        prev = [cuts[i][r] for i in range(3)]


def _seqs(n_vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_vocab, n).tolist() for n in lengths]


@pytest.fixture
def scalar_isa():
    old = lib.pl_current_isa()
    lib.pl_set_isa(lib.PL_ISA_SCALAR)
    yield
    lib.pl_set_isa(old)


def test_batch_of_prompt_and_decode_tokens_matches_numpy_reference(tiny_model_factory):
    path = tiny_model_factory(wtype="F32", n_heads=4, n_kv_heads=2)
    base = _open(path)
    forks = [base.fork() for _ in range(3)]
    seqs = _seqs(base.n_vocab(), [5, 9, 4, 13], seed=1)
    llms = [base] + forks
    # round 1: every prompt but its last 1..3 tokens (different lengths in one pass)
    eval_batch([(llm, s[:-(1 + i % 3)]) for i, (llm, s) in enumerate(zip(llms, seqs))])
    # round 2: the rest (a decode token next to a few-token chunks)
    eval_batch([(llm, s[-(1 + i % 3):]) for i, (llm, s) in enumerate(zip(llms, seqs))])
    model = reference.ReferenceModel(str(path))
    for llm, s in zip(llms, seqs):
        assert llm.n_tokens == len(s) and list(llm.input_ids[:llm.n_tokens]) == s
        want = reference.forward(model, s)[-1]
        assert reference.rel_err(llm.logits, want) < FLOAT_TOL


@pytest.mark.parametrize("wtype", ["F32", "Q8_0", "Q4_1"])
def test_batch_equals_each_sequence_alone_on_the_scalar_path(tiny_model_factory, scalar_isa, wtype):
    path = tiny_model_factory(wtype=wtype, n_heads=4, n_kv_heads=2)
    base = _open(path)
    alone = _open(path)
    forks = [base.fork() for _ in range(2)]
    llms = [base] + forks
    seqs = _seqs(base.n_vocab(), [7, 3, 11], seed=2)
    _eval_in_rounds(llms, seqs)
    for llm, s in zip(llms, seqs):
        alone.reset()
        alone.eval(s)
        np.testing.assert_array_equal(llm.logits, alone.logits)


def _raw_batch(ctxs, tokens, pos, want=None, n_vocab=0):
    n = len(tokens)
    want_arr = ffi.NULL if want is None else ffi.new("int8_t[]", want)
    rows = n if want is None else sum(want)
    out = np.empty((max(rows, 1), n_vocab), dtype=np.float32)
    rc = lib.pl_eval_batch(ffi.new("pl_context *[]", ctxs), ffi.new("int32_t[]", tokens), ffi.new("int32_t[]", pos),
                           n, want_arr, ffi.from_buffer("float[]", out))
    return rc, out[:rows], ffi.string(lib.pl_last_error()).decode()


def test_a_context_twice_in_one_call_and_rows_asked_for(tiny_model_factory, scalar_isa):
    path = tiny_model_factory(wtype="F32", n_heads=4, n_kv_heads=2)
    a, b = _open(path), _open(path)
    b2 = a.fork()
    nv = a.n_vocab()
    s1, s2 = _seqs(nv, [4, 3], seed=3)
    # interleaved: s1[0], s2[0], s1[1], s2[1], s2[2], s1[2], s1[3]; logits for three rows
    ctxs = [b2._ctx, a._ctx, b2._ctx, a._ctx, a._ctx, b2._ctx, b2._ctx]
    toks = [s1[0], s2[0], s1[1], s2[1], s2[2], s1[2], s1[3]]
    pos = [0, 0, 1, 1, 2, 2, 3]
    want = [0, 1, 0, 0, 1, 1, 0]
    rc, rows, err = _raw_batch(ctxs, toks, pos, want, nv)
    assert rc == 0, err
    b.eval(s2, logits_all=True)
    np.testing.assert_array_equal(rows[0], b.eval_logits[0])
    np.testing.assert_array_equal(rows[1], b.eval_logits[2])
    b.reset()
    b.eval(s1, logits_all=True)
    np.testing.assert_array_equal(rows[2], b.eval_logits[2])


def test_bad_batches_are_refused_with_clear_errors(tiny_model_factory):
    path = tiny_model_factory(wtype="F32", n_heads=4, n_kv_heads=2)
    a = _open(path, n_ctx=16)
    f = a.fork()
    other = _open(path, n_ctx=32)
    nv = a.n_vocab()
    cases = [
        ([a._ctx], [nv], [0], "outside the vocabulary"),
        ([a._ctx], [-1], [0], "outside the vocabulary"),
        ([a._ctx], [1], [16], "context overflow"),
        ([a._ctx], [1], [-1], "context overflow"),
        ([a._ctx, a._ctx], [1, 2], [3, 5], "consecutive"),
        ([a._ctx, f._ctx, a._ctx], [1, 2, 3], [0, 0, 0], "consecutive"),
        ([a._ctx, other._ctx], [1, 2], [0, 0], "another model"),
        ([a._ctx, ffi.NULL], [1, 2], [0, 0], "NULL"),
    ]
    for ctxs, toks, pos, msg in cases:
        rc, _, err = _raw_batch(ctxs, toks, pos, None, nv)
        assert rc == -1 and msg in err, (ctxs, toks, pos, err)
    rc = lib.pl_eval_batch(ffi.new("pl_context *[]", [a._ctx]), ffi.new("int32_t[]", [1]), ffi.new("int32_t[]", [0]),
                           0, ffi.NULL, ffi.NULL)
    assert rc == -1
    big = _open(path, n_ctx=32)
    bf = big.fork(n_ctx=16)
    rc, _, err = _raw_batch([bf._ctx, big._ctx], [1, 2], [0, 0], None, nv)
    assert rc == -1 and "largest first" in err
    # the Python side
    with pytest.raises(ContextOverflowError):
        eval_batch([(a, [1] * 17)])
    with pytest.raises(ValueError, match="twice"):
        eval_batch([(a, [1]), (a, [2])])
    with pytest.raises(ValueError, match="one loaded model"):
        eval_batch([(a, [1]), (other, [2])])
    with pytest.raises(ValueError):
        eval_batch([(a, [nv])])
    with pytest.raises(ValueError, match="at least one token"):
        eval_batch([(a, [])])
    assert a.n_tokens == 0 and f.n_tokens == 0
    fb = a.fork(n_ctx=32)
    eval_batch([(f, [1, 2]), (fb, [3])])  # sorted so the larger context lends the scratch
    assert f.n_tokens == 2 and fb.n_tokens == 1


@pytest.mark.parametrize("wtype", ["F32", "Q8_0", "Q4_1"])
def test_batch_equals_alone_in_batch_invariant_mode_on_the_best_kernels(tiny_model_factory, wtype):
    """The same bitwise equality on the SIMD path the CPU picks, with pl_set_batch_invariant(1)."""
    old = lib.pl_set_batch_invariant(1)
    try:
        path = tiny_model_factory(wtype=wtype, n_heads=4, n_kv_heads=2)
        base, alone = _open(path), _open(path)
        llms = [base, base.fork(), base.fork()]
        seqs = _seqs(base.n_vocab(), [7, 3, 11], seed=4)
        _eval_in_rounds(llms, seqs)
        for llm, s in zip(llms, seqs):
            alone.reset()
            for t in s:  # one token at a time: the decode path
                alone.eval([t])
            np.testing.assert_array_equal(llm.logits, alone.logits)
    finally:
        lib.pl_set_batch_invariant(old)


@pytest.mark.parametrize("wtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_batch_invariant_kernels_match_the_numpy_reference(tiny_model_factory, wtype):
    """Batch-invariant mode's one-token kernels (rows_invariant) against the float64 reference
    with the activations rounded to 8 bits as the C core does (test_forward.py's Q8_EMULATED_TOL)."""
    old = lib.pl_set_batch_invariant(1)
    try:
        path = tiny_model_factory(wtype=wtype, n_heads=4, n_kv_heads=2)
        llm = _open(path)
        (s,) = _seqs(llm.n_vocab(), [9], seed=5)
        got = []
        for t in s:
            llm.eval([t])
            got.append(llm.logits.copy())
        want = reference.forward(reference.ReferenceModel(str(path)), s, act_quant=True)
        assert reference.rel_err(np.array(got), want) < 1e-3
    finally:
        lib.pl_set_batch_invariant(old)
