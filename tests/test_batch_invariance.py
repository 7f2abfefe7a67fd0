"""Batch invariance (issue 16): a prompt's last-position logits must not depend on how the
prompt was cut into eval() calls -- all at once, or all but one token then the last alone
(what a request that finds its prefix cached does). The reference is the same model run
in one batch on the same kernel path; the scalar path must agree exactly.

With pl_set_batch_invariant(1) (what the server runs with) every token goes through the
one-token kernels and the split must not matter on any path (test_..._invariant_mode).

Known gap without it (xfail): with quantized weights the AVX2/AVX-512 kernels' results depend on how
many tokens a call carries: on these tiny 8-layer models the logits move by up to 0.2-3%
of their scale (AVX-512: Q4_0/Q4_1 one token vs a batch; AVX2: Q4_1 and Q8_0 also between
batch sizes), far beyond summation order; F32 weights differ by ~2e-6 and the scalar path
not at all. Shown by this file's xfail/xpass report."""
from __future__ import annotations

import numpy as np
import pytest

from pyllama import Llama
from pyllama._core import lib

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
def test_logits_do_not_depend_on_the_batch_split(tiny_model_factory, wtype, isa, request):
    if isa != lib.PL_ISA_SCALAR and wtype != "F32":
        request.applymarker(pytest.mark.xfail(reason="quantized SIMD kernels give different results for "
                                                     "different token counts (issue 16, batch invariance)",
                                              strict=False))
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
