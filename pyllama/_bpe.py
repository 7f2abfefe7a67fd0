"""Byte-level BPE (GGUF ``gpt2`` vocabularies).

llama.cpp pre-tokenizes text with one or more regular expressions chosen by the
GGUF key ``tokenizer.ggml.pre``. Each expression splits every piece left by the
previous one, keeping both the matches and the text between them as pieces
("isolated" splitting). Each piece is then mapped to GPT-2's printable byte
alphabet and encoded with the merge list (lowest rank merge first), here by
the BPE model of the `tokenizers` library.

The expressions below were read from llama.cpp's ``src/llama-vocab.cpp``
(``llm_tokenizer_bpe``). ``smollm`` (also starcoder, refact, codeshell) first
cuts every number character off on its own, then applies GPT-2's expression:
that is why llama.cpp and transformers disagree on "  0." for SmolLM.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from itertools import accumulate

from .errors import TokenizerError, c_error

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# pre-tokenizer name -> (list of split expressions, ignore_merges)
_PRE = {
    "default": ([r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"], False),
    "gpt2": ([GPT2], False),
    "smollm": ([r"\p{N}", GPT2], False),
    "llama3": ([LLAMA3], True),
    "qwen2": ([QWEN2], False),
    "falcon": ([r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"], False),
}
_ALIASES = {
    "gpt-2": "gpt2", "phi-2": "gpt2", "mpt": "gpt2", "olmo": "gpt2", "jais": "gpt2", "exaone4": "gpt2",
    "starcoder": "smollm", "refact": "smollm", "command-r": "smollm", "codeshell": "smollm",
    "exaone": "smollm", "minerva-7b": "smollm",
    "llama-bpe": "llama3", "llama-v3": "llama3", "falcon3": "llama3", "pixtral": "llama3",
    "dbrx": "llama3", "smaug-bpe": "llama3",
    "deepseek-r1-qwen": "qwen2", "stablelm2": "qwen2", "megrez": "qwen2", "hunyuan": "qwen2",
}

SUPPORTED_PRE = sorted(set(_PRE) | set(_ALIASES))
_CONCURRENT_FROM = 4096  # characters of a piece from which pre_tokenize's split releases the GIL


def _byte_alphabet() -> list[str]:
    """GPT-2's map from byte value to a printable character.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls,
    space, 0x7F-0xA0, 0xAD) are given the characters U+0100, U+0101, ... in
    byte order.
    """
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = [], 0
    for b in range(256):
        if b in printable:
            table.append(chr(b))
        else:
            table.append(chr(0x100 + extra))
            extra += 1
    return table


BYTE_TO_CHAR = _byte_alphabet()  # tests build vocabularies with it


def _gguf_strings(items) -> tuple[bytes, int]:
    """`items` as a GGUF string array's bytes, and how many there are."""
    from .gguf import StringArray

    if not isinstance(items, StringArray):
        items = StringArray.from_strings(items)
    return items.raw, len(items)


class ByteLevelBpe:
    r"""Encoder for one ``gpt2`` vocabulary with pre-tokenizer `pre`.

    The split expressions run in the `regex` module (it knows ``\p{L}``); the
    merges run in C (csrc/bpe.c) on tables built from the GGUF arrays, which
    also give each token's string and bytes (:meth:`token_text`,
    :meth:`token_bytes`) without a Python object per token.

    The tables are freed by :meth:`close` or when the object is collected, as a
    ``Llama`` frees its model: each C call holds a lock, so ``close()`` from
    another thread waits for the call in progress; later calls raise TokenizerError.
    """

    _bpe = None  # the C tables (None until built)

    def __init__(self, tokens, merges, pre: str):
        try:
            import regex
        except ImportError as e:  # pragma: no cover - a dependency
            raise TokenizerError(f"GGUF 'gpt2' vocabularies need the 'regex' package ({e})") from e

        name = _ALIASES.get(pre, pre)
        if name not in _PRE:
            raise TokenizerError(f"unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); "
                                 f"supported: {', '.join(SUPPORTED_PRE)}")
        self.pre = name
        expressions, ignore_merges = _PRE[name]
        # split() with the whole expression in a group returns the text between
        # matches and the matches, alternately: llama.cpp's "isolated" split
        self._splits = [regex.compile("(" + e + ")") for e in expressions]
        raw_tokens, n_tokens = _gguf_strings(tokens)
        raw_merges, n_merges = _gguf_strings(merges)
        self._pre_name = pre
        from ._core import ffi, lib

        bpe = lib.pl_bpe_new(raw_tokens, len(raw_tokens), n_tokens, raw_merges, len(raw_merges), n_merges,
                             int(ignore_merges))
        if bpe == ffi.NULL:
            raise TokenizerError(c_error("cannot build the byte-level BPE tables"))
        self._bpe = bpe
        self._ffi, self._lib = ffi, lib
        self._lock = threading.Lock()  # held by every use of the tables, and by close()
        self._len = ffi.new("int *")  # a length out of the tables (used under the lock)
        self.n_tokens = n_tokens

    def _tables(self):
        """The C tables; call with self._lock held."""
        if self._bpe is None:
            raise TokenizerError("this byte-level BPE vocabulary has been closed")
        return self._bpe

    def close(self) -> None:
        """Free the C tables now (also done when the object is collected)."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before the tables existed
            return
        with lock:
            if self._bpe is not None:
                self._lib.pl_bpe_free(self._bpe)
                self._bpe = None

    def __del__(self) -> None:
        self.close()

    def __reduce__(self):
        """Pickle as the vocabulary and merges the C tables hold (a pair listed twice keeps its
        later rank, the one that counts)."""
        ffi, lib = self._ffi, self._lib
        with self._lock:
            bpe = self._tables()
            n = lib.pl_bpe_merges(bpe, ffi.NULL, 0)
            table = ffi.new("int32_t[]", 3 * max(n, 1))
            lib.pl_bpe_merges(bpe, table, n)
        flat = ffi.unpack(table, 3 * n)
        triples = sorted(zip(flat[0::3], flat[1::3], flat[2::3]))
        texts = [self._raw_text(i) for i in range(self.n_tokens)]
        merges = [texts[a] + b" " + texts[b] for _, a, b in triples]
        return (_rebuild, (texts, merges, self._pre_name))

    def _raw_text(self, i: int) -> bytes:
        n = self._len
        with self._lock:
            p = self._lib.pl_bpe_token_text(self._bpe or self._tables(), i, n)
            if p == self._ffi.NULL:
                raise IndexError(i)
            return self._ffi.buffer(p, n[0])[:]

    def token_text(self, i: int) -> str:
        """Token `i`'s string as the file has it (GPT-2 alphabet: "Ġworld")."""
        raw = self._raw_text(i)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", "surrogateescape")

    def token_bytes(self, i: int) -> bytes:
        """The bytes token `i` stands for (an empty token: its llama.cpp name, "[EMPTY_<i>]")."""
        n = self._len
        with self._lock:
            p = self._lib.pl_bpe_token_bytes(self._bpe or self._tables(), i, n)
            if p == self._ffi.NULL:
                raise IndexError(i)
            return self._ffi.buffer(p, n[0])[:] if n[0] else b"[EMPTY_%d]" % i

    def pre_tokenize(self, text: str) -> list[str]:
        """`text` cut into the pieces BPE works on, as llama.cpp cuts it."""
        pieces = [text]
        for split in self._splits:
            out = []
            for p in pieces:
                # a long piece is cut without the GIL: a server's other threads (the forward
                # pass's rounds) go on meanwhile; short ones keep it (releasing costs more)
                out.extend(x for x in split.split(p, concurrent=len(p) >= _CONCURRENT_FROM or None) if x)
            pieces = out
        return pieces

    def encode(self, text: str) -> list[int]:
        parts = [p.encode("utf-8", "surrogateescape") for p in self.pre_tokenize(text)]
        if not parts:
            return []
        data = b"".join(parts)
        ffi = self._ffi
        out = ffi.new("int32_t[]", len(data))
        with self._lock:
            bpe = self._tables()
            n = self._lib.pl_bpe_encode(bpe, data, len(data), list(accumulate(map(len, parts))), len(parts),
                                        out, len(data))
        if n < 0:
            raise TokenizerError(c_error("cannot encode the text"))
        return ffi.unpack(out, n)


def _rebuild(texts: list, merges: list, pre: str) -> ByteLevelBpe:
    from .gguf import StringArray

    return ByteLevelBpe(StringArray.from_strings(texts), StringArray.from_strings(merges), pre)


class TokenTexts(Sequence):
    """The vocabulary's strings, read from the C tables on access (no list of 49k str)."""

    def __init__(self, bpe: ByteLevelBpe):
        self._bpe = bpe

    def __len__(self) -> int:
        return self._bpe.n_tokens

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("token id out of range")
        return self._bpe.token_text(i) or f"[EMPTY_{i}]"  # as llama.cpp names an empty token
