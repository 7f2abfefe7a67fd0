"""Fuzz harness: tokenizer metadata from GGUF files (pyllama.gguf.read_metadata, then
Tokenizer.from_gguf_metadata, the C BPE tables and the special-token splitter).

Input byte 0 picks the mode:
* even: the rest is a GGUF file; its metadata is read and a tokenizer built from it;
* odd: the rest describes a vocabulary directly (one token per line, types and merges
  derived from the bytes), so that the builder sees well-formed arrays of odd content.
A tokenizer that loads must tokenize and detokenize text. Only ModelError and
TokenizerError may be raised; anything else is a finding.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import instrumented, main, scratch_path  # noqa: E402

with instrumented(__name__ == "__main__"):
    import pyllama._bpe  # noqa: F401 - imported lazily by the code: instrumented here
    import pyllama.vocab.from_gguf  # noqa: F401
    from pyllama.errors import ModelError, TokenizerError
    from pyllama.gguf import read_metadata
    from pyllama.tokenizer import Tokenizer

TEXT = "Hello <|im_start|>world\n\t 123 <s>ünï 🙂 </s><unk>[INST]"
_PATH = scratch_path("tokenizer.gguf")


def _exercise(tok: Tokenizer) -> None:
    for special in (False, True):
        ids = tok.tokenize(TEXT, add_bos=None, special=special)
        if any(not 0 <= i < tok.n_vocab for i in ids):
            raise AssertionError(f"token id out of range: {ids}")
        tok.detokenize(ids, special=special)
    d = tok.stream(special=True)
    for i in range(min(tok.n_vocab, 300)):
        d.push(i)
    d.flush()


def _structured(data: bytes) -> dict:
    lines = data.split(b"\n")
    tokens = [ln.decode("utf-8", "surrogateescape") for ln in lines[:400]]
    types = [1 + (sum(ln) % 6) for ln in lines[:400]]  # 1..6
    merges = [f"{tokens[i]} {tokens[i + 1]}" for i in range(0, len(tokens) - 1, 2)]
    model = "gpt2" if data[:1] < b"\x80" else "llama"
    md = {"tokenizer.ggml.model": model, "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
          "tokenizer.ggml.scores": [float(-i) for i in range(len(tokens))],
          "tokenizer.ggml.pre": ["gpt2", "smollm", "qwen2", "llama3", "default", "falcon"][len(data) % 6],
          "tokenizer.ggml.bos_token_id": data[1] if len(data) > 1 else 1,
          "tokenizer.ggml.eos_token_id": data[2] if len(data) > 2 else 2,
          "tokenizer.ggml.add_bos_token": bool(len(data) & 1)}
    return md


def test_one_input(data: bytes) -> None:
    if not data:
        return
    try:
        if data[0] % 2 == 0:
            with open(_PATH, "wb") as f:
                f.write(data[1:])
            md = read_metadata(_PATH)
        else:
            md = _structured(data[1:])
        tok = Tokenizer.from_gguf_metadata(md)
    except (ModelError, TokenizerError):
        return
    try:
        _exercise(tok)
    except TokenizerError:
        return


def _gguf_seed(kind: str) -> bytes:
    import tempfile

    import gguf

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from support import tiny_models

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "v.gguf")
        w = gguf.GGUFWriter(p, "llama")
        for key, (val, vtype) in tiny_models.vocab_metadata(kind).items():
            w.add_key_value(key, val, vtype)
        w.add_string("tokenizer.chat_template", "{{ messages }}")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        with open(p, "rb") as f:
            return f.read()


def seeds():
    yield b"\x00" + _gguf_seed("gpt2")
    yield b"\x00" + _gguf_seed("llama")
    yield b"\x01" + "\n".join(["<unk>", "<s>", "</s>", "<|im_start|>", "a", "b", "ab", "Ġ", "Ġa", "<0x41>"]).encode()
    yield b"\x01\x90" + "\n".join(["<unk>", "<s>", "</s>", "▁", "▁a", "a", "<0x00>", "<0x0A>"]).encode()


if __name__ == "__main__":
    main(test_one_input, seeds)
