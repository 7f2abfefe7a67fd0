"""Text <-> token ids for every model pyllama loads.

One class, :class:`Tokenizer`, built from

* a SentencePiece ``.model`` file (encoding done by the ``sentencepiece`` library),
* a llama2.c ``tokenizer.bin`` (SentencePiece BPE, see :mod:`pyllama._spm`),
* the metadata of a GGUF file: ``tokenizer.ggml.model = "llama"`` (SentencePiece
  BPE with scores, token types and ``<0xXX>`` byte fallback, see
  :mod:`pyllama._spm`) or ``"gpt2"`` (byte-level BPE with merges and a
  pre-tokenizer, see :mod:`pyllama._bpe`).

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
import struct

import numpy as np

from ._spm import SPACE, SpmBpe
from .errors import TokenizerError

# GGUF token types (llama.cpp's llama_token_type)
UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(7)

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

_SURROGATE = re.compile("[\ud800-\udfff]")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


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


def _llama_cpp_types(tokens, types, fim_ids=(None, None, None)) -> tuple[list, set]:
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
                m = _BYTE_PIECE.fullmatch(t)
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
        self._splitters: dict[bool, _SpecialSplitter | None] = {}

    # ------------------------------------------------------------------ loading

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
        from .gguf import GGUFValue, StringArray
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
            from ._bpe import ByteLevelBpe, TokenTexts
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
        types, eog = _llama_cpp_types(tokens, types, fim)
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
            return cls._spm(tokens, scores, types, unk_id=unk,
                            bos_id=get_id("tokenizer.ggml.bos_token_id", 1),
                            eos_id=get_id("tokenizer.ggml.eos_token_id", 2),
                            add_bos=get_bool("tokenizer.ggml.add_bos_token", True),
                            add_eos=get_bool("tokenizer.ggml.add_eos_token", False),
                            add_space_prefix=get_bool("tokenizer.ggml.add_space_prefix", True),
                            **common)
        if model == "gpt2":
            llama3 = encoder.pre == "llama3"
            return cls(tokens=tokens, types=types, vocab_type="bpe", encoder=encoder,
                       bos_id=get_id("tokenizer.ggml.bos_token_id"),
                       eos_id=get_id("tokenizer.ggml.eos_token_id"),
                       add_bos=get_bool("tokenizer.ggml.add_bos_token", llama3),
                       add_eos=get_bool("tokenizer.ggml.add_eos_token", False),
                       add_space_prefix=False, token_bytes=encoder.token_bytes, **common)
        raise TokenizerError(f"unsupported tokenizer type {model!r} (tokenizer.ggml.model); "
                             "supported: 'llama' (SentencePiece), 'gpt2' (byte-level BPE)")

    @classmethod
    def from_llama2c(cls, path, vocab_size: int | None = None) -> "Tokenizer":
        """Load llama2.c's ``tokenizer.bin``: int32 max_token_length, then per
        token float32 score, int32 length, bytes. Ids 0/1/2 are <unk>, <s>, </s>.

        Encoding is llama2.c's ``encode`` (= SentencePiece BPE): a dummy-prefix
        space, then highest-score merges, byte fallback ``<0xXX>`` for the rest.
        A file without byte pieces is taken as a byte-level BPE vocabulary
        exported by :mod:`pyllama.convert` and rebuilt there (approximately)."""
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
            tokens.append(data[pos:pos + length].decode("utf-8", "surrogateescape"))
            scores.append(score)
            pos += length
        if vocab_size is not None and len(tokens) < vocab_size:
            raise TokenizerError(f"{path}: has {len(tokens)} tokens, the model needs {vocab_size}")
        if len(tokens) < 3:
            raise TokenizerError(f"{path}: only {len(tokens)} tokens")
        if "<0x00>" not in tokens:
            # not SentencePiece: a byte-level BPE vocabulary exported by pyllama.convert
            # (raw token bytes, scores from merge ranks); its merges are rebuilt there
            from .convert import gguf_vocab_from_tokenizer_bin
            raw = [t.encode("utf-8", "surrogateescape") for t in tokens]
            return cls.from_gguf_metadata(gguf_vocab_from_tokenizer_bin(raw, scores))
        types = []
        for i, t in enumerate(tokens):
            if i == 0:
                types.append(UNKNOWN)
            elif i in (1, 2):
                types.append(CONTROL)
            elif _BYTE_PIECE.fullmatch(t):
                types.append(BYTE)
            else:
                types.append(NORMAL)
        # llama2.c stores "\n<s>\n" / "\n</s>\n" and spaces instead of "▁"
        tokens = [t.strip("\n") if i in (1, 2) else t.replace(" ", SPACE) for i, t in enumerate(tokens)]
        types, eog = _llama_cpp_types(tokens, types)
        return cls._spm(tokens, scores, types, unk_id=0, bos_id=1, eos_id=2, eog_ids=eog,
                        add_bos=True, add_eos=False, add_space_prefix=True)

    @classmethod
    def from_sentencepiece(cls, path) -> "Tokenizer":
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
        types, eog = _llama_cpp_types(tokens, types)
        return cls(tokens=tokens, types=types, vocab_type="spm", sp=sp, eog_ids=eog,
                   bos_id=bos if bos >= 0 else None, eos_id=eos if eos >= 0 else None,
                   add_bos=bos >= 0, add_eos=False, add_space_prefix=add_space_prefix,
                   decode_piece=_spm_piece)

    @classmethod
    def _spm(cls, tokens, scores, types, unk_id, **kw) -> "Tokenizer":
        # Pieces merges may produce: as sentencepiece, not control/unknown/byte pieces.
        pieces = {}
        byte_ids = [None] * 256
        for i, (t, s, ty) in enumerate(zip(tokens, scores, types)):
            if ty == BYTE:
                m = _BYTE_PIECE.fullmatch(t)
                if m and byte_ids[int(m.group(1), 16)] is None:
                    byte_ids[int(m.group(1), 16)] = i
            elif ty not in (CONTROL, UNKNOWN):
                if t in pieces:
                    raise TokenizerError(f"duplicate token in vocabulary: {t!r} has ids "
                                         f"{pieces[t][0]} and {i}")
                pieces[t] = (i, s)
        return cls(tokens=tokens, types=types, vocab_type="spm",
                   encoder=SpmBpe(pieces, byte_ids, unk_id), decode_piece=_spm_piece, **kw)

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
            self._splitters[special] = _SpecialSplitter(found) if found else None
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


class _SpecialSplitter:
    """Cuts special-token text out of a string exactly as llama.cpp does.

    llama.cpp takes the special tokens one at a time, longest first, and cuts
    every occurrence of each out of the text pieces still left. To do the same
    without trying every token on the text, one scan finds, at every position,
    the longest token starting there; the tokens that occur at all are those
    and their prefixes that are tokens too, and only they are then replayed in
    llama.cpp's order.
    """

    def __init__(self, tokens: dict[str, int]):
        self.ids = tokens
        trie = _trie(tokens)
        self.scan = re.compile("(?=(" + _trie_regex(trie, tokens) + "))", re.DOTALL)
        # the tokens that are prefixes of each token (a walk down the trie: linear in the
        # token's length, so a token of a million characters costs no more than its text)
        self.prefixes = {}
        for t in tokens:
            node, found = trie, []
            for k, ch in enumerate(t[:-1], 1):
                node = node[ch]
                if "" in node:
                    found.append(t[:k])
            self.prefixes[t] = found

    def split(self, s: str) -> list:
        """`s` as a list of str pieces and int token ids."""
        found = set()
        for m in self.scan.finditer(s):
            t = m.group(1)
            if t not in found:
                found.add(t)
                found.update(self.prefixes[t])
        if not found:
            return [s]
        parts: list = [(0, len(s))]
        # llama.cpp sorts by length only; equal lengths keep id order here
        for t in sorted(found, key=lambda t: (-len(t), self.ids[t])):
            tid, n = self.ids[t], len(t)
            new = []
            for p in parts:
                if isinstance(p, int):
                    new.append(p)
                    continue
                start, end = p
                at = s.find(t, start, end)
                if at < 0:
                    new.append(p)
                    continue
                while at >= 0:
                    if at > start:
                        new.append((start, at))
                    new.append(tid)
                    start = at + n
                    at = s.find(t, start, end)
                if start < end:
                    new.append((start, end))
            parts = new
        return [p if isinstance(p, int) else s[p[0]:p[1]] for p in parts]


def _trie(words) -> dict:
    """A character trie of `words`: nested dicts, "" marking the end of a word."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = True
    return trie


_MAX_TRIE_NESTING = 100  # groups nested in the regex; deeper only for contrived vocabularies


class _TooDeep(Exception):
    pass


def _trie_regex(trie: dict, words) -> str:
    """A regex matching the longest of `words` at a position: the trie as nested groups,
    runs of characters without a branch or a word end written as one literal. When the
    nesting gets deep (tokens that are each other's prefixes a hundred times over), an
    alternation of the words, longest first, does the same job more slowly."""

    def build(node, depth: int) -> str:
        if depth > _MAX_TRIE_NESTING:
            raise _TooDeep
        alts = []
        for ch, child in sorted((k, v) for k, v in node.items() if k):
            run = [ch]
            while len(child) == 1 and "" not in child:  # one way on, no word ends here
                (ch2, child), = child.items()
                run.append(ch2)
            alts.append(re.escape("".join(run)) + build(child, depth + 1))
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        if "" in node:
            return "(?:" + body + ")?"
        return body

    try:
        return build(trie, 0)
    except _TooDeep:
        return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


def _spm_piece(text: str) -> bytes:
    return text.replace(SPACE, " ").encode("utf-8", "surrogateescape")


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
