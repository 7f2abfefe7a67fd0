"""A :class:`~pyllama.tokenizer.Tokenizer` from the metadata of a GGUF file.

``tokenizer.ggml.model`` says which kind: ``llama`` (SentencePiece BPE: tokens, scores and
token types, ``<0xXX>`` byte fallback) or ``gpt2`` (byte-level BPE: tokens, merges and the
pre-tokenizer named by ``tokenizer.ggml.pre``, built in C by :class:`pyllama._bpe.ByteLevelBpe`).
Every key is checked before it is used; a bad one is a TokenizerError naming it. Ids out of
range are ignored, as llama.cpp ignores them.
"""
from __future__ import annotations

import numpy as np

from ..errors import TokenizerError
from ..tokenizer import NORMAL, Tokenizer
from .common import llama_cpp_types, spm_tokenizer


def _is_array(v) -> bool:
    return not isinstance(v, (str, bytes, dict)) and hasattr(v, "__len__") and hasattr(v, "__getitem__")


def _kind(v) -> str:
    """How a metadata value looks, for messages: 'an array of 12 uint32', 'a string', ..."""
    if isinstance(v, np.ndarray):
        return f"an array of {len(v)} {v.dtype}"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)) or _is_array(v):
        return f"an array of {len(v)} values"
    return f"a {type(v).__name__}"


def _int_list(values, n: int, key: str) -> list:
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError) as e:
        raise TokenizerError(f"GGUF metadata {key!r} is not a list of integers") from e
    if len(out) < n:
        raise TokenizerError(f"GGUF metadata {key!r} has {len(out)} entries for {n} tokens")
    return out


def tokenizer_from_gguf_metadata(md: dict) -> Tokenizer:
    """Build the tokenizer of a GGUF file from its metadata dict alone
    (values plain, as :func:`pyllama.gguf.read_metadata` gives them, or
    wrapped in :class:`pyllama.gguf.GGUFValue`)."""
    from ..gguf import GGUFValue, StringArray
    md = {k: v.value if isinstance(v, GGUFValue) else v for k, v in md.items()}
    model = md.get("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError("GGUF metadata has no 'tokenizer.ggml.model' (no vocabulary)")
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
        if key in md and not isinstance(md[key], str):
            raise TokenizerError(f"GGUF metadata {key!r} is {_kind(md[key])}, not a string")
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is not None and not _is_array(tokens):
        raise TokenizerError(f"GGUF metadata 'tokenizer.ggml.tokens' is {_kind(tokens)}, "
                             "not an array of strings")
    if tokens is None or len(tokens) == 0:
        raise TokenizerError("GGUF metadata has no 'tokenizer.ggml.tokens'")
    n = len(tokens)
    if not isinstance(tokens, StringArray) or model != "gpt2":  # (the gpt2 path reads it from C)
        tokens = list(tokens)
        for i, t in enumerate(tokens):
            if not isinstance(t, str):
                raise TokenizerError(f"tokenizer.ggml.tokens[{i}] is not a string")
            if not t:
                tokens[i] = f"[EMPTY_{i}]"  # as llama.cpp
    if "tokenizer.ggml.token_type" in md:
        types = _int_list(md["tokenizer.ggml.token_type"], n, "tokenizer.ggml.token_type")[:n]
    else:
        types = [NORMAL] * n

    def get_id(key, default=None):
        v = md.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise TokenizerError(f"GGUF metadata {key!r} is not an integer")
        return v if 0 <= v < n else default  # llama.cpp ignores bad ids

    def get_bool(key, default):
        v = md.get(key)
        if v is None:
            return default
        if not isinstance(v, (bool, int, np.bool_, np.integer)):
            raise TokenizerError(f"GGUF metadata {key!r} is {_kind(v)}, not a boolean")
        return bool(v)

    encoder = None
    if model == "gpt2":
        from .._bpe import ByteLevelBpe, TokenTexts
        merges = md.get("tokenizer.ggml.merges")
        if merges is None:
            raise TokenizerError("GGUF 'gpt2' vocabulary without 'tokenizer.ggml.merges'")
        for key, arr in (("tokenizer.ggml.merges", merges), ("tokenizer.ggml.tokens", tokens)):
            if not isinstance(arr, StringArray) and not (
                    isinstance(arr, (list, tuple)) and all(isinstance(m, str) for m in arr)):
                raise TokenizerError(f"GGUF metadata {key!r} is {_kind(arr)}, not an array of strings")
        encoder = ByteLevelBpe(tokens, merges, md.get("tokenizer.ggml.pre") or "default")
        tokens = TokenTexts(encoder)  # the C tables have the strings: no list of them
    fim = tuple(get_id(f"tokenizer.ggml.fim_{k}_token_id") for k in ("pad", "rep", "sep"))
    types, eog = llama_cpp_types(tokens, types, fim)
    eog.update((get_id("tokenizer.ggml.eot_token_id"), get_id("tokenizer.ggml.eom_token_id")))
    common = dict(eog_ids=eog)
    if model == "llama":
        if "tokenizer.ggml.scores" not in md:
            raise TokenizerError("GGUF 'llama' vocabulary without 'tokenizer.ggml.scores'")
        try:
            scores = [float(s) for s in md["tokenizer.ggml.scores"]]
        except (TypeError, ValueError) as e:
            raise TokenizerError("'tokenizer.ggml.scores' is not a list of numbers") from e
        if len(scores) < n:
            raise TokenizerError(f"'tokenizer.ggml.scores' has {len(scores)} entries for {n} tokens")
        unk = get_id("tokenizer.ggml.unknown_token_id", 0 if n > 0 else None)
        return spm_tokenizer(tokens, scores, types, unk_id=unk,
                             bos_id=get_id("tokenizer.ggml.bos_token_id", 1),
                             eos_id=get_id("tokenizer.ggml.eos_token_id", 2),
                             add_bos=get_bool("tokenizer.ggml.add_bos_token", True),
                             add_eos=get_bool("tokenizer.ggml.add_eos_token", False),
                             add_space_prefix=get_bool("tokenizer.ggml.add_space_prefix", True),
                             **common)
    if model == "gpt2":
        llama3 = encoder.pre == "llama3"
        return Tokenizer(tokens=tokens, types=types, vocab_type="bpe", encoder=encoder,
                         bos_id=get_id("tokenizer.ggml.bos_token_id"),
                         eos_id=get_id("tokenizer.ggml.eos_token_id"),
                         add_bos=get_bool("tokenizer.ggml.add_bos_token", llama3),
                         add_eos=get_bool("tokenizer.ggml.add_eos_token", False),
                         add_space_prefix=False, token_bytes=encoder.token_bytes, **common)
    raise TokenizerError(f"unsupported tokenizer type {model!r} (tokenizer.ggml.model); "
                         "supported: 'llama' (SentencePiece), 'gpt2' (byte-level BPE)")
