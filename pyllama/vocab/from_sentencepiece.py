"""A :class:`~pyllama.tokenizer.Tokenizer` from a SentencePiece ``.model`` file.

Encoding is done by the ``sentencepiece`` library itself; this module reads the pieces and
their types, including the user-defined ones the library's Python API does not tell apart.
"""
from __future__ import annotations

import os

from .._spm import SPACE
from ..errors import TokenizerError
from ..tokenizer import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, Tokenizer
from .common import llama_cpp_types, spm_piece


def tokenizer_from_sentencepiece(path) -> Tokenizer:
    """Load a SentencePiece ``.model`` file; encoding uses the library itself."""
    try:
        import sentencepiece
    except ImportError as e:  # pragma: no cover - sentencepiece is a dependency
        raise TokenizerError("reading .model files needs the 'sentencepiece' package") from e
    path = os.fspath(path)
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(path)
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"{path}: not a SentencePiece model ({e})") from e
    n = sp.get_piece_size()
    tokens, types = [], []
    user_defined = _sentencepiece_user_defined(path)
    for i in range(n):
        tokens.append(sp.id_to_piece(i))
        if sp.is_control(i):
            types.append(CONTROL)
        elif sp.is_unknown(i):
            types.append(UNKNOWN)
        elif sp.is_byte(i):
            types.append(BYTE)
        elif sp.is_unused(i):
            types.append(UNUSED)
        elif i in user_defined:
            types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
    prefix = sp.encode("a", out_type=str)
    add_space_prefix = bool(prefix) and prefix[0].startswith(SPACE)
    bos, eos = sp.bos_id(), sp.eos_id()
    types, eog = llama_cpp_types(tokens, types)
    return Tokenizer(tokens=tokens, types=types, vocab_type="spm", sp=sp, eog_ids=eog,
                     bos_id=bos if bos >= 0 else None, eos_id=eos if eos >= 0 else None,
                     add_bos=bos >= 0, add_eos=False, add_space_prefix=add_space_prefix,
                     decode_piece=spm_piece)


def _sentencepiece_user_defined(path: str) -> set:
    """Ids of USER_DEFINED pieces in a .model file (the sentencepiece Python API
    cannot tell them): reads field 1 (pieces) of the ModelProto, and in each
    piece field 3 (type; 4 = USER_DEFINED). Returns an empty set if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return set()

    def varint(buf, pos):
        shift = result = 0
        while True:
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7

    found, index, pos = set(), 0, 0
    try:
        while pos < len(data):
            key, pos = varint(data, pos)
            field, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = varint(data, pos)
                if field == 1:
                    sub, end = pos, pos + length
                    while sub < end:
                        k, sub = varint(data, sub)
                        if k & 7 == 0:
                            v, sub = varint(data, sub)
                            if k >> 3 == 3 and v == 4:
                                found.add(index)
                        elif k & 7 == 2:
                            ln, sub = varint(data, sub)
                            sub += ln
                        elif k & 7 == 5:
                            sub += 4
                        elif k & 7 == 1:
                            sub += 8
                        else:
                            return set()
                    index += 1
                pos += length
            else:
                return set()
    except IndexError:
        return set()
    return found
