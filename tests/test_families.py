"""Each supported family against transformers, on tiny random models (tests/support/hf_tiny_models.py).

The model is built by transformers (config + seeded random weights), its logits on a fixed
sequence computed by transformers in float32, and the file written by llama.cpp's own
convert_hf_to_gguf.py as F32. pyllama's logits on that file (F32 KV cache) must match:
rel_err = max|ours - theirs| / max|theirs| < 1e-3 (both sides compute in float32; what is
left is summation order, observed around 1e-6). Every family's difference from llama is
on that path: QK-norm (qwen3, gemma3), llama3 RoPE scaling and a tied output (llama3),
sliding-window attention shorter than the sequence (mistral, gemma3's local layers with
their own RoPE base), fused QKV and gate/up tensors (phi3), embedding scale, post norms,
GELU and norm weights stored as 1 + w (gemma3).

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
    tokens = [int(t) for t in rng.integers(0, tiny_models.n_vocab_of("gpt2"), 11)]
    keep, discard, rest = tokens[:2], tokens[2:6], tokens[6:10]
    shifted = Llama(model_path=path, n_ctx=16, n_threads=1, verbose=False, type_k="f32", type_v="f32")
    shifted.eval(keep + discard + rest)
    shifted.shift_context(n_keep=len(keep), n_discard=len(discard))
    shifted.eval([tokens[10]])
    ref = Llama(model_path=path, n_ctx=16, n_threads=1, verbose=False, type_k="f32", type_v="f32")
    ref.eval(keep + rest + [tokens[10]])
    np.testing.assert_allclose(shifted.logits, ref.logits, rtol=1e-4, atol=1e-4)
    # and the file's numbers are the float64 reference's
    expected = reference.forward(reference.ReferenceModel(path), keep + rest + [tokens[10]])[-1]
    assert reference.rel_err(ref.logits, expected) < 1e-4
