"""The C forward pass against an independent float64 numpy reference (tests/support/reference.py).

Tiny random models (tests/support/tiny_models.py, written by the `gguf` package) cover
every weight type, both rotary layouts, grouped-query attention, tied and
separate output layers, q/k/v biases, rope scaling, and batch vs incremental
evaluation. The real default model is checked on a fixed token sequence and
its greedy continuations against recordings of other engines
(tests/recorders/record_reference.py -> tests/data/reference_greedy.json).

Error measure: rel_err = max|ours - ref| / max|ref| over the whole logit array.

Tolerances:
- F32, F16, BF16 weights: 1e-4. F16/BF16 weights are decoded exactly to
  float32 and activations stay float32, so the only difference from float64 is
  float32 rounding (observed 3e-7 .. 7e-7).
- Q8_0, Q4_0, Q4_1 weights: the C kernels round the input vector of every
  quantized matrix product to 8 bits per 32-value block (as llama.cpp does).
  That is a real approximation, not a bug: each element moves by up to
  max|block|/254, and on these tiny models the logits move by 2-4% of their
  range. So two comparisons:
    * against the reference that models that rounding (act_quant=True):
      rel_err < 1e-3. Observed ~1.5e-7; the slack covers an element that sits
      on a .5 rounding tie and, after a float32 summation-order difference
      (another kernel path), rounds the other way: that moves one activation
      by a full 8-bit step and the logits by ~1e-3. Still 20x below the
      activation-rounding effect itself, so any real error shows.
    * against the plain float64 reference: rel_err < 0.1 (the size of the
      activation-rounding effect; observed up to 4.2e-2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support import reference
from support import tiny_models
from support.tiny_models import TinySpec

pyllama = pytest.importorskip("pyllama", reason="pyllama is not importable")
if not hasattr(pyllama, "Llama"):
    pytest.skip("pyllama.Llama is not available (C core not built?)", allow_module_level=True)

from pyllama import ContextOverflowError, Llama  # noqa: E402
from pyllama.models import sha256_file  # noqa: E402

FLOAT_TOL = 1e-4
F16_KV_TOL = 1e-3  # measured up to 4.0e-4 (scalar kernels); a mis-wired cache (stride, layout) is far outside
Q8_EMULATED_TOL = 1e-3
Q8_FLOAT_TOL = 0.1

DATA = Path(__file__).resolve().parent / "data"


def open_llama(path, n_ctx=64, **kw):
    kw.setdefault("n_threads", 1)
    return Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, **kw)


def sample_tokens(n_vocab, n, seed=0):
    return [int(t) for t in np.random.default_rng(seed).integers(0, n_vocab, n)]


def check_against_reference(path, logits, tokens, quantized: bool, kv="f16"):
    """kv: the engine's KV cache type; the reference rounds keys and values the same way."""
    ref_model = reference.ReferenceModel(path)
    exact = reference.forward(ref_model, tokens, kv_half=kv == "f16")
    if not quantized:
        # With an F16 cache, a key or value whose float32 and float64 computations fall on
        # either side of a half rounding boundary is stored one half-ulp (2^-11 relative) apart.
        tol = FLOAT_TOL if kv == "f32" else F16_KV_TOL
        err = reference.rel_err(logits, exact)
        assert err < tol, f"rel_err {err:.3g} vs float64 reference (tolerance {tol})"
        return err
    emulated = reference.forward(ref_model, tokens, act_quant=True, kv_half=kv == "f16")
    err_q = reference.rel_err(logits, emulated)
    err_f = reference.rel_err(logits, exact)
    assert err_q < Q8_EMULATED_TOL, (
        f"rel_err {err_q:.3g} vs reference with 8-bit activations (tolerance {Q8_EMULATED_TOL}); "
        f"vs plain float64: {err_f:.3g}")
    assert err_f < Q8_FLOAT_TOL, f"rel_err {err_f:.3g} vs float64 reference (tolerance {Q8_FLOAT_TOL})"
    return err_q


# id -> (spec overrides, weights quantized?)
CONFIGS = {
    **{f"llama-{t}": (dict(wtype=t), t in tiny_models.QUANT_TYPES) for t in tiny_models.WEIGHT_TYPES},
    "llama-F32-untied": (dict(tied=False), False),
    "llama-F16-untied-mha": (dict(wtype="F16", tied=False, n_kv_heads=4), False),
    "llama-F32-mqa": (dict(n_kv_heads=1), False),
    "llama-F32-rope-base-1e6": (dict(rope_base=1e6), False),
    "llama-F32-rope-linear": (dict(rope_scaling="linear", rope_scale_factor=4.0), False),
    "llama-F32-rope-llama3": (dict(rope_scaling="llama3", rope_scale_factor=8.0), False),
    "llama-F32-rope-freqs-tensor": (dict(rope_freqs=True), False),
    "llama-F32-spm-vocab": (dict(vocab="llama"), False),
    "llama-F32-align64": (dict(alignment=64), False),
    "llama-mixed": (dict(wtype="Q4_1", type_overrides={"token_embd.weight": "Q8_0", "blk.0.attn_v.weight": "F16",
                                                          "blk.1.ffn_down.weight": "BF16",
                                                          "blk.1.attn_q.weight": "Q4_0"}), True),
    "qwen2-F32": (dict(arch="qwen2", tied=False), False),
    "qwen2-BF16-tied": (dict(arch="qwen2", wtype="BF16"), False),
    "qwen2-Q8_0": (dict(arch="qwen2", wtype="Q8_0", tied=False), True),
    "qwen2-Q4_0": (dict(arch="qwen2", wtype="Q4_0"), True),
    "llama-IQ4_NL": (dict(wtype="IQ4_NL"), True),
    # 256-value blocks: widths of 256; a Q4_K_M-like mix of every new type in one model. At these
    # widths an activation that float32 and float64 round to different 8-bit values (a value
    # within ~1e-4 of a rounding tie) is likely somewhere; with some seeds that one flip moves
    # the logits 2e-3..1e-2 from the emulated reference (a wrong kernel moves them by O(1);
    # tests/test_quants.py checks each kernel to float precision). seed=2 has no such flip.
    "llama-Q4_K-tied": (dict(wtype="Q4_K", dim=256, hidden_dim=256, n_heads=2, n_kv_heads=1), True),
    "qwen2-K-mix": (dict(arch="qwen2", wtype="Q4_K", dim=256, hidden_dim=512, n_heads=4, n_kv_heads=2, tied=False,
                         type_overrides={"token_embd.weight": "Q5_0", "output.weight": "Q6_K",
                                         "blk.0.ffn_down.weight": "Q6_K", "blk.1.attn_v.weight": "Q5_K",
                                         "blk.0.attn_q.weight": "Q2_K", "blk.1.ffn_up.weight": "Q3_K",
                                         "blk.1.attn_k.weight": "IQ4_XS", "blk.0.attn_output.weight": "IQ4_NL",
                                         "blk.1.ffn_gate.weight": "Q8_0", "blk.0.attn_k.weight": "Q5_1"}, seed=2), True),
    "llama-3layers-wide": (dict(n_layers=3, dim=128, n_heads=8, n_kv_heads=2, hidden_dim=320), False),
    "llama-F16-head160": (dict(wtype="F16", dim=320, n_heads=2, n_kv_heads=1, hidden_dim=320), False),
}


@pytest.mark.parametrize("use_mmap", [True, False])
@pytest.mark.parametrize("kv", ["f16", "f32"])
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_tiny_logits_match_reference(tiny_model_factory, cfg, kv, use_mmap):
    """use_mmap=False reads the file into anonymous memory (huge pages) and repacks the Q4
    matrices there instead of in the file mapping's private pages: same reference, and the
    same logits as the mapped load to the bit (same kernels, same bytes)."""
    overrides, quantized = CONFIGS[cfg]
    path = tiny_model_factory(**overrides)
    llm = open_llama(path, type_k=kv, type_v=kv, use_mmap=use_mmap)
    tokens = sample_tokens(llm.n_vocab(), 13, seed=len(cfg))
    llm.eval(tokens, logits_all=True)
    all_logits = np.asarray(llm.eval_logits)
    assert all_logits.shape == (len(tokens), llm.n_vocab())
    assert np.array_equal(np.asarray(llm.logits), all_logits[-1])
    assert np.all(np.isfinite(all_logits))
    check_against_reference(path, all_logits, tokens, quantized, kv)
    if not use_mmap:
        mapped = open_llama(path, type_k=kv, type_v=kv)
        mapped.eval(tokens, logits_all=True)
        assert np.array_equal(np.asarray(mapped.eval_logits), all_logits)


@pytest.mark.parametrize("cfg", ["llama-F32", "llama-F16", "llama-BF16", "qwen2-F32", "llama-F16-head160"])
def test_long_float_batch_matches_reference(tiny_model_factory, cfg):
    """A 40-token batch: the float tiles' packed-panel paths (16 tokens or more; AVX-512: 12
    per pass and a tail, AVX2: 6, 4 and 1 per pass) against the float64 reference, on every
    kernel path this CPU has."""
    overrides, quantized = CONFIGS[cfg]
    path = tiny_model_factory(**overrides, context_length=64)
    lib, paths = _kernel_paths()
    try:
        for isa in paths:
            assert lib.pl_set_isa(isa) == isa
            llm = open_llama(path, type_k="f32", type_v="f32", n_threads=2)
            tokens = sample_tokens(llm.n_vocab(), 40, seed=7)
            llm.eval(tokens, logits_all=True)
            check_against_reference(path, np.asarray(llm.eval_logits), tokens, quantized, "f32")
            llm.close()
    finally:
        lib.pl_set_isa(lib.PL_ISA_AUTO)


def test_config_comes_from_metadata(tiny_model_factory):
    spec = TinySpec(arch="qwen2", dim=96, n_heads=6, n_kv_heads=2, hidden_dim=160, n_layers=3, tied=False,
                    rope_base=50000.0, norm_eps=1e-6, context_length=48)
    llm = open_llama(tiny_model_factory(spec), n_ctx=16)
    c = llm.config
    assert (c["dim"], c["hidden_dim"], c["n_layers"], c["n_heads"], c["n_kv_heads"], c["head_dim"]) == (96, 160, 3, 6, 2, 16)
    assert c["n_vocab"] == tiny_models.n_vocab_of("gpt2") == llm.n_vocab()
    assert c["n_ctx_train"] == 48
    assert c["rope_base"] == pytest.approx(50000.0)
    assert c["norm_eps"] == pytest.approx(1e-6)
    assert c["rope_type"] == 1  # PL_ROPE_NEOX
    assert c["tied_output"] == 0 and c["has_qkv_bias"] == 1
    assert llm.n_ctx() == 16
    assert llm.metadata["general.architecture"] == "qwen2"
    llama = open_llama(tiny_model_factory(), n_ctx=16).config
    assert llama["rope_type"] == 0 and llama["tied_output"] == 1 and llama["has_qkv_bias"] == 0


@pytest.mark.parametrize("cfg,kv", [("llama-F32", "f32"), ("qwen2-Q8_0", "f32"), ("llama-Q4_1", "f32"),
                                    ("llama-F32", "f16")])
def test_incremental_eval_equals_batch(tiny_model_factory, cfg, kv):
    """Prompt in one batch, then token by token, then a second batch: same logits as one big batch.

    Batches and single tokens go through different kernels (tiles vs rows), so float sums
    differ in order (~1e-7). With quantized weights such a difference can tip an 8-bit
    activation rounding and move logits by ~1e-2 (seen with the F16 cache and the AVX2
    kernels), so those run with the F32 cache, where the kernels agree exactly; the F16
    cache is checked on float weights, where nothing is re-quantized."""
    overrides, _ = CONFIGS[cfg]
    path = tiny_model_factory(**overrides)
    llm = open_llama(path, n_ctx=32, type_k=kv, type_v=kv)
    tokens = sample_tokens(llm.n_vocab(), 20, seed=3)
    llm.eval(tokens, logits_all=True)
    full = np.array(llm.eval_logits, dtype=np.float64)
    assert llm.n_tokens == 20 and list(llm.input_ids) == tokens

    llm.reset()
    assert llm.n_tokens == 0
    llm.eval(tokens[:7], logits_all=True)
    pieces = [np.array(llm.eval_logits)]
    for t in tokens[7:12]:
        llm.eval([t])
        pieces.append(np.array(llm.logits)[None, :])
    llm.eval(tokens[12:], logits_all=True)
    pieces.append(np.array(llm.eval_logits))
    inc = np.concatenate(pieces)
    # same arithmetic up to summation order in batched kernels: float32 rounding only
    assert reference.rel_err(inc, full) < 1e-5
    assert llm.n_tokens == 20


def test_reset_gives_fresh_results(tiny_model_factory):
    llm = open_llama(tiny_model_factory(), n_ctx=32)
    a = sample_tokens(llm.n_vocab(), 6, seed=1)
    b = sample_tokens(llm.n_vocab(), 6, seed=2)
    llm.eval(a)
    first = np.array(llm.logits)
    llm.eval(b)
    llm.reset()
    assert llm.n_tokens == 0
    llm.eval(a)
    assert np.array_equal(np.array(llm.logits), first)


def test_truncate_then_continue(tiny_model_factory):
    llm = open_llama(tiny_model_factory(wtype="F16"), n_ctx=32)
    toks = sample_tokens(llm.n_vocab(), 10, seed=4)
    llm.eval(toks)
    want = np.array(llm.logits)
    llm.truncate(6)
    assert llm.n_tokens == 6 and list(llm.input_ids) == toks[:6]
    llm.eval(toks[6:])
    assert reference.rel_err(np.array(llm.logits), want) < 1e-5


@pytest.mark.parametrize("n_heads, n_kv_heads, dim", [(8, 1, 128), (8, 2, 128), (9, 3, 288), (5, 5, 160)])
def test_decode_attention_split_over_threads(tiny_model_factory, n_heads, n_kv_heads, dim):
    """Decode gives each thread a run of query heads (forward.c, attention()): token by token, every
    thread count (more threads than heads too) gives the 1-thread logits exactly, and those match the
    numpy reference. Group sizes 8 (beyond the x86 kernels' 3 heads per pass), 4, 3 and 1."""
    path = tiny_model_factory(dim=dim, n_heads=n_heads, n_kv_heads=n_kv_heads, hidden_dim=96, n_layers=2)
    toks = sample_tokens(tiny_models.n_vocab_of("gpt2"), 20, seed=n_heads * 10 + n_kv_heads)
    want = reference.forward(reference.ReferenceModel(str(path)), toks)
    base = None
    for n_threads in (1, 2, 3, 4, 11):
        llm = open_llama(path, n_ctx=24, n_threads=n_threads, type_k="f32", type_v="f32")
        got = []
        for t in toks:
            llm.eval([t])
            got.append(np.array(llm.logits, dtype=np.float64))
        got = np.array(got)
        if base is None:
            base = got
            assert reference.rel_err(got, want) < 1e-4
        else:
            assert np.array_equal(got, base), n_threads



def _kernel_paths():
    from pyllama._core import lib

    best = lib.pl_cpu_isa()
    paths = [lib.PL_ISA_SCALAR]
    paths += [lib.PL_ISA_AVX2] if best in (lib.PL_ISA_AVX2, lib.PL_ISA_AVX512) else []
    paths += [best] if best in (lib.PL_ISA_AVX512, lib.PL_ISA_NEON) else []
    return lib, paths


def _thread_paths():
    lib, paths = _kernel_paths()
    return [pytest.param(isa, id={lib.PL_ISA_SCALAR: "scalar", lib.PL_ISA_AVX2: "avx2"}.get(isa, "best"))
            for isa in paths]


@pytest.mark.parametrize("wtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("isa", _thread_paths())
def test_threads_and_their_dealing_change_no_logit(tiny_model_factory, wtype, isa):
    """The team deals each product's rows out as it goes (csrc/team.c: a thread that is held up
    leaves its rows to the others), so which thread computes a row, and which rows a kernel call
    spans, change from run to run. Every thread count, run after run, must give the one-thread
    logits bit for bit: a prompt batch (20 tokens: the float panels start at 16), decode batches
    of three sequences, and single tokens."""
    from pyllama.batch import eval_batch

    lib, _ = _kernel_paths()
    path = tiny_model_factory(wtype=wtype, dim=256, n_heads=4, n_kv_heads=2, hidden_dim=512, n_layers=2,
                              context_length=64)
    toks = sample_tokens(tiny_models.n_vocab_of("gpt2"), 20, seed=11)
    old = lib.pl_current_isa()
    try:
        lib.pl_set_isa(isa)
        base = None
        for n_threads in (1, 2, 3, 4, 2, 3):
            llm = open_llama(path, n_ctx=48, n_threads=n_threads)
            forks = [llm.fork() for _ in range(3)]
            got = []
            llm.eval(toks, logits_all=True)
            got.append(np.array(llm.eval_logits))
            for i, f in enumerate(forks):
                f.eval(toks[: 5 + i])
            for step in range(3):
                eval_batch([(f, [toks[step + i]]) for i, f in enumerate(forks)])
                got.append(np.stack([f.logits for f in forks]))
            forks[0].eval([toks[0]])
            got.append(np.array(forks[0].logits)[None])
            llm.close()
            if base is None:
                base = got
                continue
            for a, b in zip(got, base):
                assert np.array_equal(a, b), (n_threads, float(np.abs(a - b).max()))
    finally:
        lib.pl_set_isa(old)


@pytest.mark.parametrize("wtype", ["Q4_0", "Q8_0"])
def test_non_finite_weight_is_reported_on_every_kernel_path(tmp_path, wtype):
    """A NaN or an infinity in a norm weight (a broken file) must reach the logits as NaN on
    every kernel path, so that generation stops with an error naming it. The 8-bit
    quantization of the activations used to turn the NaN into an arbitrary integer (finite
    logits, different on each path) and the infinity into a finite-looking scale."""
    spec = TinySpec(wtype=wtype, n_layers=2)
    lib, paths = _kernel_paths()
    for bad in (np.nan, np.inf):
        w = tiny_models.random_weights(spec)
        w["blk.1.ffn_norm.weight"] = w["blk.1.ffn_norm.weight"].copy()
        w["blk.1.ffn_norm.weight"][5] = bad
        path = tiny_models.write_tiny_gguf(tmp_path / f"bad_{bad}.gguf", spec, weights=w)
        try:
            for isa in paths:
                assert lib.pl_set_isa(isa) == isa
                llm = open_llama(path, n_ctx=16)
                llm.eval(sample_tokens(llm.n_vocab(), 3, seed=1))
                assert np.isnan(llm.logits).all(), (isa, bad)
                with pytest.raises(ValueError, match="NaN"):
                    llm.create_completion("hi", max_tokens=2, temperature=0)
                llm.close()
        finally:
            lib.pl_set_isa(lib.PL_ISA_AUTO)

def test_context_overflow_raises(tiny_model_factory):
    path = tiny_model_factory()
    llm = open_llama(path, n_ctx=8, context_overflow="error")
    toks = sample_tokens(llm.n_vocab(), 9, seed=6)
    with pytest.raises(ContextOverflowError):
        llm.eval(toks)  # 9 tokens into a context of 8
    assert llm.n_tokens == 0
    llm.eval(toks[:8])
    assert llm.n_tokens == 8
    kept = np.array(llm.logits)
    with pytest.raises(ContextOverflowError) as e:
        llm.eval(toks[8:])
    assert "8" in str(e.value)  # names the context size
    assert llm.n_tokens == 8 and np.array_equal(np.array(llm.logits), kept)
    llm.reset()
    llm.eval(toks[:3])  # usable after reset
    assert llm.n_tokens == 3


def test_eval_rejects_out_of_range_token_ids(tiny_model_factory):
    llm = open_llama(tiny_model_factory(), n_ctx=8)
    for bad in ([llm.n_vocab()], [-1]):
        with pytest.raises((ValueError, IndexError)):
            llm.eval(bad)
    assert llm.n_tokens == 0


# ---------------------------------------------------------------------------
# llama2.c checkpoints through the C API, against the reference run on a GGUF of the same weights


@pytest.mark.parametrize("use_mmap", [True, False])
@pytest.mark.parametrize("version", ["v0", "v1"])
@pytest.mark.parametrize("tied", [True, False])
def test_llama2c_matches_reference(tmp_path, version, tied, use_mmap):
    core = pytest.importorskip("pyllama._core")
    ffi, lib = core.ffi, core.lib
    spec = TinySpec(tied=tied, seed=11, rope_base=10000.0)
    w = tiny_models.random_weights(spec)
    gguf_path = tiny_models.write_tiny_gguf(tmp_path / "m.gguf", spec, weights=w)
    writer = tiny_models.write_llama2c_v0 if version == "v0" else tiny_models.write_llama2c_v1
    bin_path = writer(tmp_path / "m.bin", spec, weights=w)
    m = lib.pl_load_llama2c(str(bin_path).encode(), 10000.0, 0 if use_mmap else lib.PL_LOAD_NO_MMAP)
    assert m != ffi.NULL, ffi.string(lib.pl_last_error()).decode()
    try:
        cfg = ffi.new("pl_config *")
        lib.pl_model_config(m, cfg)
        assert (cfg.dim, cfg.n_layers, cfg.n_kv_heads, cfg.tied_output) == (spec.dim, spec.n_layers, spec.n_kv_heads, int(tied))
        n_vocab = cfg.n_vocab
        ctx = lib.pl_context_new(m, 16, 1, lib.PL_TYPE_F32, lib.PL_TYPE_F32)
        assert ctx != ffi.NULL, ffi.string(lib.pl_last_error()).decode()
        try:
            toks = sample_tokens(n_vocab, 10, seed=12)
            logits = np.empty((len(toks), n_vocab), dtype=np.float32)
            rc = lib.pl_eval(ctx, ffi.new("int32_t[]", toks), len(toks), 0,
                             ffi.cast("float *", ffi.from_buffer(logits)), 1)
            assert rc == 0, ffi.string(lib.pl_last_error()).decode()
        finally:
            lib.pl_context_free(ctx)
    finally:
        lib.pl_model_free(m)
    err = reference.rel_err(logits, reference.forward(reference.ReferenceModel(gguf_path), toks))
    assert err < FLOAT_TOL


# ---------------------------------------------------------------------------
# the real default model

FIXED_IDS = [1, 9690, 28, 253, 5248, 30, 2, 198]  # <|im_start|> and a few ordinary tokens


@pytest.fixture(scope="module")
def default_llm(default_model_path):
    return open_llama(default_model_path, n_ctx=128, n_threads=2)


@pytest.mark.slow
def test_default_model_logits_match_reference(default_model_path, default_llm):
    """30 layers of Q4_1 with a Q8_0 embedding: C logits vs the float64 numpy reference.

    On a real model the 8-bit activation rounding is not a small, smooth error:
    real activations sit exactly on .5 rounding ties (Q8_0 embeddings times norm
    weights), float32 vs float64 decides which way they round, and after 30
    layers every engine that rounds activations lands 2-7% (of the logit range)
    away from float64. Measured on these 8 tokens vs the float64 reference:
        engine                       rel_err   max(1 - corr)  max |diff|
        pyllama                      0.026     1.4e-3         0.92
        llama.cpp (llama-cpp-python) 0.067     2.3e-3         2.35
        numpy with 8-bit activations 0.041     1.7e-3         1.44
    while a real bug is far outside that: rope base 10000 instead of 100000 gives
    rel_err 0.128 and 1 - corr 1.0e-2; the wrong rope layout 0.67 and 0.23.
    So: rel_err < 0.1, 1 - corr < 4e-3 at every position, and the same argmax
    wherever the reference's top-2 gap exceeds 1 logit (~the largest deviation).
    """
    llm = default_llm
    llm.reset()
    llm.eval(FIXED_IDS, logits_all=True)
    ours = np.array(llm.eval_logits, dtype=np.float64)
    exact = reference.forward(reference.ReferenceModel(default_model_path), FIXED_IDS)
    err = reference.rel_err(ours, exact)
    assert err < 0.1, f"rel_err vs float64 reference {err:.3g}"
    for i in range(len(FIXED_IDS)):
        corr = np.corrcoef(ours[i], exact[i])[0, 1]
        assert 1 - corr < 4e-3, f"position {i}: 1 - corr = {1 - corr:.3g}"
        top2 = np.sort(exact[i])[-2:]
        if top2[1] - top2[0] > 1.0:
            assert np.argmax(ours[i]) == np.argmax(exact[i]), f"position {i}"


_GREEDY_CACHE: dict = {}  # (prompt, n) -> ids: both recordings use the same prompts


def greedy(llm, prompt, n):
    key = (tuple(prompt), n)
    if key not in _GREEDY_CACHE:
        _GREEDY_CACHE[key] = _greedy(llm, prompt, n)
    return _GREEDY_CACHE[key]


def _greedy(llm, prompt, n):
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.logits))
        out.append(tok)
        llm.eval([tok])
    return out


# Greedy decoding tolerance. Where our choice differs from the recorded engine's,
# both must be looking at a near-tie: the recorded engine's logit for our token
# must be within MARGIN of its best. 8-bit activation rounding moves this model's
# logits by up to ~1 logit (see the test above) and llama.cpp and transformers,
# both correct, themselves diverge at steps where the gap is 0.22 and 0.05, so
# MARGIN = 0.5 logits.
#
# Free-running: after a divergence the continuations are conditioned on different
# text, so comparison of that prompt stops there (one prompt here starts on a
# near-tie: gap 0.28 for llama.cpp, 0.07 for transformers).
# Teacher-forced: our greedy choice at every recorded step, given the recorded
# engine's own previous tokens, so all 128 steps are compared whatever happens
# earlier; at least MIN_AGREE of them must agree exactly and every disagreement
# must be a near-tie. Observed (2026-11-25): 124/128 vs llama.cpp, 123/128 vs
# transformers.
MARGIN = 0.5
MIN_AGREE = 0.9


def load_recording():
    path = DATA / "reference_greedy.json"
    if not path.exists():
        pytest.skip(f"{path} missing (run tests/recorders/record_reference.py)")
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["llama_cpp", "transformers"])
def test_default_model_greedy_matches_recording(default_model_path, default_llm, engine):
    rec = load_recording()
    if engine not in rec["engines"]:
        pytest.skip(f"no {engine} recording in reference_greedy.json")
    if sha256_file(default_model_path) != rec["model"]["sha256"]:
        pytest.skip(f"{default_model_path} is not the file the recording was made with")
    def check_step(run, step, a):
        top = dict((tid, logit) for tid, logit in run["top5"][step])
        assert a in top, (f"prompt {run['prompt']}: step {step}: we chose {a}, not in {engine}'s top-5 "
                          f"{run['top5'][step]}")
        gap = run["top5"][step][0][1] - top[a]
        assert gap < MARGIN, (f"prompt {run['prompt']}: step {step}: we chose {a}, {engine} chose "
                              f"{run['tokens'][step]}; {engine}'s gap {gap:.3f} >= {MARGIN}")

    agree = total = 0
    for run in rec["engines"][engine]["runs"]:
        ref = run["tokens"]
        # free-running, up to the first divergence
        for step, (a, b) in enumerate(zip(greedy(default_llm, run["prompt"], len(ref)), ref)):
            if a != b:
                check_step(run, step, a)
                break
        # teacher-forced: every step, given the recorded engine's previous tokens
        default_llm.reset()
        default_llm.eval(list(run["prompt"]) + list(ref[:-1]), logits_all=True)
        ours = default_llm.eval_logits[len(run["prompt"]) - 1:].argmax(axis=1)
        for step, (a, b) in enumerate(zip(ours.tolist(), ref)):
            total += 1
            if a == b:
                agree += 1
            else:
                check_step(run, step, a)
    assert agree >= MIN_AGREE * total, f"only {agree}/{total} teacher-forced steps agree with {engine}"
