"""The byte-level BPE encoder (csrc/bpe.c, pyllama's only one) against the `tokenizers` BPE model.

pyllama merges in C; the reference here is the Rust BPE model of Hugging Face's
`tokenizers` (a test dependency only), fed the same vocabulary, merges and
pre-tokens. tests/test_tokenizer_gguf.py compares whole texts with llama.cpp's
recorded output; this file goes piece by piece, with random pieces, vocabularies
built to hit the corner cases (duplicate tokens and merges, overlapping merges,
bytes without a token, ignore_merges) and damaged arrays; then the C tables'
pickling, empty tokens and lookups from threads.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyllama._bpe import BYTE_TO_CHAR, ByteLevelBpe
from pyllama.errors import TokenizerError
from pyllama.gguf import StringArray, read_metadata

tokenizers = pytest.importorskip("tokenizers")


class ReferenceBpe:
    """The same job done by `tokenizers.models.BPE` (pyllama's encoder before csrc/bpe.c)."""

    def __init__(self, tokens, merges, ignore_merges=False):
        import regex

        vocab = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
        pairs = [(m[:m.find(" ", 1)], m[m.find(" ", 1) + 1:]) for m in merges]
        self.model = tokenizers.models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges)
        missing = "".join(c for c in BYTE_TO_CHAR if c not in vocab)
        self.missing = regex.compile("[" + regex.escape(missing) + "]") if missing else None

    def encode_piece(self, piece: bytes) -> list[int]:
        symbols = "".join(BYTE_TO_CHAR[b] for b in piece)
        runs = self.missing.split(symbols) if self.missing is not None else [symbols]
        return [t.id for run in runs if run for t in self.model.tokenize(run)]


def c_pieces(bpe: ByteLevelBpe, pieces: list[bytes]) -> list[int]:
    """Encode already-cut pieces with the C encoder (one call, as ByteLevelBpe.encode makes it)."""
    from itertools import accumulate

    ffi, lib = bpe._ffi, bpe._lib
    data = b"".join(pieces)
    out = ffi.new("int32_t[]", max(len(data), 1))
    n = lib.pl_bpe_encode(bpe._bpe, data, len(data), list(accumulate(map(len, pieces))), len(pieces), out, len(data))
    assert n >= 0, ffi.string(lib.pl_last_error())
    return ffi.unpack(out, n)


@pytest.fixture(scope="module")
def default_vocab(default_model_path):
    md = read_metadata(default_model_path)
    tokens, merges = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.merges"]
    assert isinstance(tokens, StringArray)
    c = ByteLevelBpe(tokens, merges, "gpt2")
    ref = ReferenceBpe(list(tokens), list(merges))
    c_llama3 = ByteLevelBpe(tokens, merges, "llama3")
    ref_llama3 = ReferenceBpe(list(tokens), list(merges), ignore_merges=True)
    return tokens, (c, ref), (c_llama3, ref_llama3)


def _words(tokens) -> list[bytes]:
    """Pieces with realistic structure: the vocabulary's own tokens, glued in pairs and threes."""
    rng = random.Random(7)
    texts = [tokens[rng.randrange(len(tokens))] for _ in range(3000)]
    out = []
    for i in range(0, len(texts) - 3, 3):
        glued = "".join(texts[i:i + rng.randint(1, 3)])
        out.append(bytes(BYTE_TO_CHAR.index(ch) if ch in BYTE_TO_CHAR else 0x41 for ch in glued))
    return out


def test_pieces_match_tokenizers_on_the_default_vocabulary(default_vocab):
    tokens, (c, ref), (c3, ref3) = default_vocab
    pieces = _words(tokens)
    want = [i for p in pieces for i in ref.encode_piece(p)]
    assert c_pieces(c, pieces) == want
    want3 = [i for p in pieces for i in ref3.encode_piece(p)]
    assert c_pieces(c3, pieces) == want3


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(piece=st.one_of(st.binary(max_size=40), st.text(max_size=20).map(lambda s: s.encode("utf-8", "replace"))))
def test_random_pieces_match_tokenizers(default_vocab, piece):
    _, (c, ref), (c3, ref3) = default_vocab
    assert c_pieces(c, [piece]) == ref.encode_piece(piece)
    assert c_pieces(c3, [piece]) == ref3.encode_piece(piece)


def test_long_piece(default_vocab):
    """A piece of 200k bytes (the heap keeps it near-linear; a quadratic scan would not finish)."""
    _, (c, ref), _ = default_vocab
    piece = (b"   abc" * 40000)[:200_000]
    assert c_pieces(c, [piece]) == ref.encode_piece(piece)


def test_a_long_text_is_cut_as_a_short_one(default_vocab, monkeypatch):
    """Pieces of _CONCURRENT_FROM characters or more are split with the GIL released (the regex
    module's concurrent=True, for a server's other threads): the same pieces and ids as with the
    GIL held throughout, and the ids the reference BPE gives those pieces."""
    import pyllama._bpe as bpe_module

    tokens, (c, ref), _ = default_vocab
    rng = random.Random(3)
    text = "".join(rng.choice(["The keeper's lamp, ", "3.14159 ", "\n\n", "   ", "naïve café ", "日本語 ", "x" * 40,
                               "🙂 ", "don't", "\t{'a': [1, 2]}"]) for _ in range(3000))
    assert len(text) > 4 * bpe_module._CONCURRENT_FROM
    pieces, ids = c.pre_tokenize(text), c.encode(text)
    monkeypatch.setattr(bpe_module, "_CONCURRENT_FROM", 1 << 60)
    assert c.pre_tokenize(text) == pieces
    assert c.encode(text) == ids
    assert ids == [i for p in pieces for i in ref.encode_piece(p.encode("utf-8", "surrogateescape"))]


def test_token_bytes_and_texts(default_vocab):
    tokens, (c, _), _ = default_vocab
    for i in range(0, len(tokens), 7):
        t = tokens[i]
        assert c.token_text(i) == t
        want = b"".join(bytes([BYTE_TO_CHAR.index(ch)]) if ch in BYTE_TO_CHAR else ch.encode() for ch in t)
        assert c.token_bytes(i) == want
    with pytest.raises(IndexError):
        c.token_bytes(len(tokens))


A = [BYTE_TO_CHAR[b] for b in range(256)]  # every byte has a token: ids 0..255


@pytest.mark.parametrize("extra, merges", [
    (["aa", "aaa", "aaaa"], ["a a", "aa a", "aa aa"]),          # overlapping merges on a run
    (["ab", "bc", "abc"], ["b c", "a b", "ab c"]),                # the lower rank wins, not the first pair
    (["ab", "ab", "abc", "bc"], ["a b", "b c", "a b", "ab c"]),   # a duplicate token and a duplicate merge
    (["Ġa", "Ġab", "ab"], ["Ġ a", "a b", "Ġa b", "Ġ ab"]),
])
@pytest.mark.parametrize("pre", ["gpt2", "llama3"])
def test_corner_vocabularies_match_tokenizers(extra, merges, pre):
    tokens = A + extra + ["cab", "bca"]  # tokens no merge reaches: only ignore_merges (llama3) takes them
    c = ByteLevelBpe(tokens, merges, pre)
    ref = ReferenceBpe(tokens, merges, ignore_merges=pre == "llama3")
    if pre == "llama3":
        assert c_pieces(c, [b"cab"]) == [len(tokens) - 2]
    rng = random.Random(3)
    for _ in range(300):
        piece = bytes(rng.choice(b"abc ") for _ in range(rng.randint(1, 12)))
        assert c_pieces(c, [piece]) == ref.encode_piece(piece), piece


def test_bytes_without_tokens_split_and_vanish():
    tokens = [t for t in A if t != "x"] + ["ab", "ba"]
    c = ByteLevelBpe(tokens, ["a b", "b a"], "gpt2")
    ref = ReferenceBpe(tokens, ["a b", "b a"])
    for piece in [b"axb", b"abxba", b"xxx", b"x", b"bxa"]:
        assert c_pieces(c, [piece]) == ref.encode_piece(piece)
    assert c_pieces(c, [b"axb"]) == [tokens.index("a"), tokens.index("b")]


def test_damaged_arrays_raise():
    good = StringArray.from_strings(A + ["ab"])
    merges = StringArray.from_strings(["a b"])
    ByteLevelBpe(good, merges, "gpt2")
    cut = StringArray(good.raw[:-1], good._starts)  # the last string runs past the array
    with pytest.raises(TokenizerError, match="runs past"):
        ByteLevelBpe(cut, merges, "gpt2")
    huge = StringArray(struct.pack("<Q", 1 << 62) + b"x", [0, 9])
    with pytest.raises(TokenizerError, match="runs past"):
        ByteLevelBpe(huge, merges, "gpt2")
    with pytest.raises(TokenizerError, match="not 'left right'"):
        ByteLevelBpe(good, ["ab"], "gpt2")
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        ByteLevelBpe(good, ["a q"], "gpt2")  # "a" and "q" are tokens, "aq" is not


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
def test_c_fuzz_under_sanitizers():
    """tests/c/fuzz_bpe.c: random vocabularies round-trip; damaged arrays are refused or stay in bounds."""
    script = Path(__file__).resolve().parent / "c" / "run_bpe.sh"
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bpe fuzz: ok" in proc.stdout


def test_tokenizer_pickles(default_model_path):
    """A Tokenizer round-trips through pickle (the C tables are rebuilt from their own contents)."""
    import pickle

    from pyllama.tokenizer import Tokenizer

    tok = Tokenizer.from_file(default_model_path)
    back = pickle.loads(pickle.dumps(tok))
    text = "Hello wörld, 12345 <|im_start|>user\n  spaces\t\ttabs 😀"
    for special in (False, True):
        assert back.tokenize(text, special=special) == tok.tokenize(text, special=special)
    ids = tok.tokenize(text, special=True)
    assert back.detokenize(ids, special=True) == tok.detokenize(ids, special=True)
    assert [back.token_text(i) for i in range(0, tok.n_vocab, 997)] == [tok.token_text(i) for i in range(0, tok.n_vocab, 997)]


def test_a_duplicated_merge_pickles_with_its_later_rank():
    import pickle

    tokens = A + ["ab", "bc", "abc"]
    merges = ["b c", "a b", "ab c", "b c"]  # "b c" last: "ab" + "c" now ranks before it
    c = ByteLevelBpe(tokens, merges, "gpt2")
    ref = ReferenceBpe(tokens, merges)
    back = pickle.loads(pickle.dumps(c))
    for piece in [b"abc", b"bcab", b"abcbc"]:
        assert c_pieces(back, [piece]) == c_pieces(c, [piece]) == ref.encode_piece(piece)


def test_an_empty_token_renders_its_llama_cpp_name(tmp_path):
    """llama.cpp names an empty token "[EMPTY_<id>]"; detokenizing it gives that name, as before
    the C tables (the GGUF file path, where the strings arrive as a StringArray)."""
    from pyllama.gguf import write_gguf
    from pyllama.tokenizer import Tokenizer

    tokens = A + ["", "ab"]
    path = tmp_path / "empty.gguf"
    write_gguf(path, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
                      "tokenizer.ggml.merges": ["a b"]}, [])
    tok = Tokenizer.from_file(path)
    assert tok.token_text(256) == "[EMPTY_256]"
    assert tok.detokenize([256, 257]) == b"[EMPTY_256]ab"
    assert tok.tokenize("ab", add_bos=False) == [257]


def test_token_lookups_from_threads(default_model_path):
    """cffi releases the GIL in C calls: concurrent lookups must not share an out-parameter."""
    from concurrent.futures import ThreadPoolExecutor

    from pyllama.tokenizer import Tokenizer

    tok = Tokenizer.from_file(default_model_path)
    ids = list(range(0, tok.n_vocab, 3))
    want = [tok.token_to_piece(i) for i in ids]
    with ThreadPoolExecutor(4) as pool:
        for got in pool.map(lambda _: [tok.token_to_piece(i) for i in ids], range(8)):
            assert got == want
