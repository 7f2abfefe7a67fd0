"""Tokenizer metadata a model file may get wrong (issue 18): keys of the wrong type,
very long special tokens, merges that no longer match the vocabulary.

A fault in the file's vocabulary is a ModelError naming the key when a model is
loaded (the tokenizer layer, called on its own, raises TokenizerError with the same
message); long tokens simply work.
"""
from __future__ import annotations

import random
import shutil

import gguf
import numpy as np
import pytest

from support import tiny_models
from pyllama import Llama
from pyllama.errors import ModelError, TokenizerError
from pyllama.tokenizer import CONTROL, NORMAL, USER_DEFINED, Tokenizer
from support.tiny_models import TinySpec

T = gguf.GGUFValueType


def _tiny(tmp_path, name, **extra):
    """A tiny gpt2-vocabulary model with some tokenizer keys replaced: key -> (value, type[, subtype])."""
    spec = TinySpec(extra_metadata={k: v[:2] for k, v in extra.items()})
    path = tmp_path / f"{name}.gguf"
    # the tiny writer has no sub-type argument: write the arrays' element type ourselves
    writer_add = gguf.GGUFWriter.add_key_value

    def add(self, key, val, vtype, sub_type=None, **kw):
        if key in extra and len(extra[key]) > 2:
            sub_type = extra[key][2]
        return writer_add(self, key, val, vtype, sub_type=sub_type, **kw)

    gguf.GGUFWriter.add_key_value = add
    try:
        tiny_models.write_tiny_gguf(path, spec)
    finally:
        gguf.GGUFWriter.add_key_value = writer_add
    return str(path)


def _metadata(kind="gpt2", **changes):
    md = {k: v for k, (v, _) in tiny_models.vocab_metadata(kind).items()}
    md.update(changes)
    return md


BAD_KEYS = {
    "merges_u32": ("tokenizer.ggml.merges", (list(range(10)), T.ARRAY, T.UINT32)),
    "tokens_u32": ("tokenizer.ggml.tokens", (list(range(tiny_models.n_vocab_of("gpt2"))), T.ARRAY, T.UINT32)),
    "model_array": ("tokenizer.ggml.model", (["gpt2"], T.ARRAY, T.STRING)),
    "pre_array": ("tokenizer.ggml.pre", (["smollm", "gpt2"], T.ARRAY, T.STRING)),
    "add_bos_array": ("tokenizer.ggml.add_bos_token", ([True, False], T.ARRAY, T.BOOL)),
    "add_eos_array": ("tokenizer.ggml.add_eos_token", ([1, 2, 3], T.ARRAY, T.UINT8)),
    "model_u32": ("tokenizer.ggml.model", (7, T.UINT32)),
}


@pytest.mark.parametrize("case", sorted(BAD_KEYS))
def test_wrongly_typed_tokenizer_key_is_a_model_error_naming_it(tmp_path, case):
    key, value = BAD_KEYS[case]
    path = _tiny(tmp_path, case, **{key: value})
    with pytest.raises(ModelError, match=key.replace(".", r"\.")) as e:
        Llama(model_path=path, n_ctx=16)
    assert "not a" in str(e.value)


def test_wrongly_typed_keys_in_the_tokenizer_layer():
    n = tiny_models.n_vocab_of("gpt2")
    for key, value in (("tokenizer.ggml.merges", np.arange(10, dtype=np.uint32)),
                       ("tokenizer.ggml.tokens", np.arange(n, dtype=np.uint32)),
                       ("tokenizer.ggml.model", ["gpt2"]),
                       ("tokenizer.ggml.pre", np.array([1, 2])),
                       ("tokenizer.ggml.add_bos_token", np.array([True, False]))):
        with pytest.raises(TokenizerError, match=key.replace(".", r"\.")):
            Tokenizer.from_gguf_metadata(_metadata(**{key: value}))
    llama = _metadata("llama", **{"tokenizer.ggml.add_space_prefix": np.array([1, 0])})
    with pytest.raises(TokenizerError, match="add_space_prefix"):
        Tokenizer.from_gguf_metadata(llama)


@pytest.mark.parametrize("length", [1000, 5000, 200_000])
@pytest.mark.parametrize("ttype", [CONTROL, USER_DEFINED])
def test_very_long_special_token_works(tmp_path, length, ttype):
    """A special token of thousands of characters (RecursionError in tokenize(special=True)
    before): the model loads and the token is found in text, and only where it is whole."""
    vocab = tiny_models.gpt2_vocab()
    tokens = list(vocab["tokenizer.ggml.tokens"][0])
    types = list(vocab["tokenizer.ggml.token_type"][0])
    long_tok = "<|" + "".join(chr(0x41 + (i * 7) % 26) for i in range(length)) + "|>"
    tid = tokens.index("<|im_start|>")
    tokens[tid], types[tid] = long_tok, ttype
    path = _tiny(tmp_path, f"long{length}-{ttype}", **{
        "tokenizer.ggml.tokens": (tokens, T.ARRAY), "tokenizer.ggml.token_type": (types, T.ARRAY)})
    with Llama(model_path=path, n_ctx=16) as llm:
        ids = llm.tokenize("a" + long_tok + "b", add_bos=False, special=True)
        assert tid in ids and ids.count(tid) == 1
        broken = long_tok[:-3] + long_tok[-2:]  # one character short: not the token
        assert tid not in llm.tokenize(broken, add_bos=False, special=True)
        assert llm.detokenize([tid], special=True).decode() == long_tok


def test_special_tokens_that_are_each_others_prefixes():
    """1100 control tokens each the prefix of the next (RecursionError before):
    the longest one at each position wins, as in llama.cpp."""
    bytes_vocab = tiny_models.gpt2_vocab()
    tokens = list(bytes_vocab["tokenizer.ggml.tokens"][0])
    types = list(bytes_vocab["tokenizer.ggml.token_type"][0])
    base = len(tokens)
    tokens += ["<" + "y" * k for k in range(1, 1101)]
    types += [CONTROL] * 1100
    tok = Tokenizer.from_gguf_metadata(_metadata(**{"tokenizer.ggml.tokens": tokens,
                                                    "tokenizer.ggml.token_type": types}))
    ids = tok.tokenize("<" + "y" * 1500, add_bos=False, special=True)
    assert ids[0] == base + 1099  # "<" + 1100 "y": the longest
    assert all(types[i] == NORMAL for i in ids[1:])  # the 400 "y" left are text
    assert tok.tokenize("x<yyy<y", add_bos=False, special=True)[1:] == [base + 2, base]


# ---------------------------------------------------------------------------
# damaged copies of the real default model


def _merge_ranges(path):
    """(start, end) byte offsets of each merge string's text in the file (the gguf package's
    reader: an independent parser)."""
    r = gguf.GGUFReader(path)
    f = r.fields["tokenizer.ggml.merges"]
    base = r.data.ctypes.data
    out = []
    for i in f.data:
        part = f.parts[i]
        start = part.ctypes.data - base
        out.append((start, start + part.nbytes))
    return out


@pytest.mark.slow
def test_damaged_default_model_merges_are_model_errors(default_model_path, tmp_path):
    path = str(tmp_path / "damaged.gguf")
    shutil.copyfile(default_model_path, path)
    ranges = _merge_ranges(path)
    rng = random.Random(18)
    mutations = [(ranges[0][0] + (ranges[0][1] - ranges[0][0]) // 2, None),  # near its middle
                 (ranges[5][0], 0x01)]  # a left side that is no token
    for _ in range(10):
        s, e = ranges[rng.randrange(len(ranges))]
        mutations.append((rng.randrange(s, e), rng.randrange(0x21, 0x7F)))
    errors = 0
    for pos, new in mutations:
        with open(path, "r+b") as f:
            f.seek(pos)
            old = f.read(1)
            if new is None:  # the middle of "Ġ t" is its space: no longer "left right"
                new = ord("x") if old == b" " else 0x01
            f.seek(pos)
            f.write(bytes([new]))
        try:
            Llama(model_path=path, n_ctx=16).close()
        except ModelError as e:
            assert "tokenizer.ggml.merges" in str(e) or "merge" in str(e), str(e)
            errors += 1
        # anything else (TokenizerError, IndexError, ...) fails the test
        with open(path, "r+b") as f:
            f.seek(pos)
            f.write(old)
    assert errors >= 2
    Llama(model_path=path, n_ctx=16).close()  # restored: loads again


def test_empty_special_token_in_a_llama2c_tokenizer_does_not_hang(tmp_path):
    """Found by tests/fuzz/fuzz_llama2c_tokenizer.py: an empty <unk> (or a "\\n\\n" <s>, empty
    once its newlines are stripped) made tokenize(special=True) loop forever. Run in a child
    with a deadline, so that a regression fails instead of hanging the suite."""
    import struct
    import subprocess
    import sys

    pieces = [b"", b"\n\n", b"\n</s>\n"] + [b"<0x%02X>" % b for b in range(256)] + [b" ", b"a", b" a"]
    data = struct.pack("<i", 8) + b"".join(struct.pack("<fi", -float(i), len(p)) + p
                                           for i, p in enumerate(pieces))
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(data)
    code = ("import sys; from pyllama.tokenizer import Tokenizer\n"
            "t = Tokenizer.from_file(sys.argv[1])\n"
            "ids = t.tokenize('a a</s>a', add_bos=False, special=True)\n"
            "print(ids, t.decode(ids, special=True))\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # "▁a" twice, </s> as its control token, then "a" (after a special token: its own prefix space)
    assert r.stdout.split("]")[0] + "]" == "[261, 261, 2, 261]"
