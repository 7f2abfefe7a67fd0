"""Batch invariance (issue 16): a prompt's last-position logits must not depend on how the
prompt was cut into eval() calls -- all at once, or all but one token then the last alone
(what a request that finds its prefix cached does). The reference is the same model run
in one batch on the same kernel path; the scalar path must agree exactly.

With pl_set_batch_invariant(1) (what the server runs with) every token goes through the
one-token kernels and the split must not matter on any path (test_..._invariant_mode).

Without it the AVX-512 and AVX2 paths are batch-invariant too for Q8_0 and the (repacked)
Q4 types: their one-token kernels take the tile's arithmetic (rows in the lanes, one chain
per row), which costs no more than row-at-a-time kernels. F32 weights differ by ~2e-6
(summation order) and the scalar path not at all.

On AVX-512 the regrouped Q4_K / Q6_K (Q4_KR, Q6_KR) and the Q5_0 / Q5_1 / IQ4_NL rows take
their tiles' arithmetic too, and on AVX2 the rows of every 5-bit, K-quant and IQ4 type, so
the real Qwen2.5-Coder-0.5B and Gemma 3 270M files give the same logits bit for bit alone,
in a prompt batch and in a decode batch on both paths."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pyllama import Llama
from pyllama._core import lib
from support.layouts import c_matmul
from support.reference import quantize_activations_q8

TOL = 1e-4  # relative to the logits' largest magnitude: summation order only


def max_split_difference(path, isa: int) -> float:
    old = lib.pl_current_isa()
    try:
        if lib.pl_set_isa(isa) != isa:
            pytest.skip(f"this CPU lacks ISA path {isa}")
        llm = Llama(str(path), n_ctx=128, n_threads=1, type_k="f32", type_v="f32")
        rng = np.random.default_rng(1)
        worst = 0.0
        for _ in range(8):
            ids = rng.integers(0, llm.n_vocab(), 30).tolist()
            llm.reset()
            llm.eval(ids)
            whole = llm.logits.copy()
            for split in (1, 2, 5):
                llm.truncate(len(ids) - split)
                llm.eval(ids[-split:])
                worst = max(worst, float(np.abs(llm.logits - whole).max() / np.abs(whole).max()))
        llm.close()
        return worst
    finally:
        lib.pl_set_isa(old)


@pytest.mark.parametrize("wtype", ["F32", "Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("isa", [lib.PL_ISA_SCALAR, lib.PL_ISA_AVX2, lib.PL_ISA_AVX512])
def test_logits_do_not_depend_on_the_batch_split(tiny_model_factory, wtype, isa):
    path = tiny_model_factory(wtype=wtype, n_layers=8, dim=128, hidden_dim=256, n_heads=4, n_kv_heads=2,
                              context_length=128)
    diff = max_split_difference(path, isa)
    if isa == lib.PL_ISA_SCALAR:
        assert diff == 0.0
    assert diff < TOL, f"{wtype}: one-token / batched logits differ by {diff:.3g} of their scale"


@pytest.fixture
def invariant_mode():
    old = lib.pl_set_batch_invariant(1)
    yield
    lib.pl_set_batch_invariant(old)


@pytest.mark.parametrize("wtype", ["F32", "Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("isa", [lib.PL_ISA_AVX2, lib.PL_ISA_AVX512])
def test_invariant_mode_makes_the_split_irrelevant(tiny_model_factory, wtype, isa, invariant_mode):
    path = tiny_model_factory(wtype=wtype, n_layers=8, dim=128, hidden_dim=256, n_heads=4, n_kv_heads=2,
                              context_length=128)
    diff = max_split_difference(path, isa)
    assert diff == 0.0, f"{wtype}: one-token / batched logits differ by {diff:.3g} of their scale"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["invariant", "normal"])
def test_default_model_same_logits_alone_in_a_prompt_batch_and_in_a_decode_batch(default_model_path, mode,
                                                                                 request):
    """Issue 16's target on the real model (tolerance 0.02 max abs; both give 0 on AVX-512):
    each sequence's logits after every token, evaluated (a) alone token by token, (b) as one
    prompt batch, (c) in pl_eval_batch passes next to other sequences (prompt chunks and
    decode tokens mixed). Normal mode is invariant on the x86 paths (AVX-512, AVX2) only."""
    if mode == "invariant":
        request.getfixturevalue("invariant_mode")
    elif lib.pl_current_isa() not in (lib.PL_ISA_AVX512, lib.PL_ISA_AVX2, lib.PL_ISA_SCALAR):
        request.applymarker(pytest.mark.xfail(reason="normal mode is batch-invariant on the x86 and scalar paths only",
                                              strict=False))
    assert worst_alone_prompt_decode_batch(default_model_path) <= 0.02


def worst_alone_prompt_decode_batch(path: str) -> float:
    """The largest |logit difference| of three sequences evaluated alone token by token against
    (a) each as one prompt batch and (b) all together in pl_eval_batch passes."""
    from pyllama.batch import eval_batch

    base = Llama(path, n_ctx=128, n_threads=2, verbose=False)
    rng = np.random.default_rng(7)
    seqs = [rng.integers(0, base.n_vocab(), n).tolist() for n in (12, 5, 9)]
    alone = base.fork()
    forks = [base.fork() for _ in seqs]
    worst = 0.0
    wants = []
    for s in seqs:
        alone.reset()
        for t in s:
            alone.eval([t])
        one_by_one = alone.logits.copy()
        alone.reset()
        alone.eval(s)  # a prompt batch
        worst = max(worst, float(np.abs(alone.logits - one_by_one).max()))
        wants.append(one_by_one)
    done = [0] * len(seqs)
    step = 0
    while any(d < len(s) for d, s in zip(done, seqs)):
        reqs = []
        for i, (s, f) in enumerate(zip(seqs, forks)):
            take = 4 if step == 0 and i == 0 else 1  # a prompt chunk riding with decode tokens
            if done[i] < len(s):
                reqs.append((f, s[done[i]:done[i] + take]))
                done[i] += len(reqs[-1][1])
        eval_batch(reqs)
        step += 1
    for f, want in zip(forks, wants):
        worst = max(worst, float(np.abs(f.logits - want).max()))
    base.close()
    return worst


# the K-quant files (Q4_K, Q5_K, Q6_K, Q5_0, Q8_0) and what normal mode gives on them now
KQUANT_MODELS = ["qwen2.5-coder-0.5b-instruct", "gemma-3-270m-q4_k_m"]


@pytest.mark.slow
@pytest.mark.parametrize("isa", [lib.PL_ISA_AVX2, lib.PL_ISA_AVX512])
@pytest.mark.parametrize("mode", ["invariant", "normal"])
@pytest.mark.parametrize("name", KQUANT_MODELS)
def test_kquant_models_same_logits_alone_in_a_prompt_batch_and_in_a_decode_batch(name, mode, isa, request):
    """Issue 16's target (0.02 max abs) on the files with K-quant, Q5_0 and Q8_0 weights."""
    from pyllama import models

    path = models.cached_path(name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not downloaded ({path}): python -m pyllama.models fetch {name}")
    if mode == "invariant":
        request.getfixturevalue("invariant_mode")
    old = lib.pl_current_isa()
    try:
        if lib.pl_set_isa(isa) != isa:
            pytest.skip(f"this CPU lacks ISA path {isa}")
        worst = worst_alone_prompt_decode_batch(path)
    finally:
        lib.pl_set_isa(old)
    assert worst <= 0.02, f"{name}: logits differ by up to {worst:.3g}"


# ----------------------------------------------------------------- the kernels themselves

Q4R = {"Q4_0": 31, "Q4_1": 32}  # PL_TYPE_Q4_0R / Q4_1R: the layouts the model repacks Q4 matrices into
MATMUL_TYPES = {"Q8_0": 8, "Q4_0": 2, "Q4_1": 3, "Q4_0R": 31, "Q4_1R": 32}


def _random_blocks(rng, base: str, rows: int, cols: int) -> np.ndarray:
    nb = rows * cols // 32
    if base == "Q8_0":
        blk = np.zeros(nb, dtype=[("d", "<f2"), ("qs", "i1", 32)])
        blk["d"] = rng.uniform(0.001, 0.05, nb)
        blk["qs"] = rng.integers(-128, 128, (nb, 32))
    elif base == "Q4_0":
        blk = np.zeros(nb, dtype=[("d", "<f2"), ("qs", "u1", 16)])
        blk["d"] = rng.uniform(-0.1, 0.1, nb)
        blk["qs"] = rng.integers(0, 256, (nb, 16))
    else:
        blk = np.zeros(nb, dtype=[("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)])
        blk["d"] = rng.uniform(0.001, 0.1, nb)
        blk["m"] = rng.uniform(-0.8, 0.2, nb)
        blk["qs"] = rng.integers(0, 256, (nb, 16))
    return blk


def _repack(blk: np.ndarray, rows: int) -> np.ndarray:
    """quants.h's repacked row, written from its description: the row's scales, (Q4_1: its
    minimums,) then its blocks' 16 nibble bytes end to end."""
    b = blk.reshape(rows, -1)
    parts = [np.ascontiguousarray(b["d"]).view(np.uint8).reshape(rows, -1)]
    if "m" in blk.dtype.names:
        parts.append(np.ascontiguousarray(b["m"]).view(np.uint8).reshape(rows, -1))
    parts.append(b["qs"].reshape(rows, -1))
    return np.ascontiguousarray(np.concatenate(parts, axis=1)).reshape(-1)


def _dequantized(blk: np.ndarray, rows: int, cols: int) -> np.ndarray:
    d = blk["d"].astype(np.float64)[:, None]
    if blk.dtype["qs"].base == np.int8:
        w = d * blk["qs"].astype(np.float64)
    else:
        q = np.concatenate([blk["qs"] & 15, blk["qs"] >> 4], axis=1).astype(np.float64)
        w = d * q + blk["m"].astype(np.float64)[:, None] if "m" in blk.dtype.names else d * (q - 8)
    return w.reshape(rows, cols)


def _assert_near_float64_product(got: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
    """got within summation-order tolerance of the float64 product of the weights w with x
    rounded to 8-bit blocks as the kernels round it."""
    xa = quantize_activations_q8(x)
    want = xa @ w.T
    tol = 3e-5 * (np.abs(xa) @ np.abs(w).T) + 1e-5
    assert np.all(np.abs(got - want) <= tol)


@pytest.mark.parametrize("wtype", list(MATMUL_TYPES))
@pytest.mark.parametrize("shape", [(37, 96), (16, 288), (20, 256), (50, 608), (33, 1056)], ids=lambda s: "x".join(map(str, s)))
def test_invariant_one_token_kernels_equal_the_tile_bitwise(wtype, shape, invariant_mode):
    """In batch-invariant mode one token (rows_invariant) and a batch (the tile) give the same
    bits for every row; row counts off the 16-row panels and blocks off the 4-block groups
    included. Both also match a float64 product of the dequantized weights (written here from
    the GGUF block layout) with the 8-bit activations, to summation-order tolerance."""
    rows, cols = shape
    rng = np.random.default_rng(rows * 7 + cols)
    blk = _random_blocks(rng, wtype[:4], rows, cols)
    raw = _repack(blk, rows) if wtype.endswith("R") else blk.view(np.uint8)
    x = rng.standard_normal((6, cols), dtype=np.float32)
    x[:, 3] *= 40.0
    one = np.concatenate([c_matmul(MATMUL_TYPES[wtype], raw, x[t:t + 1], rows, cols, 2) for t in range(len(x))])
    batch = c_matmul(MATMUL_TYPES[wtype], raw, x, rows, cols, 2)
    np.testing.assert_array_equal(one, batch)
    _assert_near_float64_product(one, x, _dequantized(blk, rows, cols))


# Weight types whose one-token rows take the tile's arithmetic on each path: the same bits
# for a token alone or in a batch without batch-invariant mode.
NORMAL_MODE_INVARIANT = {
    lib.PL_ISA_AVX2: ["Q8_0", "Q4_0", "Q4_1", "Q4_0R", "Q4_1R", "Q5_0", "Q5_1", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K",
                      "Q5_K", "Q6_K", "IQ4_XS"],
    lib.PL_ISA_AVX512: ["Q8_0", "Q4_0R", "Q4_1R", "Q5_0", "Q5_1", "IQ4_NL"],
}
# GGML's 5-bit and IQ4_NL blocks: (type id, bytes, offsets of the fp16 fields)
Q5_LAYOUTS = {"Q5_0": (6, 22, [0]), "Q5_1": (7, 24, [0, 2]), "IQ4_NL": (20, 18, [0])}
# GGML's 256-value super-blocks: (type id, bytes, offsets of the fp16 fields)
K_LAYOUTS = {"Q2_K": (10, 84, [80, 82]), "Q3_K": (11, 110, [108]), "Q4_K": (12, 144, [0, 2]),
             "Q5_K": (13, 176, [0, 2]), "Q6_K": (14, 210, [208]), "IQ4_XS": (23, 136, [0])}


def _random_q5_blocks(rng, wtype: str, rows: int, cols: int) -> np.ndarray:
    """Random bytes in blocks of the type (Q5_LAYOUTS or K_LAYOUTS), its fp16 fields small finite numbers."""
    _, size, halves = Q5_LAYOUTS[wtype] if wtype in Q5_LAYOUTS else K_LAYOUTS[wtype]
    nb = rows * cols // (32 if wtype in Q5_LAYOUTS else 256)
    raw = rng.integers(0, 256, (nb, size), dtype=np.uint8)
    for o in halves:
        raw[:, o:o + 2] = rng.uniform(-0.05, 0.05, nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
    return raw.reshape(-1)


@pytest.mark.parametrize("isa,wtype", [(i, t) for i, ts in NORMAL_MODE_INVARIANT.items() for t in ts])
@pytest.mark.parametrize("shape", [(37, 96), (20, 256), (33, 1056)], ids=lambda s: "x".join(map(str, s)))
def test_normal_mode_one_token_rows_equal_the_tile_bitwise(wtype, isa, shape):
    """Without batch-invariant mode, on the paths where a type's rows() takes its tile's
    arithmetic, one token and a batch of 6 give the same bits for every row (row counts off
    the 8- and 16-row panels, block counts off the 4-block groups included); the 5-bit and
    IQ4_NL products also match a float64 product of the gguf package's dequantized weights
    with the 8-bit activations, to summation-order tolerance."""
    old = lib.pl_current_isa()
    try:
        if lib.pl_set_isa(isa) != isa:
            pytest.skip(f"this CPU lacks ISA path {isa}")
        rows, cols = shape
        if wtype in K_LAYOUTS:  # whole super-blocks: 1, 1 and 5 of them
            cols = -(-cols // 256) * 256
        rng = np.random.default_rng(rows * 11 + cols)
        if wtype in Q5_LAYOUTS or wtype in K_LAYOUTS:
            raw = _random_q5_blocks(rng, wtype, rows, cols)
            type_id = (Q5_LAYOUTS[wtype] if wtype in Q5_LAYOUTS else K_LAYOUTS[wtype])[0]
        else:
            blk = _random_blocks(rng, wtype[:4], rows, cols)
            raw = _repack(blk, rows) if wtype.endswith("R") else blk.view(np.uint8)
            type_id = MATMUL_TYPES[wtype]
        x = rng.standard_normal((6, cols), dtype=np.float32)
        x[:, 3] *= 40.0
        one = np.concatenate([c_matmul(type_id, raw, x[t:t + 1], rows, cols, 2) for t in range(len(x))])
        batch = c_matmul(type_id, raw, x, rows, cols, 2)
    finally:
        lib.pl_set_isa(old)
    np.testing.assert_array_equal(one, batch)
    if wtype in Q5_LAYOUTS or wtype in K_LAYOUTS:
        gq = pytest.importorskip("gguf.quants")
        from gguf import GGMLQuantizationType

        w = gq.dequantize(raw.reshape(rows, -1), GGMLQuantizationType[wtype]).astype(np.float64)
        _assert_near_float64_product(batch, x, w)
