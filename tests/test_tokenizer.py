"""SentencePiece tokenizers (.model, llama2.c tokenizer.bin, GGUF 'llama' vocabulary)
against the sentencepiece library itself, plus the behaviour every tokenizer shares
(BOS/EOS, special tokens, invalid UTF-8, detokenizing, streaming, errors).

The Llama 2 vocabulary comes from ../shared/data (tests skip without it). GGUF
'llama' metadata is built from the .model through sentencepiece's API by
tests/recorders/record_tokenizer_reference.py's `llama2_vocab_metadata`, the same metadata
llama.cpp was recorded on (see test_tokenizer_gguf.py).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pyllama.errors import TokenizerError
from pyllama.tokenizer import Tokenizer, as_text

from recorders.record_tokenizer_reference import llama2_vocab_metadata

DATA = Path(__file__).resolve().parent / "data"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SP_MODEL = SHARED / "llama2-tokenizer.model"
BIN_MODEL = SHARED / "llama2c-tokenizer.bin"

needs_shared = pytest.mark.skipif(not (SP_MODEL.is_file() and BIN_MODEL.is_file()),
                                  reason=f"Llama 2 tokenizer files not found in {SHARED}")


def load_corpus() -> list[bytes]:
    items = json.loads((DATA / "tokenizer_corpus.json").read_text())["corpus"]
    return [bytes.fromhex(it["hex"]) if "hex" in it else it["text"].encode("utf-8") for it in items]


def valid_texts(corpus: list[bytes]) -> list[str]:
    out = []
    for b in corpus:
        try:
            out.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return out


CORPUS = load_corpus()
VALID = valid_texts(CORPUS)


@pytest.fixture(scope="module")
def sp():
    if not SP_MODEL.is_file():
        pytest.skip(f"{SP_MODEL} not found")
    import sentencepiece
    return sentencepiece.SentencePieceProcessor(model_file=str(SP_MODEL))


@pytest.fixture(scope="module")
def spm_tokenizers():
    """The Llama 2 vocabulary loaded three ways."""
    if not (SP_MODEL.is_file() and BIN_MODEL.is_file()):
        pytest.skip(f"Llama 2 tokenizer files not found in {SHARED}")
    return {
        "model": Tokenizer.from_file(SP_MODEL),
        "bin": Tokenizer.from_file(BIN_MODEL),
        "gguf": Tokenizer.from_gguf_metadata(llama2_vocab_metadata(SP_MODEL)),
    }


KINDS = ["model", "bin", "gguf"]


# --------------------------------------------------------------------------- exactness


@needs_shared
@pytest.mark.parametrize("kind", KINDS)
def test_corpus_matches_sentencepiece(spm_tokenizers, sp, kind):
    tok = spm_tokenizers[kind]
    for text in CORPUS:  # bytes, invalid UTF-8 included: sentencepiece reads bytes too
        assert tok.tokenize(text, add_bos=False) == sp.encode(text), text


@needs_shared
@pytest.mark.parametrize("kind", KINDS)
def test_long_text_matches_sentencepiece(spm_tokenizers, sp, kind):
    text = Path(__file__).read_text() + (DATA.parent / "recorders" / "record_tokenizer_reference.py").read_text()
    text += "".join(t + "\n" for t in VALID) * 3
    assert spm_tokenizers[kind].tokenize(text, add_bos=False) == sp.encode(text)


RANDOM_TEXTS = {
    "any": st.text(max_size=60),
    "tricky": st.text(alphabet=st.sampled_from(list("ab <>/s\n▁x.é中😀")), max_size=40),  # spaces, markers
}


@needs_shared
@pytest.mark.parametrize("texts", list(RANDOM_TEXTS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_text_matches_sentencepiece(spm_tokenizers, sp, texts, data):
    text = data.draw(RANDOM_TEXTS[texts], label="text")
    want = sp.encode(text)
    for kind in KINDS:
        assert spm_tokenizers[kind].tokenize(text, add_bos=False) == want, kind


@needs_shared
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
@example(text="\u2581")
@example(text="a\u2581 b\u2581")
def test_roundtrip(spm_tokenizers, text):
    # U+2581 is SentencePiece's space marker: sentencepiece itself decodes it as a space
    # (sp.decode(sp.encode("\u2581")) == " "), so only that character does not come back
    want = text.replace("\u2581", " ")
    for kind in KINDS:
        tok = spm_tokenizers[kind]
        assert tok.decode(tok.tokenize(text)) == want, kind
        assert tok.detokenize(tok.tokenize(text, add_bos=False)) == want.encode(), kind


@needs_shared
@pytest.mark.parametrize("kind", KINDS)
def test_decode_matches_sentencepiece(spm_tokenizers, sp, kind):
    tok = spm_tokenizers[kind]
    for text in VALID:
        ids = sp.encode(text)
        assert tok.decode(ids) == sp.decode(ids) == text
        assert tok.decode([sp.bos_id()] + ids) == text


# ----------------------------------------------------------- BOS/EOS and special tokens


@needs_shared
@pytest.mark.parametrize("kind", KINDS)
def test_bos_eos(spm_tokenizers, sp, kind):
    tok = spm_tokenizers[kind]
    assert (tok.n_vocab, tok.bos_id, tok.eos_id) == (32000, 1, 2)
    assert tok.add_bos and not tok.add_eos
    assert tok.eot_ids == {2}
    hello = sp.encode("Hello")
    assert tok.tokenize("Hello") == [1] + hello
    assert tok.tokenize("Hello", add_bos=True) == [1] + hello
    assert tok.tokenize("Hello", add_bos=False) == hello
    assert tok.tokenize("") == [1]
    assert tok.tokenize("", add_bos=False) == []
    assert tok.token_text(1) == "<s>" and tok.token_text(2) == "</s>"


@needs_shared
@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens(spm_tokenizers, sp, kind):
    tok = spm_tokenizers[kind]
    text = "<s>[INST] Hi [/INST] Hello</s><s>again"
    # special=True: control-token text becomes the token; each text piece after a
    # special token gets SentencePiece's dummy-prefix space (as llama.cpp does)
    want = [1] + sp.encode("[INST] Hi [/INST] Hello") + [2, 1] + sp.encode("again")
    assert tok.tokenize(text, add_bos=False, special=True) == want
    # special=False: plain text
    assert tok.tokenize(text, add_bos=False) == sp.encode(text)
    # and back: control tokens render only with special=True; the dummy-prefix
    # space is dropped after them too
    assert tok.decode(want, special=True) == text
    assert tok.decode(want) == "[INST] Hi [/INST] Helloagain"
    assert tok.detokenize(want) == b"[INST] Hi [/INST] Helloagain"
    assert tok.token_to_piece(1) == b"" and tok.token_to_piece(1, special=True) == b"<s>"
    assert tok.is_special(1) and not tok.is_special(100)


@needs_shared
def test_prev_ids_keeps_the_space(spm_tokenizers, sp):
    tok = spm_tokenizers["gguf"]
    prompt = tok.tokenize("The capital of France is")
    cont = sp.encode("The capital of France is Paris")[len(prompt) - 1:]
    assert tok.token_text(cont[0]) == "▁Paris"
    assert tok.decode(cont) == "Paris"  # start of a text: dummy prefix dropped
    assert tok.decode(cont, prev_ids=prompt) == " Paris"  # continuation: kept
    assert tok.decode(cont, prev_ids=[1]) == "Paris"  # right after BOS: dropped
    st_ = tok.stream(prev_ids=prompt)
    assert "".join(st_.push(i) for i in cont) + st_.flush() == " Paris"


# -------------------------------------------------------------------- invalid input


def test_as_text_replaces_each_bad_byte():
    assert as_text(b"\xe4\xb8 a\xff") == "\ufffd\ufffd a\ufffd"
    assert as_text(b"\xf0\x9f\x98") == "\ufffd" * 3
    assert as_text(b"\xed\xa0\x80") == "\ufffd" * 3  # UTF-8-encoded surrogate: invalid
    assert as_text("x\ud800y") == "x\ufffdy"  # lone surrogate in a str
    assert as_text(bytearray(b"ok")) == "ok"
    with pytest.raises(TypeError):
        as_text(123)


@needs_shared
@pytest.mark.parametrize("kind", KINDS)
def test_invalid_utf8_is_replaced(spm_tokenizers, kind):
    tok = spm_tokenizers[kind]
    for text in CORPUS:
        assert tok.tokenize(text) == tok.tokenize(as_text(text))


# ------------------------------------------------------------------------- streaming


def stream_chunks(tok, ids, **kw):
    s = tok.stream(**kw)
    return [s.push(i) for i in ids] + [s.flush()]


@needs_shared
@pytest.mark.parametrize("kind", KINDS)
def test_stream_concatenates_to_decode(spm_tokenizers, kind):
    tok = spm_tokenizers[kind]
    for text in CORPUS:
        for special in (False, True):
            ids = tok.tokenize(text, special=special)
            chunks = stream_chunks(tok, ids, special=special)
            assert "".join(chunks) == tok.decode(ids, special=special)
            if "\ufffd" not in tok.decode(ids, special=special):
                assert not any("\ufffd" in c for c in chunks)  # no character split


@needs_shared
def test_stream_waits_for_whole_characters(spm_tokenizers):
    tok = spm_tokenizers["gguf"]
    ids = tok.tokenize("a😀b", add_bos=False)  # the emoji is 4 byte-fallback tokens
    assert [tok.token_text(i) for i in ids] == ["▁a", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "b"]
    assert stream_chunks(tok, ids) == ["a", "", "", "", "😀", "b", ""]
    # an incomplete character at the very end is flushed as U+FFFD, as decode shows it
    assert stream_chunks(tok, ids[:3]) == ["a", "", "", "\ufffd"]
    assert tok.decode(ids[:3]) == "a\ufffd"


@needs_shared
def test_stream_leading_space_rule(spm_tokenizers, sp):
    tok = spm_tokenizers["bin"]
    ids = [1] + sp.encode("Hello world") + [2, 1] + sp.encode("Again")
    assert stream_chunks(tok, ids) == ["", "Hello", " world", "", "", "Again", ""]
    assert stream_chunks(tok, ids, special=True) == ["<s>", "Hello", " world", "</s>", "<s>", "Again", ""]


# ---------------------------------------------------------------------------- errors


@needs_shared
def test_bad_ids(spm_tokenizers):
    tok = spm_tokenizers["gguf"]
    for bad in ([32000], [-1], [5, 99999]):
        with pytest.raises(TokenizerError, match="out of range"):
            tok.detokenize(bad)
        with pytest.raises(TokenizerError, match="out of range"):
            tok.stream().push(bad[-1])
    with pytest.raises(TokenizerError):
        tok.detokenize(["a"])
    with pytest.raises(TokenizerError, match="out of range"):
        tok.token_text(32000)


def test_bad_files(tmp_path):
    with pytest.raises(TokenizerError, match="cannot open"):
        Tokenizer.from_file(tmp_path / "missing.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x10\x00\x00garbage" * 3)
    with pytest.raises(TokenizerError):
        Tokenizer.from_file(junk)
    bad_model = tmp_path / "bad.model"
    bad_model.write_bytes(b"not a protobuf")
    with pytest.raises(TokenizerError, match="SentencePiece"):
        Tokenizer.from_file(bad_model)
    # a tokenizer.bin cut in the middle of a token
    tb = tmp_path / "cut.bin"
    tb.write_bytes(struct.pack("<i", 8) + struct.pack("<fi", 0.0, 5) + b"<unk>" + struct.pack("<fi", 0.0, 7) + b"<s")
    with pytest.raises(TokenizerError, match="bad length|truncated"):
        Tokenizer.from_llama2c(tb)


@needs_shared
def test_llama2c_vocab_size(tmp_path):
    tok = Tokenizer.from_llama2c(BIN_MODEL, vocab_size=32000)
    assert tok.n_vocab == 32000
    with pytest.raises(TokenizerError, match="needs 40000"):
        Tokenizer.from_llama2c(BIN_MODEL, vocab_size=40000)


def test_bad_metadata():
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model"):
        Tokenizer.from_gguf_metadata({})
    with pytest.raises(TokenizerError, match="unsupported tokenizer type 'bert'"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(TokenizerError, match="scores"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b"]})
    with pytest.raises(TokenizerError, match="2 entries for 3 tokens"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b", "c"],
                                      "tokenizer.ggml.scores": [0.0, 0.0, 0.0],
                                      "tokenizer.ggml.token_type": [1, 1]})
    gpt2 = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
            "tokenizer.ggml.merges": ["a b"]}
    with pytest.raises(TokenizerError, match="unsupported pre-tokenizer 'nope'"):
        Tokenizer.from_gguf_metadata({**gpt2, "tokenizer.ggml.pre": "nope"})
    with pytest.raises(TokenizerError, match="merges"):
        Tokenizer.from_gguf_metadata({**gpt2, "tokenizer.ggml.merges": ["ab"]})
    with pytest.raises(TokenizerError, match="merges"):
        Tokenizer.from_gguf_metadata({**gpt2, "tokenizer.ggml.merges": ["a c"]})
    tok = Tokenizer.from_gguf_metadata(gpt2)  # no pre-tokenizer named: llama.cpp's default
    assert tok.tokenize("abba", add_bos=False) == [2, 1, 0]
    assert tok.bos_id is None and tok.eos_id is None and not tok.add_bos
    with pytest.raises(TokenizerError, match="no BOS"):
        tok.tokenize("a", add_bos=True)


def test_tiny_spm_vocab_without_byte_pieces():
    # no <0xXX> pieces: characters missing from the vocabulary become <unk>
    md = {"tokenizer.ggml.model": "llama",
          "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab"],
          "tokenizer.ggml.scores": [0, 0, 0, -5, -6, -7, -1, -2, -3],
          "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 1, 1, 1]}
    tok = Tokenizer.from_gguf_metadata(md)
    assert tok.tokenize("ab") == [1, 8]  # ▁a (score -1) first, then ▁a+b = ▁ab
    assert tok.tokenize("abxb", add_bos=False) == [8, 0, 5]
    assert tok.decode([1, 8, 0, 5]) == "abb"
