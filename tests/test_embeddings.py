"""Llama.embed / create_embedding: pooled final hidden states against the float64 numpy
reference (tests/support/reference.py) on tiny F32 models, with pooling from the file's metadata."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf", reason="the gguf package writes the tiny models")

from support import reference  # noqa: E402
from gguf import GGUFValueType  # noqa: E402

from pyllama import ContextOverflowError, Llama  # noqa: E402


def ref_embedding(path, ids, pooling):
    h = reference.forward(reference.ReferenceModel(path), ids, hidden=True)
    v = {1: h.mean(axis=0), 2: h[0], 3: h[-1]}[pooling]
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("pooling", [None, 1, 2, 3])
def test_embedding_matches_reference(tiny_model_factory, pooling):
    extra = {} if pooling is None else {"llama.pooling_type": (pooling, GGUFValueType.UINT32)}
    path = tiny_model_factory(extra_metadata=extra, context_length=64)
    with Llama(str(path), n_ctx=64, n_threads=1, embedding=True, type_k="f32", type_v="f32") as llm:
        texts = ["hello world", "a longer sentence with more words in it"]
        out = llm.embed(texts)
        for text, vec in zip(texts, out):
            ids = llm.tokenize(text.encode(), add_bos=True)
            want = ref_embedding(path, ids, pooling or 1)
            got = np.asarray(vec)
            assert abs(np.linalg.norm(got) - 1) < 1e-6
            assert np.max(np.abs(got - want)) < 2e-4, np.max(np.abs(got - want))
        resp = llm.create_embedding("hello world")
        assert resp["object"] == "list" and resp["data"][0]["index"] == 0
        assert resp["usage"]["prompt_tokens"] == len(llm.tokenize(b"hello world"))
        assert np.allclose(resp["data"][0]["embedding"], out[0])


def test_embedding_options_and_errors(tiny_model_factory):
    path = tiny_model_factory(context_length=64)
    with Llama(str(path), n_ctx=16, n_threads=1) as plain:
        with pytest.raises(ValueError, match="embedding=True"):
            plain.embed("hi")
    with Llama(str(path), n_ctx=16, n_threads=1, embedding=True, type_k="f32", type_v="f32") as llm:
        raw = np.asarray(llm.embed("hello world", normalize=False))
        unit = np.asarray(llm.embed("hello world"))
        assert np.allclose(raw / np.linalg.norm(raw), unit, atol=1e-6)
        long = "word " * 40
        with pytest.raises(ContextOverflowError):
            llm.embed(long, truncate=False)
        vec, n = llm.embed(long, return_count=True)
        assert n == 16 and len(vec) == llm.config["dim"]
        with pytest.raises(ValueError):
            llm.embed([1, 2])
        # the KV cache is free for generation afterwards
        llm.create_completion("hello", max_tokens=2)


def test_pooling_none_gives_one_vector_per_token(tiny_model_factory):
    path = tiny_model_factory(extra_metadata={"llama.pooling_type": (0, GGUFValueType.UINT32)}, context_length=64)
    with Llama(str(path), n_ctx=64, n_threads=1, embedding=True, type_k="f32", type_v="f32") as llm:
        ids = llm.tokenize(b"hello world")
        rows = np.asarray(llm.embed("hello world"))
        h = reference.forward(reference.ReferenceModel(path), ids, hidden=True)
        assert rows.shape == h.shape
        assert np.max(np.abs(rows - h / np.linalg.norm(h, axis=1, keepdims=True))) < 2e-4
