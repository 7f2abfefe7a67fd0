"""A :class:`~pyllama.tokenizer.Tokenizer` from llama2.c's ``tokenizer.bin``, and the file's reader.

The file is an int32 max_token_length, then per token a float32 score, an int32 length and
the bytes. Ids 0/1/2 are <unk>, <s>, </s>. A file without byte pieces is a byte-level BPE
vocabulary that pyllama.convert exported; its merges are rebuilt there (approximately).
"""
from __future__ import annotations

import os
import struct

from ..errors import TokenizerError
from ..tokenizer import BYTE, BYTE_PIECE, CONTROL, NORMAL, UNKNOWN, Tokenizer
from .._spm import SPACE
from .common import llama_cpp_types, spm_tokenizer
from .from_gguf import tokenizer_from_gguf_metadata


def read_tokenizer_bin(path, vocab_size: int | None = None) -> tuple[list[bytes], list[float], int]:
    """The entries of a llama2.c ``tokenizer.bin``: (token bytes, scores, max_token_length).

    The file has no count of its own: `vocab_size` entries are read, as llama2.c reads as many
    as the model has, or all of them when it is None. TokenizerError for a file that is not one.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TokenizerError(f"cannot open tokenizer file {path}: {e.strerror or e}") from e
    if len(data) < 4:
        raise TokenizerError(f"{path}: too short for a llama2.c tokenizer.bin")
    (max_len,) = struct.unpack_from("<i", data, 0)
    if not 0 < max_len <= 4096:
        raise TokenizerError(f"{path}: max_token_length {max_len} is not plausible "
                             "(not a llama2.c tokenizer.bin)")
    tokens, scores, pos = [], [], 4
    while pos < len(data) and (vocab_size is None or len(tokens) < vocab_size):
        if pos + 8 > len(data):
            raise TokenizerError(f"{path}: truncated at token {len(tokens)}")
        score, length = struct.unpack_from("<fi", data, pos)
        pos += 8
        if not 0 <= length <= max_len or pos + length > len(data):
            raise TokenizerError(f"{path}: token {len(tokens)} has bad length {length}")
        tokens.append(data[pos:pos + length])
        scores.append(score)
        pos += length
    if vocab_size is not None and len(tokens) < vocab_size:
        raise TokenizerError(f"{path}: has {len(tokens)} tokens, the model needs {vocab_size}")
    return tokens, scores, max_len


def tokenizer_from_llama2c(path, vocab_size: int | None = None) -> Tokenizer:
    """The tokenizer of a llama2.c ``tokenizer.bin`` (see :func:`read_tokenizer_bin`).

    Encoding is llama2.c's ``encode`` (= SentencePiece BPE): a dummy-prefix
    space, then highest-score merges, byte fallback ``<0xXX>`` for the rest.
    A file without byte pieces is taken as a byte-level BPE vocabulary
    exported by :mod:`pyllama.convert` and rebuilt there (approximately)."""
    raw, scores, _ = read_tokenizer_bin(path, vocab_size)
    if len(raw) < 3:
        raise TokenizerError(f"{os.fspath(path)}: only {len(raw)} tokens")
    if b"<0x00>" not in raw:
        # not SentencePiece: a byte-level BPE vocabulary exported by pyllama.convert
        # (raw token bytes, scores from merge ranks); its merges are rebuilt there
        from ..convert import gguf_vocab_from_tokenizer_bin

        return tokenizer_from_gguf_metadata(gguf_vocab_from_tokenizer_bin(raw, scores))
    tokens = [t.decode("utf-8", "surrogateescape") for t in raw]
    types = []
    for i, t in enumerate(tokens):
        if i == 0:
            types.append(UNKNOWN)
        elif i in (1, 2):
            types.append(CONTROL)
        elif BYTE_PIECE.fullmatch(t):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    # llama2.c stores "\n<s>\n" / "\n</s>\n" and spaces instead of "▁"
    tokens = [t.strip("\n") if i in (1, 2) else t.replace(" ", SPACE) for i, t in enumerate(tokens)]
    types, eog = llama_cpp_types(tokens, types)
    return spm_tokenizer(tokens, scores, types, unk_id=0, bos_id=1, eos_id=2, eog_ids=eog,
                         add_bos=True, add_eos=False, add_space_prefix=True)
