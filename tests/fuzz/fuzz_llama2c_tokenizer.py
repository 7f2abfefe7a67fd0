"""Fuzz harness: llama2.c ``tokenizer.bin`` files (Tokenizer.from_llama2c, and the
byte-level vocabulary rebuilt by pyllama.convert for files without byte pieces).

Input bytes 0-1 (little-endian; 0xFFFF: none) are the vocab_size the model asks for;
the rest is the file. Only TokenizerError may be raised; a tokenizer that loads must tokenize and
detokenize text.
"""
from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import instrumented, main, scratch_path  # noqa: E402

with instrumented(__name__ == "__main__"):
    import pyllama._bpe  # noqa: F401 - imported lazily by the code: instrumented here
    import pyllama.convert  # noqa: F401
    import pyllama.vocab.from_gguf  # noqa: F401
    import pyllama.vocab.from_llama2c  # noqa: F401
    from pyllama.errors import TokenizerError
    from pyllama.tokenizer import Tokenizer

_PATH = scratch_path("tokenizer.bin")
TEXT = "Hello world\n <s> ünï 🙂 </s>\x00"


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    vocab_size = int.from_bytes(data[:2], "little")
    if vocab_size == 0xFFFF:
        vocab_size = None
    with open(_PATH, "wb") as f:
        f.write(data[2:])
    try:
        tok = Tokenizer.from_llama2c(_PATH, vocab_size)
    except TokenizerError:
        return
    if vocab_size is not None and tok.n_vocab != vocab_size:
        raise AssertionError(f"asked for {vocab_size} tokens, got {tok.n_vocab}")
    try:
        for special in (False, True):
            ids = tok.tokenize(TEXT, add_bos=True, special=special)
            if any(not 0 <= i < tok.n_vocab for i in ids):
                raise AssertionError(f"token id out of range: {ids}")
            tok.decode(ids, special=special)
        tok.decode(list(range(tok.n_vocab)), special=True)
    except TokenizerError:
        return


def _bin(pieces, max_len=None) -> bytes:
    raw = [p.encode("utf-8") for p in pieces]
    out = [struct.pack("<i", max_len or max(len(r) for r in raw))]
    for i, r in enumerate(raw):
        out.append(struct.pack("<fi", -float(i), len(r)) + r)
    return b"".join(out)


def seeds():
    spm = ["<unk>", "\n<s>\n", "\n</s>\n"] + [f"<0x{b:02X}>" for b in range(256)] + [" ", "e", " t", "he", " the"]
    yield b"\xff\xff" + _bin(spm)
    yield (len(spm) - 2).to_bytes(2, "little") + _bin(spm)
    bpe = ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(0x21, 0x7F)] + ["he", "ll", "hell", "o w"]
    yield b"\xff\xff" + _bin(bpe)


if __name__ == "__main__":
    main(test_one_input, seeds)
