"""Text <-> token ids for every model pyllama loads.

One class, :class:`Tokenizer`, built by the loaders in :mod:`pyllama.vocab` from

* a SentencePiece ``.model`` file (encoding done by the ``sentencepiece`` library),
* a llama2.c ``tokenizer.bin`` (SentencePiece BPE, see :mod:`pyllama._spm`),
* the metadata of a GGUF file: ``tokenizer.ggml.model = "llama"`` (SentencePiece
  BPE with scores, token types and ``<0xXX>`` byte fallback, see
  :mod:`pyllama._spm`) or ``"gpt2"`` (byte-level BPE with merges and a
  pre-tokenizer, see :mod:`pyllama._bpe`).

The text of special tokens is cut out first (:mod:`pyllama.special_tokens`).

Behaviour follows llama.cpp, the reference for GGUF vocabularies:

* ``tokenize(text, special=True)`` first cuts out the text of control,
  user-defined and unknown tokens (``<|im_start|>``, ``<start_of_turn>``, ...)
  as their single ids, longest token first; with ``special=False`` only
  user-defined tokens are cut out and control-token text is ordinary text.
  Each remaining piece of text is encoded on its own; SentencePiece
  vocabularies with ``add_space_prefix`` put one space in front of each piece
  (at the start of the text and after every special token).
* **Input text**: ``str``, or ``bytes`` holding UTF-8. Every byte that is not
  part of a valid UTF-8 sequence (and every lone surrogate in a ``str``) is
  replaced by U+FFFD before tokenizing -- one U+FFFD per bad byte, as
  sentencepiece and llama.cpp's BPE pre-tokenizer do. (llama.cpp differs in
  two corners: its SentencePiece path passes invalid bytes to byte fallback,
  and its BPE path accepts UTF-8-encoded surrogates.) A byte-level BPE
  vocabulary may lack tokens for some bytes (SmolLM has none for 0xF1, so
  none for U+40000..U+7FFFF); such bytes are dropped, as llama.cpp drops them,
  and ``detokenize(tokenize(s)) == s`` holds for every text without them.
* ``detokenize(ids)`` returns the raw bytes (tokens may end inside a UTF-8
  character); control and unknown tokens render as nothing unless
  ``special=True``. For vocabularies with ``add_space_prefix`` (SentencePiece)
  the space that tokenizing adds is removed again: one leading space of the
  first text token at the start of the text and after each special token. Pass
  ``prev_ids`` (the tokens that come before, e.g. the prompt) to decode a
  continuation: then the start is not the start of the text.
* :meth:`Tokenizer.stream` returns a :class:`StreamDecoder` that emits text as
  soon as it is complete, never splits a UTF-8 character, and whose chunks
  concatenate to exactly ``decode(ids)``.
"""

from __future__ import annotations

import codecs
import os
import re

from ._spm import SPACE
from .errors import TokenizerError
from .special_tokens import SpecialSplitter

# GGUF token types (llama.cpp's llama_token_type)
UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(7)

_SURROGATE = re.compile("[\ud800-\udfff]")
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def as_text(text) -> str:
    """`text` (str or UTF-8 bytes) as a str, each invalid byte replaced by U+FFFD."""
    if isinstance(text, str):
        s = text
    elif isinstance(text, (bytes, bytearray, memoryview)):
        s = bytes(text).decode("utf-8", "surrogateescape")
    else:
        raise TypeError(f"text must be str or bytes, not {type(text).__name__}")
    if _SURROGATE.search(s):
        s = _SURROGATE.sub("\ufffd", s)
    return s


class Tokenizer:
    """A vocabulary and the rules to turn text into its token ids and back.

    Build one with :meth:`from_file` or :meth:`from_gguf_metadata`.

    Attributes: ``n_vocab``; ``bos_id``, ``eos_id`` (int or None); ``eot_ids``
    (frozenset of ids that end a turn: EOS, end-of-turn, ``<|im_end|>``, ...);
    ``add_bos``, ``add_eos`` (what the model wants added); ``add_space_prefix``;
    ``vocab_type`` (``"spm"`` or ``"bpe"``).
    """

    def __init__(self, *, tokens, types, vocab_type, encoder=None, sp=None,
                 bos_id=None, eos_id=None, eog_ids=(),
                 add_bos=False, add_eos=False, add_space_prefix=False, decode_piece=None,
                 token_bytes=None):
        n = len(tokens)
        self.n_vocab = n
        self.vocab_type = vocab_type
        self.add_space_prefix = bool(add_space_prefix)
        self._tokens = tokens
        self._encoder = encoder  # SpmBpe or ByteLevelBpe (None when sp does it)
        self._sp = sp

        def ok(i):
            return i if i is not None and 0 <= int(i) < n else None

        self.bos_id = ok(bos_id)
        self.eos_id = ok(eos_id)
        self.add_bos = bool(add_bos) and self.bos_id is not None
        self.add_eos = bool(add_eos) and self.eos_id is not None

        types = list(types)
        eog = {ok(i) for i in eog_ids} | {self.eos_id}
        eog.discard(None)
        self.eot_ids = frozenset(eog)
        self._types = types

        # What each token renders as: plain (special=False) and with specials shown.
        # Normal tokens render their bytes, from `token_bytes(id)` (the C tables of a
        # byte-level vocabulary) or else `decode_piece(text)` computed here for all.
        if token_bytes is None:
            normal = [decode_piece(t) if ty == NORMAL else b"" for t, ty in zip(tokens, types)]
            token_bytes = normal.__getitem__
        plain, shown = {}, {}
        special_flag = bytearray(n)
        for i, ty in enumerate(types):
            if ty == NORMAL:
                continue
            t = tokens[i]
            if ty == BYTE:
                m = BYTE_PIECE.fullmatch(t)
                plain[i] = shown[i] = bytes([int(m.group(1), 16)]) if m else t.encode("utf-8", "surrogateescape")
            elif ty in (CONTROL, UNKNOWN):
                plain[i] = b""
                shown[i] = t.encode("utf-8", "surrogateescape")
                special_flag[i] = 1
            elif ty == USER_DEFINED:
                plain[i] = shown[i] = t.encode("utf-8", "surrogateescape")
                special_flag[i] = 1
            else:  # unused / undefined: nothing, as llama.cpp
                plain[i] = shown[i] = b""
        self._plain = _Pieces(token_bytes, plain)
        self._shown = _Pieces(token_bytes, shown)
        self._special_flag = special_flag
        self._splitters: dict[bool, SpecialSplitter | None] = {}

    # ------------------------------------------------------------------ loading
    # (the loaders are pyllama/vocab/: one module per kind of vocabulary file)

    @classmethod
    def from_file(cls, path, vocab_size: int | None = None) -> "Tokenizer":
        """Load a tokenizer from a GGUF file (metadata only), a SentencePiece
        ``.model`` or a llama2.c ``tokenizer.bin`` (`vocab_size`, when given,
        is the number of tokens the model uses, as llama2.c reads it)."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError as e:
            raise TokenizerError(f"cannot open tokenizer file {path}: {e.strerror or e}") from e
        if head == b"GGUF":
            from .gguf import read_metadata
            return cls.from_gguf_metadata(read_metadata(path))
        if path.endswith(".model"):
            return cls.from_sentencepiece(path)
        try:
            return cls.from_llama2c(path, vocab_size)
        except TokenizerError as e:
            try:
                return cls.from_sentencepiece(path)
            except TokenizerError:
                raise TokenizerError(f"{path}: not a GGUF file, SentencePiece model or llama2.c "
                                     f"tokenizer.bin ({e})") from None

    @classmethod
    def from_gguf_metadata(cls, md: dict) -> "Tokenizer":
        """Build the tokenizer of a GGUF file from its metadata dict alone
        (values plain, as :func:`pyllama.gguf.read_metadata` gives them, or
        wrapped in :class:`pyllama.gguf.GGUFValue`)."""
        from .vocab.from_gguf import tokenizer_from_gguf_metadata

        return tokenizer_from_gguf_metadata(md)

    @classmethod
    def from_llama2c(cls, path, vocab_size: int | None = None) -> "Tokenizer":
        """Load llama2.c's ``tokenizer.bin`` (`vocab_size`: the number of tokens the model
        uses, as llama2.c reads it); see :mod:`pyllama.vocab.from_llama2c`."""
        from .vocab.from_llama2c import tokenizer_from_llama2c

        return tokenizer_from_llama2c(path, vocab_size)

    @classmethod
    def from_sentencepiece(cls, path) -> "Tokenizer":
        """Load a SentencePiece ``.model`` file; encoding uses the library itself."""
        from .vocab.from_sentencepiece import tokenizer_from_sentencepiece

        return tokenizer_from_sentencepiece(path)

    # --------------------------------------------------------------- encoding

    def tokenize(self, text, add_bos: bool | None = None, special: bool = False,
                 literal: dict | None = None) -> list[int]:
        """Token ids of `text` (str, or bytes holding UTF-8; invalid bytes
        become U+FFFD, one per byte).

        `add_bos`: None follows the model (BOS if ``self.add_bos``, EOS if
        ``self.add_eos``); True always puts BOS first (and EOS last if the model
        adds EOS); False adds neither. `special`: parse the text of control
        tokens (``<|im_start|>``, ``<s>``...) as those tokens.

        `literal` maps single characters (placeholders) to text: once the
        special tokens are cut out, each placeholder left in the text is
        replaced by its text, which is then encoded like the text around it,
        as plain text. Chat prompts use it to keep control-token spellings in
        message contents from becoming control tokens.
        """
        s = as_text(text)
        out: list[int] = []
        if add_bos is None:
            add_bos, add_eos = self.add_bos, self.add_eos
        else:
            add_eos = bool(add_bos) and self.add_eos
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError("this vocabulary has no BOS token")
            out.append(self.bos_id)
        if s:
            out.extend(self._encode(s, special, literal))
        if add_eos:
            out.append(self.eos_id)
        return out

    def control_texts_in(self, text: str) -> set[str]:
        """The texts of control and unknown tokens that ``tokenize(text, special=True)``
        would turn into those tokens (and ``special=False`` would not)."""
        splitter = self._splitter(True)
        if splitter is None:
            return set()
        return {self._tokens[p] for p in splitter.split(as_text(text))
                if isinstance(p, int) and self._types[p] in (CONTROL, UNKNOWN)}

    def _encode(self, s: str, special: bool, literal: dict | None = None) -> list[int]:
        splitter = self._splitter(special)
        parts = splitter.split(s) if splitter is not None else [s]
        if literal:
            table = {ord(k): v for k, v in literal.items()}
            parts = [p if isinstance(p, int) else p.translate(table) for p in parts]
        out: list[int] = []
        if self._sp is not None:
            for p in parts:
                if isinstance(p, int):
                    out.append(p)
                else:
                    out.extend(self._sp.encode(p))
            return out
        if self.vocab_type == "spm":
            prefix = " " if self.add_space_prefix else ""
            for p in parts:
                if isinstance(p, int):
                    out.append(p)
                else:
                    out.extend(self._encoder.encode((prefix + p).replace(" ", SPACE)))
            return out
        for p in parts:
            if isinstance(p, int):
                out.append(p)
            else:
                out.extend(self._encoder.encode(p))
        return out

    def _splitter(self, special: bool):
        if special not in self._splitters:
            if special:
                kinds = (CONTROL, UNKNOWN, USER_DEFINED)
            elif self._sp is not None:
                kinds = ()  # sentencepiece handles its user-defined pieces itself
            else:
                kinds = (USER_DEFINED,)
            found = {}
            for i, ty in enumerate(self._types):
                if ty in kinds and self._tokens[i]:  # an empty token matches nowhere (and everywhere)
                    found.setdefault(self._tokens[i], i)
            self._splitters[special] = SpecialSplitter(found) if found else None
        return self._splitters[special]

    # --------------------------------------------------------------- decoding

    def _check_ids(self, ids) -> list[int]:
        try:
            ids = [int(i) for i in ids]
        except (TypeError, ValueError) as e:
            raise TokenizerError("token ids must be integers") from e
        if ids and (min(ids) < 0 or max(ids) >= self.n_vocab):
            bad = next(i for i in ids if not 0 <= i < self.n_vocab)
            raise TokenizerError(f"token id {bad} out of range [0, {self.n_vocab})")
        return ids

    def _strip_first(self, prev_ids) -> bool:
        """Whether the next text token starts a text (its dummy-prefix space goes)."""
        if not self.add_space_prefix:
            return False
        if prev_ids is None or len(prev_ids) == 0:
            return True
        last = int(prev_ids[-1])
        return 0 <= last < self.n_vocab and bool(self._special_flag[last])

    def detokenize(self, ids, special: bool = False, prev_ids=None) -> bytes:
        """The bytes the tokens stand for (see the module docstring for the
        leading-space rule and `prev_ids`). `special` renders control tokens."""
        ids = self._check_ids(ids)
        pieces = self._shown if special else self._plain
        if not self.add_space_prefix:
            return b"".join([pieces[i] for i in ids])
        strip = self._strip_first(prev_ids)
        flags = self._special_flag
        out = []
        for i in ids:
            b = pieces[i]
            if flags[i]:
                strip = True
            elif strip:
                if b[:1] == b" ":
                    b = b[1:]
                strip = False
            out.append(b)
        return b"".join(out)

    def decode(self, ids, special: bool = False, prev_ids=None) -> str:
        """``detokenize(ids)`` as text (invalid UTF-8 shown as U+FFFD)."""
        return self.detokenize(ids, special, prev_ids).decode("utf-8", "replace")

    def token_to_piece(self, token_id: int, special: bool = False) -> bytes:
        """The bytes one token renders as on its own (no leading-space rule)."""
        (token_id,) = self._check_ids([token_id])
        return (self._shown if special else self._plain)[token_id]

    def token_text(self, token_id: int) -> str:
        """The token's string in the vocabulary (e.g. ``"▁Hello"``, ``"Ġworld"``, ``"<0x0A>"``)."""
        (token_id,) = self._check_ids([token_id])
        return self._tokens[token_id]

    def token_type(self, token_id: int) -> int:
        """The token's GGUF type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)."""
        (token_id,) = self._check_ids([token_id])
        return self._types[token_id]

    def is_special(self, token_id: int) -> bool:
        """True for control, unknown and user-defined tokens."""
        (token_id,) = self._check_ids([token_id])
        return bool(self._special_flag[token_id])

    def stream(self, special: bool = False, prev_ids=None) -> "StreamDecoder":
        """An incremental detokenizer: feed ids one at a time, get text."""
        return StreamDecoder(self, special, prev_ids)

    def encode(self, text, add_bos: bool = True, special: bool = True) -> list[int]:
        """llama-cpp-python's ``LlamaTokenizer.encode``: ``add_bos=True`` adds BOS when the model does."""
        return self.tokenize(text, add_bos=None if add_bos else False, special=special)

    def __call__(self) -> "Tokenizer":
        """``llm.tokenizer()`` gives the tokenizer, as llama-cpp-python's ``Llama.tokenizer()`` does."""
        return self

    def __repr__(self) -> str:
        return (f"Tokenizer({self.vocab_type}, n_vocab={self.n_vocab}, bos={self.bos_id}, "
                f"eos={self.eos_id}, add_bos={self.add_bos})")


class StreamDecoder:
    """Turns token ids into text as they come.

    ``push(id)`` returns the text completed by that token ('' while a UTF-8
    character is still incomplete), ``flush()`` the rest (an incomplete
    character at the very end becomes U+FFFD). The chunks concatenate to
    exactly ``tokenizer.decode(ids, special, prev_ids)``.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False, prev_ids=None):
        self._tok = tokenizer
        self._pieces = tokenizer._shown if special else tokenizer._plain
        self._strip = tokenizer._strip_first(prev_ids)
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, token_id: int) -> str:
        tok = self._tok
        (token_id,) = tok._check_ids([token_id])
        b = self._pieces[token_id]
        if tok.add_space_prefix:
            if tok._special_flag[token_id]:
                self._strip = True
            elif self._strip:
                if b[:1] == b" ":
                    b = b[1:]
                self._strip = False
        return self._utf8.decode(b)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class _Pieces:
    """What each token renders as: the tokens in `override` as given there, the rest
    `base(id)` (for a byte-level vocabulary, bytes from its C tables: no 49k-entry list)."""

    __slots__ = ("_base", "_override")

    def __init__(self, base, override: dict):
        self._base = base
        self._override = override

    def __getitem__(self, i: int) -> bytes:
        b = self._override.get(i)
        return self._base(i) if b is None else b
