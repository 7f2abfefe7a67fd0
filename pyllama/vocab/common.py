"""What the vocabulary loaders share: llama.cpp's end-of-generation tokens, and the
construction of a SentencePiece-BPE tokenizer (GGUF ``llama`` vocabularies and llama2.c
``tokenizer.bin`` files)."""
from __future__ import annotations

from .._spm import SPACE, SpmBpe
from ..errors import TokenizerError
from ..tokenizer import BYTE, BYTE_PIECE, CONTROL, UNKNOWN, Tokenizer

# Token texts llama.cpp treats as "end of generation" whatever their id.
_EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
    "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>", "<|return|>", "<|call|>", "</s>",
])

# FIM tokens llama.cpp also treats as end of generation (pad, repo, file separator).
_FIM_EOG_TEXTS = (
    ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    ("<|file_sep|>",),
)
_FIM_KIND = {t: k for k, texts in enumerate(_FIM_EOG_TEXTS) for t in texts}


def llama_cpp_types(tokens, types, fim_ids=(None, None, None)) -> tuple[list, set]:
    """Token types as llama.cpp uses them, and its end-of-generation ids.

    llama.cpp recognises end-of-generation tokens by their text (``<|im_end|>``,
    ``<end_of_turn>``, ...) plus the FIM pad/repo/file-separator tokens (ids
    from the metadata, else found by text), and makes each of them a control
    token whatever the file says (so gemma's user-defined ``</s>`` is not cut
    out of plain text and renders as nothing).
    """
    eog = set()
    fim = list(fim_ids)
    for i, t in enumerate(tokens):
        if t in _EOG_TEXTS:
            eog.add(i)
        k = _FIM_KIND.get(t)
        if k is not None and fim[k] is None:  # the lowest id, when several match
            fim[k] = i
    eog.update(i for i in fim if i is not None)
    types = list(types)
    for i in eog:
        types[i] = CONTROL
    return types, eog


def spm_piece(text: str) -> bytes:
    """What a SentencePiece piece renders as: its text, "▁" as a space."""
    return text.replace(SPACE, " ").encode("utf-8", "surrogateescape")


def spm_tokenizer(tokens, scores, types, unk_id, **kw) -> Tokenizer:
    """A tokenizer that encodes with SentencePiece BPE (highest-scoring merge first) over these pieces."""
    # Pieces merges may produce: as sentencepiece, not control/unknown/byte pieces.
    pieces = {}
    byte_ids = [None] * 256
    for i, (t, s, ty) in enumerate(zip(tokens, scores, types)):
        if ty == BYTE:
            m = BYTE_PIECE.fullmatch(t)
            if m and byte_ids[int(m.group(1), 16)] is None:
                byte_ids[int(m.group(1), 16)] = i
        elif ty not in (CONTROL, UNKNOWN):
            if t in pieces:
                raise TokenizerError(f"duplicate token in vocabulary: {t!r} has ids "
                                     f"{pieces[t][0]} and {i}")
            pieces[t] = (i, s)
    return Tokenizer(tokens=tokens, types=types, vocab_type="spm",
                     encoder=SpmBpe(pieces, byte_ids, unk_id), decode_piece=spm_piece, **kw)
