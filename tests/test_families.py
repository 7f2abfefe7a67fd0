"""Each supported family against transformers, on tiny random models (tests/support/hf_tiny_models.py).

The model is built by transformers (config + seeded random weights), its logits on a fixed
sequence computed by transformers in float32, and the file written by llama.cpp's own
convert_hf_to_gguf.py as F32. pyllama's logits on that file (F32 KV cache) must match:
rel_err = max|ours - theirs| / max|theirs| < 1e-3 (both sides compute in float32; what is
left is summation order, observed around 1e-6). Every family's difference from llama is
on that path: QK-norm (qwen3, gemma3), llama3 RoPE scaling and a tied output (llama3),
sliding-window attention shorter than the sequence (mistral, gemma3's local layers with
their own RoPE base), fused QKV and gate/up tensors (phi3), embedding scale, post norms,
GELU and norm weights stored as 1 + w (gemma3). Phi-3's LongRoPE (the 128k variants) is
checked in both of its regimes, with context shifts and malformed factor tensors, below.

Skips (with the reason) when torch, transformers or llama.cpp's converter are absent.
The generated files go to a cache directory (PYLLAMA_TEST_CACHE or ~/.cache/pyllama-tests/families).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import hf_tiny_models
from support import reference
from support import tiny_models
from pyllama import Llama, ModelError

TOL = 1e-3
HERE = Path(__file__).resolve().parent


def converter_dir() -> Path | None:
    candidates = [os.environ.get("PYLLAMA_LLAMACPP_SRC", ""),
                  str(Path.home() / ".cache/pyllama/llama.cpp-0.3.36/src")]
    for c in candidates:
        if c and (Path(c) / "convert_hf_to_gguf.py").is_file() and (Path(c) / "gguf-py").is_dir():
            return Path(c)
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("PYLLAMA_TEST_CACHE", Path.home() / ".cache/pyllama-tests/families"))


def tiny_family(family: str) -> Path:
    pytest.importorskip("torch", reason="torch is not installed (pip install torch: CPU wheel)")
    pytest.importorskip("transformers", reason="transformers is not installed")
    src = converter_dir()
    if src is None:
        pytest.skip("llama.cpp's convert_hf_to_gguf.py not found (set PYLLAMA_LLAMACPP_SRC to llama.cpp's source)")
    out = cache_dir()
    path = out / f"{family}.gguf"
    stamp = out / f"{family}.source"
    # regenerate when the generating script changes
    version = str(os.path.getmtime(HERE / "support" / "hf_tiny_models.py"))
    if not path.is_file() or not stamp.is_file() or stamp.read_text() != version:
        r = subprocess.run([sys.executable, str(HERE / "support" / "hf_tiny_models.py"), family, str(out), str(src)],
                           capture_output=True, text=True, timeout=600)
        if r.returncode:
            pytest.fail(f"generating the tiny {family} model failed:\n{r.stderr[-3000:]}")
        stamp.write_text(version)
    return path


@pytest.mark.parametrize("family", hf_tiny_models.FAMILIES)
def test_family_logits_match_transformers(family):
    path = tiny_family(family)
    tokens = [int(t) for t in np.load(path.with_suffix(".tokens.npy"))]
    expected = np.load(path.with_suffix(".logits.npy"))
    llm = Llama(model_path=str(path), n_ctx=32, n_threads=2, verbose=False, type_k="f32", type_v="f32")
    llm.eval(tokens, logits_all=True)
    ours = np.asarray(llm.eval_logits, dtype=np.float64)
    err = reference.rel_err(ours, expected)
    assert err < TOL, f"{family}: rel_err {err:.3g} vs transformers"


@pytest.mark.parametrize("family", hf_tiny_models.FAMILIES)
def test_family_decode_matches_batch(family):
    """Token by token through the cache (the decode paths, windowed ones included) gives the batch's logits."""
    path = tiny_family(family)
    tokens = [int(t) for t in np.load(path.with_suffix(".tokens.npy"))]
    expected = np.load(path.with_suffix(".logits.npy"))
    llm = Llama(model_path=str(path), n_ctx=32, n_threads=2, verbose=False, type_k="f32", type_v="f32")
    for i, t in enumerate(tokens):
        llm.eval([t])
        err = reference.rel_err(np.asarray(llm.logits, dtype=np.float64), expected[i])
        assert err < TOL, f"{family}: token {i}: rel_err {err:.3g} vs transformers"


@pytest.mark.parametrize("family", hf_tiny_models.FAMILIES)
def test_family_logits_match_numpy_reference(family):
    """The same files against tests/support/reference.py (float64; reads the file with the `gguf` package),
    which is checked against transformers on the way: three implementations agree."""
    path = tiny_family(family)
    tokens = [int(t) for t in np.load(path.with_suffix(".tokens.npy"))]
    ref = reference.forward(reference.ReferenceModel(path), tokens)
    assert reference.rel_err(ref, np.load(path.with_suffix(".logits.npy"))) < TOL
    llm = Llama(model_path=str(path), n_ctx=32, n_threads=1, verbose=False, type_k="f32", type_v="f32")
    llm.eval(tokens, logits_all=True)
    err = reference.rel_err(np.asarray(llm.eval_logits, dtype=np.float64), ref)
    assert err < 1e-4, f"{family}: rel_err {err:.3g} vs the float64 reference"


def test_unknown_architecture_lists_supported(tmp_path):
    path = tiny_models.write_tiny_gguf(tmp_path / "m.gguf", tiny_models.TinySpec(arch="mamba"))
    with pytest.raises(ModelError, match=r"architecture 'mamba' is not supported.*gemma3.*phi3"):
        Llama(model_path=str(path), n_ctx=16, verbose=False)


def test_family_tensor_missing_or_misshapen_is_named(tmp_path):
    spec = tiny_models.TinySpec(arch="qwen3")
    weights = tiny_models.random_weights(spec)
    path = tiny_models.write_tiny_gguf(tmp_path / "missing.gguf", spec, weights)
    with pytest.raises(ModelError, match=r"tensor 'blk\.0\.attn_q_norm\.weight' is missing"):
        Llama(model_path=str(path), n_ctx=16, verbose=False)
    for layer in range(spec.n_layers):
        weights[f"blk.{layer}.attn_q_norm.weight"] = np.ones(spec.head_dim, dtype=np.float32)
        weights[f"blk.{layer}.attn_k_norm.weight"] = np.ones(spec.head_dim + 2, dtype=np.float32)
    path = tiny_models.write_tiny_gguf(tmp_path / "misshapen.gguf", spec, weights)
    with pytest.raises(ModelError, match=r"tensor 'blk\.0\.attn_k_norm\.weight' has shape \[18, 1\]"):
        Llama(model_path=str(path), n_ctx=16, verbose=False)


def assert_shift_equals_fresh(path, tokens):
    """Eleven tokens into an n_ctx 16 context: 2 kept, 4 discarded by a shift, 4 more, then one;
    the logits equal a fresh evaluation of the kept tokens, and those the float64 reference's."""
    keep, discard, rest = tokens[:2], tokens[2:6], tokens[6:10]
    shifted = Llama(model_path=path, n_ctx=16, n_threads=1, verbose=False, type_k="f32", type_v="f32")
    shifted.eval(keep + discard + rest)
    shifted.shift_context(n_keep=len(keep), n_discard=len(discard))
    shifted.eval([tokens[10]])
    fresh = Llama(model_path=path, n_ctx=16, n_threads=1, verbose=False, type_k="f32", type_v="f32")
    fresh.eval(keep + rest + [tokens[10]])
    np.testing.assert_allclose(shifted.logits, fresh.logits, rtol=1e-4, atol=1e-4)
    expected = reference.forward(reference.ReferenceModel(path), keep + rest + [tokens[10]], n_ctx=16)[-1]
    assert reference.rel_err(fresh.logits, expected) < 1e-4


@pytest.mark.parametrize("pattern", [6, 1], ids=["windowed-local-rope", "global"])
def test_gemma3_context_shift_matches_fresh_evaluation(tmp_path, pattern):
    """A one-layer gemma3 (its keys depend on each token alone): after a shift the cache equals a
    fresh evaluation of the kept tokens, so each layer's keys were re-rotated with its own RoPE
    (layer 0 is windowed, with the local base, under pattern 6; global under pattern 1)."""
    import gguf

    spec = tiny_models.TinySpec(arch="gemma3", n_layers=1, rope_base=1e6, extra_metadata={
        "gemma3.attention.sliding_window": (3, gguf.GGUFValueType.UINT32),
        "gemma3.attention.sliding_window_pattern": (pattern, gguf.GGUFValueType.UINT32)})
    weights = tiny_models.random_weights(spec)
    rng = np.random.default_rng(1)
    for suffix, n in (("attn_q_norm", spec.head_dim), ("attn_k_norm", spec.head_dim),
                      ("post_attention_norm", spec.dim), ("post_ffw_norm", spec.dim)):
        weights[f"blk.0.{suffix}.weight"] = (1 + 0.3 * rng.standard_normal(n)).astype(np.float32)
    path = str(tiny_models.write_tiny_gguf(tmp_path / "g.gguf", spec, weights))
    assert_shift_equals_fresh(path, [int(t) for t in rng.integers(0, tiny_models.n_vocab_of("gpt2"), 11)])


# ---------------------------------------------------------------------------------------------
# Phi-3 LongRoPE (the 128k variants): per-pair frequency divisors, a long and a short set chosen
# by the context size, and an attention factor on cos and sin. tests/support/hf_tiny_models.py explains
# how the two runs make transformers (which decides by sequence length) and pyllama (by n_ctx)
# use the same set.

LONGROPE_RUNS = {"short": ("", hf_tiny_models.LONGROPE_ORIG_CTX),
                 "long": (".long", hf_tiny_models.LONGROPE_LONG_CTX)}


def longrope_run(regime):
    path = tiny_family(hf_tiny_models.LONGROPE)
    suffix, n_ctx = LONGROPE_RUNS[regime]
    tokens = [int(t) for t in np.load(path.with_suffix(f"{suffix}.tokens.npy"))]
    return path, tokens, np.load(path.with_suffix(f"{suffix}.logits.npy")), n_ctx


@pytest.mark.parametrize("regime", LONGROPE_RUNS)
def test_phi3_longrope_matches_transformers(regime):
    """Batch and token-by-token logits equal transformers' in each regime; so does the float64
    reference, and pyllama equals the reference more closely still."""
    path, tokens, expected, n_ctx = longrope_run(regime)
    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=2, verbose=False, type_k="f32", type_v="f32")
    llm.eval(tokens, logits_all=True)
    ours = np.asarray(llm.eval_logits, dtype=np.float64)
    err = reference.rel_err(ours, expected)
    assert err < TOL, f"{regime}: rel_err {err:.3g} vs transformers"
    llm.reset()
    for i, t in enumerate(tokens):
        llm.eval([t])
        err = reference.rel_err(np.asarray(llm.logits, dtype=np.float64), expected[i])
        assert err < TOL, f"{regime}: token {i}: rel_err {err:.3g} vs transformers"
    ref = reference.forward(reference.ReferenceModel(path), tokens, n_ctx=n_ctx)
    assert reference.rel_err(ref, expected) < TOL
    assert reference.rel_err(ours, ref) < 1e-4


def test_phi3_longrope_factor_set_and_attention_factor_matter():
    """The comparisons above can fail: the other factor set, or no attention factor, is far off."""
    path, tokens, expected, _ = longrope_run("short")
    llm = Llama(model_path=str(path), n_ctx=hf_tiny_models.LONGROPE_LONG_CTX, n_threads=1, verbose=False,
                type_k="f32", type_v="f32")
    llm.eval(tokens, logits_all=True)  # n_ctx above the original context: the long factors
    assert reference.rel_err(np.asarray(llm.eval_logits, dtype=np.float64), expected) > 0.1
    model = reference.ReferenceModel(path)
    assert model.rope_attn_factor == pytest.approx((1 + np.log(4) / np.log(16)) ** 0.5, rel=1e-6)
    model.rope_attn_factor = 1.0
    assert reference.rel_err(reference.forward(model, tokens, n_ctx=hf_tiny_models.LONGROPE_ORIG_CTX),
                             expected) > 0.1


def longrope_gguf(path, n_layers=1, orig_ctx=8, attn_factor=1.3, long=None, short=None, long_type="F32",
                  metadata=None):
    """A tiny phi3 file (tests/support/tiny_models.py's writer, gate and up fused as phi3 stores them) with
    LongRoPE factors; long/short: divisor arrays (None: defaults; False: leave the tensor out)."""
    import gguf

    spec = tiny_models.TinySpec(arch="phi3", n_layers=n_layers, extra_metadata={
        "phi3.rope.scaling.original_context_length": (orig_ctx, gguf.GGUFValueType.UINT32),
        "phi3.rope.scaling.attn_factor": (attn_factor, gguf.GGUFValueType.FLOAT32), **(metadata or {})})
    half = spec.head_dim // 2
    weights = tiny_models.random_weights(spec)
    for layer in range(n_layers):
        gate = weights.pop(f"blk.{layer}.ffn_gate.weight")
        weights[f"blk.{layer}.ffn_up.weight"] = np.concatenate([gate, weights[f"blk.{layer}.ffn_up.weight"]])
    sets = {"rope_factors_long.weight": np.linspace(1.5, 8.0, half) if long is None else long,
            "rope_factors_short.weight": np.linspace(1.0, 2.0, half) if short is None else short}
    for name, values in sets.items():
        if values is not False:
            weights[name] = np.asarray(values, dtype=np.float32)
    spec.type_overrides["rope_factors_long.weight"] = long_type
    return str(tiny_models.write_tiny_gguf(path, spec, weights))


@pytest.mark.parametrize("orig_ctx", [8, 16], ids=["long", "short"])
def test_phi3_longrope_context_shift_matches_fresh_evaluation(tmp_path, orig_ctx):
    """One layer (keys depend on their token alone): after a shift the cache equals a fresh
    evaluation of the kept tokens, so keys are re-rotated with the context's factor set, and the
    attention factor is not compounded on the shifted keys (llama.cpp's shift multiplies the
    cached keys by it once more; pyllama applies it to the scores, keeping keys pure rotations)."""
    path = longrope_gguf(tmp_path / "p.gguf", orig_ctx=orig_ctx)
    rng = np.random.default_rng(3)
    assert_shift_equals_fresh(path, [int(t) for t in rng.integers(0, tiny_models.n_vocab_of("gpt2"), 11)])


@pytest.mark.parametrize("case, message", [
    ("no-short", r"tensor 'rope_factors_short\.weight' is missing"),
    ("no-long", r"tensor 'rope_factors_long\.weight' is missing"),
    ("misshapen", r"tensor 'rope_factors_long\.weight' has shape \[9, 1\]"),
    ("quantized", r"tensor 'rope_factors_long\.weight' has type Q8_0"),
    ("zero", r"tensor 'rope_factors_short\.weight' holds 0 at index 3"),
    ("negative-attn-factor", r"'phi3\.rope\.scaling\.attn_factor' must be a positive number"),
])
def test_phi3_longrope_bad_factors_are_named(tmp_path, case, message):
    zero = np.linspace(1.0, 2.0, 8)
    zero[3] = 0.0
    kwargs = {"no-short": dict(short=False), "no-long": dict(long=False), "misshapen": dict(long=np.ones(9)),
              "quantized": dict(long=np.ones(32), long_type="Q8_0"), "zero": dict(short=zero),
              "negative-attn-factor": dict(attn_factor=-1.0)}[case]
    path = longrope_gguf(tmp_path / f"{case}.gguf", **kwargs)
    with pytest.raises(ModelError, match=message):
        Llama(model_path=path, n_ctx=16, verbose=False)


def test_phi3_longrope_batch_of_forks(tmp_path):
    """Forks evaluated in one batch rotate with the batch's first context's table: forks whose n_ctx
    picks the same factor set give their own eval's logits; one with the other set is refused."""
    from pyllama import PyllamaError
    from pyllama.batch import eval_batch

    path = longrope_gguf(tmp_path / "p.gguf", n_layers=2, orig_ctx=16)
    rng = np.random.default_rng(5)
    a, b = ([int(t) for t in rng.integers(0, tiny_models.n_vocab_of("gpt2"), 9)] for _ in range(2))
    parent = Llama(model_path=path, n_ctx=32, n_threads=1, verbose=False, type_k="f32", type_v="f32")
    same = parent.fork(n_ctx=24)  # also above the original 16: the long factors
    eval_batch([(parent, a), (same, b)])
    alone = Llama(model_path=path, n_ctx=24, n_threads=1, verbose=False, type_k="f32", type_v="f32")
    alone.eval(b)
    np.testing.assert_allclose(same.logits, alone.logits, rtol=1e-4, atol=1e-4)
    other = parent.fork(n_ctx=16)  # the short factors
    with pytest.raises(PyllamaError, match="rotates positions unlike context 0's"):
        eval_batch([(parent, a[:1]), (other, b)])


def test_phi3_longrope_switches_just_above_the_original_context(tmp_path):
    """n_ctx = original context: the short factors; one more: the long ones (the numpy reference
    told which set each context takes)."""
    path = longrope_gguf(tmp_path / "p.gguf", n_layers=2, orig_ctx=12)
    tokens = [int(t) for t in np.random.default_rng(2).integers(0, tiny_models.n_vocab_of("gpt2"), 10)]
    model = reference.ReferenceModel(path)
    got = {}
    for n_ctx in (12, 13):
        llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=1, verbose=False, type_k="f32", type_v="f32")
        llm.eval(tokens, logits_all=True)
        got[n_ctx] = np.asarray(llm.eval_logits, dtype=np.float64)
        assert reference.rel_err(got[n_ctx], reference.forward(model, tokens, n_ctx=n_ctx)) < 1e-4, n_ctx
    assert reference.rel_err(got[12], got[13]) > 0.05
