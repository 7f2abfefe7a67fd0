"""Constrained decoding: grammars and JSON schemas through llguidance.

llguidance (a Rust library with Python bindings, used by llama.cpp, vLLM and SGLang)
turns a grammar into a per-step set of allowed tokens. Here it is given pyllama's
vocabulary as byte strings (:func:`ll_tokenizer`, built once per tokenizer); each
step it fills a bitmask of uint32 words that the C sampler (``pl_sample``) applies
while it copies the logits, so no Python loop runs over the vocabulary.

:class:`LlamaGrammar` is llama-cpp-python's object: ``from_string`` takes GBNF
(llama.cpp's grammar format, converted to llguidance's Lark dialect by llguidance's
own converter; Lark itself is accepted too), ``from_json_schema`` a JSON schema.
:class:`GrammarConstraint` is one generation's running state.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

__all__ = ["LlamaGrammar", "GrammarConstraint", "ll_tokenizer", "json_schema_grammar",
           "response_format_grammar"]

# JSON as models write it: ", " and ": " between items, no other whitespace (a small
# model given free whitespace can fill max_tokens with newlines).
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

_UNKNOWN, _CONTROL = 2, 3  # GGUF token types that render as nothing in plain text


def _llguidance():
    try:
        import llguidance
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("constrained decoding needs the llguidance package: pip install llguidance") from None
    return llguidance


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads from a tokenizer: each token's bytes
    (control tokens as 0xFF + their name, llguidance's mark for special tokens, so no
    grammar text can produce them), the end ids, and a tokenize callable."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        n = tokenizer.n_vocab
        types = getattr(tokenizer, "_types", None)  # pyllama's Tokenizer: read its tables directly
        if types is not None:
            special = [i for i, ty in enumerate(types) if ty in (_UNKNOWN, _CONTROL)]
        elif hasattr(tokenizer, "token_type"):
            special = [i for i in range(n) if tokenizer.token_type(i) in (_UNKNOWN, _CONTROL)]
        else:  # a minimal tokenizer: its BOS and end tokens are the control tokens
            special = sorted({i for i in (tokenizer.bos_id, tokenizer.eos_id, *tokenizer.eot_ids) if i is not None})
        names = set(special)
        pieces = getattr(tokenizer, "_plain", None)
        piece = pieces.__getitem__ if pieces is not None else tokenizer.token_to_piece
        self.tokens = [b"\xff" + tokenizer.token_text(i).encode("utf-8", "surrogateescape") if i in names
                       else piece(i) for i in range(n)]
        self.special_token_ids = special
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else (
            min(tokenizer.eot_ids) if tokenizer.eot_ids else 0)
        self.bos_token_id = tokenizer.bos_id

    def __call__(self, text) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return list(self._tok.tokenize(text, add_bos=False, special=False))


def ll_tokenizer(tokenizer):
    """llguidance's LLTokenizer for a pyllama Tokenizer, made once and kept on it."""
    cached = getattr(tokenizer, "_ll_tokenizer", None)
    if cached is not None:
        return cached
    llg = _llguidance()
    eos = sorted(tokenizer.eot_ids) or None
    made = llg.LLTokenizer(llg.TokenizerWrapper(_Vocabulary(tokenizer)), n_vocab=tokenizer.n_vocab,
                           eos_token=eos)
    tokenizer._ll_tokenizer = made
    return made


def json_schema_grammar(schema: dict | str | bool) -> str:
    """llguidance's grammar for a JSON schema (a dict or its JSON text)."""
    llg = _llguidance()
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON schema must be an object (got {type(schema).__name__})")
    return llg.LLMatcher.grammar_from_json_schema(schema, defaults=dict(_JSON_OPTIONS))


def _check(grammar: str, what: str) -> str:
    llg = _llguidance()
    error = llg.LLMatcher.validate_grammar(grammar)
    if error:
        raise ValueError(f"{what}: {error}")
    return grammar


class LlamaGrammar:
    """A grammar to constrain generation with (llama-cpp-python's ``LlamaGrammar``).

    Pass it as ``grammar=`` to ``create_completion``, ``create_chat_completion`` or
    ``generate``. Build it with :meth:`from_string` (GBNF or Lark), :meth:`from_file`,
    :meth:`from_json_schema` or :meth:`from_regex`.
    """

    def __init__(self, *, _grammar: str, source: str = ""):
        self._grammar = _grammar  # llguidance's serialized grammar
        self.source = source

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> "LlamaGrammar":
        """A GBNF grammar (llama.cpp's format, ``root ::= ...``) or a Lark one (``start: ...``)."""
        if not isinstance(grammar, str) or not grammar.strip():
            raise ValueError("the grammar is empty")
        llg = _llguidance()
        try:
            compiled = llg.grammar_from("gbnf", grammar)
        except ValueError as e:
            raise ValueError(f"bad grammar: {e}") from None
        return cls(_grammar=_check(compiled, "bad grammar"), source=grammar)

    @classmethod
    def from_file(cls, file, verbose: bool = True) -> "LlamaGrammar":
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read grammar file {file}: {e}") from None
        return cls.from_string(text, verbose)

    @classmethod
    def from_json_schema(cls, json_schema: str | dict, verbose: bool = True) -> "LlamaGrammar":
        """Output that is JSON valid under the schema (a dict or its JSON text)."""
        text = json_schema if isinstance(json_schema, str) else json.dumps(json_schema)
        return cls(_grammar=_check(json_schema_grammar(json_schema), "bad JSON schema"), source=text)

    @classmethod
    def from_regex(cls, pattern: str) -> "LlamaGrammar":
        llg = _llguidance()
        return cls(_grammar=_check(llg.LLMatcher.grammar_from_regex(pattern), "bad regex"), source=pattern)

    @classmethod
    def from_lark(cls, lark: str) -> "LlamaGrammar":
        """A grammar in llguidance's Lark dialect (it may embed ``%json {schema}``)."""
        llg = _llguidance()
        return cls(_grammar=_check(llg.LLMatcher.grammar_from_lark(lark), "bad grammar"), source=lark)

    def __repr__(self) -> str:
        head = self.source[:40].replace("\n", " ")
        return f"LlamaGrammar({head!r}{'...' if len(self.source) > 40 else ''})"


def response_format_grammar(response_format: dict | None) -> LlamaGrammar | None:
    """The grammar for an OpenAI ``response_format`` (None for plain text)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ValueError("response_format must be a dict such as {'type': 'json_object'}")
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":  # llama-cpp-python also takes a "schema" here
        return LlamaGrammar.from_json_schema(response_format.get("schema") or {"type": "object"})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise ValueError("response_format of type 'json_schema' needs a 'json_schema' dict "
                             "({'name': ..., 'schema': {...}})")
        schema = spec.get("schema", spec if "type" in spec or "properties" in spec else None)
        if schema is None:
            raise ValueError("response_format['json_schema'] has no 'schema'")
        return LlamaGrammar.from_json_schema(schema)
    raise ValueError(f"response_format type {kind!r} is not one of 'text', 'json_object', 'json_schema'")


class GrammarConstraint:
    """One generation under a grammar: the mask of the next token, then the token taken.

    ``end_ids`` are the tokens that end the generation (EOS, end of turn): they are
    allowed exactly when the grammar accepts what has been generated.

    :meth:`choose` picks each token. When the sampler draws from the whole distribution
    (greedy, or plain temperature sampling), it first draws without the mask and asks
    llguidance about that one token, which costs far less than a mask; only when the
    grammar rejects it is the mask computed and the token drawn again under it (llama.cpp
    does the same). For greedy that is the masked argmax exactly; for temperature sampling
    a token t is taken with probability p(t) + (1 - Z) p(t) / Z = p(t) / Z, Z the mass the
    grammar allows: the masked distribution exactly. Truncating samplers (top-k, top-p,
    min-p, typical) cut the unmasked distribution differently from the masked one, so they
    always draw under the mask.
    """

    def __init__(self, tokenizer, grammar: LlamaGrammar | str, end_ids: Iterable[int] = (), lazy: bool = True):
        llg = _llguidance()
        text = grammar._grammar if isinstance(grammar, LlamaGrammar) else grammar
        self._matcher = llg.LLMatcher(ll_tokenizer(tokenizer), text, log_level=0)
        if self._matcher.is_error():
            raise ValueError(f"bad grammar: {self._matcher.get_error()}")
        self.n_vocab = tokenizer.n_vocab
        self.mask = np.zeros((self.n_vocab + 31) // 32, dtype=np.uint32)
        self._mask_at, self._mask_bytes = self.mask.ctypes.data, self.mask.nbytes
        self._end = frozenset(int(t) for t in end_ids if 0 <= int(t) < self.n_vocab)
        words: dict = {}
        for t in self._end:
            words[t >> 5] = words.get(t >> 5, 0) | 1 << (t & 31)
        self._end_words = np.array(sorted(words), dtype=np.intp)
        self._end_bits = np.array([words[w] for w in sorted(words)], dtype=np.uint32)
        self.lazy = lazy
        self.n_masks = 0  # masks computed (the rest of the steps took the lazy check)

    def fill_mask(self) -> np.ndarray:
        """The bitmask of tokens allowed next (bit i % 32 of word i // 32), in ``self.mask``."""
        m = self._matcher
        m.unsafe_compute_mask_ptr(self._mask_at, self._mask_bytes)
        self.n_masks += 1
        if m.is_error():  # its first line names the failure; the rest is the parser's state dump
            first = (m.get_error().strip() or "unknown error").splitlines()[0]
            raise ValueError(f"grammar failed: {first} (the grammar allows no token after the output so far)")
        if self._end_words.size and m.is_accepting():
            self.mask[self._end_words] |= self._end_bits
        return self.mask

    def accept(self, token: int) -> None:
        """Advance past a sampled token (one the mask allowed)."""
        if not self._matcher.consume_token(int(token)):
            raise ValueError(f"token {token} is not allowed by the grammar: {self._matcher.get_error()}")

    def try_accept(self, token: int) -> bool:
        """Advance past ``token`` if the mask would allow it, without computing the mask.
        False: the mask would not allow it, or this check cannot tell."""
        m = self._matcher
        if token in self._end:
            if not m.is_accepting():
                return False
            self.accept(token)
            return True
        if m.compute_ff_bytes():
            # text the grammar forces next: its mask then allows only the tokens that begin
            # the canonical tokenization of that text, fewer than the grammar would accept
            return False
        return m.try_consume_tokens([token]) == 1

    def choose(self, sampler, logits, history) -> int:
        """The next token: drawn by ``sampler`` (a :class:`~pyllama.sampling.Sampler`) from
        ``logits`` under the grammar, and accepted."""
        if self.lazy and sampler.untruncated:
            token = sampler.sample(logits, history)
            if self.try_accept(token):
                return token
        token = sampler.sample(logits, history, self.fill_mask())
        self.accept(token)
        return token

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts ``token`` next (llguidance's own check, without the mask)."""
        return self._matcher.validate_tokens([int(token)]) == 1

    @property
    def done(self) -> bool:
        """The grammar is complete and accepts no more text."""
        return self._matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._matcher.is_accepting()


def as_grammar(grammar: Any) -> LlamaGrammar | None:
    """Accept a LlamaGrammar, or a GBNF/Lark string, for ``grammar=`` arguments."""
    if grammar is None or isinstance(grammar, LlamaGrammar):
        return grammar
    if isinstance(grammar, str):
        return LlamaGrammar.from_string(grammar)
    raise ValueError(f"grammar must be a LlamaGrammar or a GBNF string (got {type(grammar).__name__})")
