"""Loading parses a GGUF file once: Llama.metadata comes from the C loader's entries
(pl_model_metadata), decoded value by value, and must equal what the independent Python
reader (pyllama.gguf.read_metadata, which parses the whole header itself) gives."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from support import tiny_models
from pyllama import Llama, ModelError


def scalars(md: dict) -> dict:
    return {k: v for k, v in md.items() if isinstance(v, (str, int, float))}


@pytest.mark.parametrize("use_mmap", [True, False])
@pytest.mark.parametrize("vocab", ["gpt2", "llama"])
def test_metadata_from_the_loader_equals_a_full_parse(tiny_model_factory, vocab, use_mmap):
    extra = {"general.tags": (["a", "b"], gguf.GGUFValueType.ARRAY),
             "test.f64": (2.5, gguf.GGUFValueType.FLOAT64), "test.i8": (-3, gguf.GGUFValueType.INT8),
             "test.bool": (True, gguf.GGUFValueType.BOOL), "test.text": ("caf\u00e9", gguf.GGUFValueType.STRING)}
    path = tiny_model_factory(vocab=vocab, extra_metadata=extra)
    from pyllama.gguf import read_metadata

    llm = Llama(model_path=str(path), n_ctx=16, verbose=False, use_mmap=use_mmap)
    assert llm.metadata == scalars(read_metadata(path))
    assert llm.metadata["test.text"] == "caf\u00e9" and llm.metadata["test.bool"] is True
    # the tokenizer was built from the loader's arrays
    assert llm.tokenizer.n_vocab == tiny_models.n_vocab_of(vocab)


def test_load_does_not_parse_the_file_again(tiny_model_factory, monkeypatch):
    import pyllama.gguf

    def no_second_parse(*a, **k):
        raise AssertionError("the Python reader parsed the file at load")

    monkeypatch.setattr(pyllama.gguf, "read_metadata", no_second_parse)
    monkeypatch.setattr(pyllama.gguf, "read_gguf", no_second_parse)
    llm = Llama(model_path=str(tiny_model_factory()), n_ctx=16, verbose=False)
    llm.eval([1, 2, 3])
    assert np.isfinite(llm.logits).all()


def test_duplicate_key_is_refused(tmp_path):
    spec = tiny_models.TinySpec(extra_metadata={"test.aaaa": (1, gguf.GGUFValueType.UINT32),
                                                "test.bbbb": (2, gguf.GGUFValueType.UINT32)})
    path = tiny_models.write_tiny_gguf(tmp_path / "m.gguf", spec)
    data = path.read_bytes()
    assert data.count(b"test.bbbb") == 1
    path.write_bytes(data.replace(b"test.bbbb", b"test.aaaa"))
    with pytest.raises(ModelError, match="duplicate metadata key 'test.aaaa'"):
        Llama(model_path=str(path), n_ctx=16, verbose=False)
