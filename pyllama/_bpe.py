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

from .errors import TokenizerError

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


BYTE_TO_CHAR = _byte_alphabet()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}


def piece_to_bytes(text: str) -> bytes:
    """The bytes a byte-level token text stands for (characters outside the
    alphabet, which real vocabularies do not have, are kept as UTF-8)."""
    out = bytearray()
    for ch in text:
        b = CHAR_TO_BYTE.get(ch)
        if b is None:
            out += ch.encode("utf-8", "surrogateescape")
        else:
            out.append(b)
    return bytes(out)


_CACHE_LIMIT = 200_000


class ByteLevelBpe:
    r"""Encoder for one ``gpt2`` vocabulary with pre-tokenizer `pre`.

    The split expressions run in the `regex` module (it knows ``\p{L}``); each
    distinct pre-token is then mapped to the byte alphabet and merged by the
    BPE model of the `tokenizers` library, and the result is cached.
    """

    def __init__(self, tokens: list[str], merges: list[str], pre: str):
        try:
            import regex
            from tokenizers import models
        except ImportError as e:  # pragma: no cover - both are dependencies
            raise TokenizerError("GGUF 'gpt2' vocabularies need the 'regex' and 'tokenizers' "
                                 f"packages ({e})") from e
        name = _ALIASES.get(pre, pre)
        if name not in _PRE:
            raise TokenizerError(f"unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); "
                                 f"supported: {', '.join(SUPPORTED_PRE)}")
        self.pre = name
        expressions, ignore_merges = _PRE[name]
        # split() with the whole expression in a group returns the text between
        # matches and the matches, alternately: llama.cpp's "isolated" split
        self._splits = [regex.compile("(" + e + ")") for e in expressions]
        vocab = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
        pairs = []
        for i, m in enumerate(merges):
            cut = m.find(" ", 1)
            if cut < 0:
                raise TokenizerError(f"tokenizer.ggml.merges[{i}] = {m!r} is not 'left right'")
            pairs.append((m[:cut], m[cut + 1:]))
        try:
            self._model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges)
        except Exception as e:
            raise TokenizerError(f"inconsistent BPE vocabulary/merges: {e}") from e
        self._to_alphabet = str.maketrans({b: c for b, c in enumerate(BYTE_TO_CHAR)})
        # bytes without a token of their own: llama.cpp leaves them unmerged and then
        # drops them, so they separate what is merged on either side
        missing = "".join(c for c in BYTE_TO_CHAR if c not in vocab)
        self._missing = regex.compile("[" + regex.escape(missing) + "]") if missing else None
        self._cache: dict[str, tuple] = {}

    def pre_tokenize(self, text: str) -> list[str]:
        """`text` cut into the pieces BPE works on, as llama.cpp cuts it."""
        pieces = [text]
        for split in self._splits:
            out = []
            for p in pieces:
                out.extend(x for x in split.split(p) if x)
            pieces = out
        return pieces

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        cache = self._cache
        for piece in self.pre_tokenize(text):
            ids = cache.get(piece)
            if ids is None:
                symbols = piece.encode("utf-8").decode("latin-1").translate(self._to_alphabet)
                runs = self._missing.split(symbols) if self._missing is not None else (symbols,)
                ids = tuple(t.id for run in runs if run for t in self._model.tokenize(run))
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)
        return out
