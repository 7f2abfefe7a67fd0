"""A stand-in for pyllama.Llama for unit tests of the generation loop (test_generation,
test_chat_format, test_chat_session, test_grammar_fake).

Byte-level vocabulary (ids 0..255 are bytes) plus a few special tokens. Its
"forward pass" is a deterministic function of the whole cached context, so KV
cache reuse, truncation and context shifting have observable effects, and a
test can compute independently what any context should produce.

Two modes:
* hash (default): logits = normal(0, 2) drawn from a generator seeded by a
  CRC of the context. Different contexts give unrelated distributions.
* script: ``fake.script = (base, token_ids)``; at context length L with
  base <= L < base + len(token_ids) the logits put +30 on token_ids[L - base]
  (else hash logits).
"""
from __future__ import annotations

import codecs
import zlib

import numpy as np

from pyllama.errors import ContextOverflowError
from pyllama.completion import GenerationMixin

BOS, EOS, IM_START, IM_END = 256, 257, 258, 259
SPECIAL = {BOS: b"<s>", EOS: b"</s>", IM_START: b"<|im_start|>", IM_END: b"<|im_end|>"}
N_VOCAB = 260


class _Stream:
    def __init__(self, tok, special):
        self.tok, self.special = tok, special
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id):
        return self.dec.decode(self.tok.token_to_piece(token_id) if (token_id < 256 or self.special)
                               else b"")

    def flush(self):
        return self.dec.decode(b"", final=True)


class FakeTokenizer:
    n_vocab = N_VOCAB
    bos_id = BOS
    eos_id = EOS
    eot_ids = frozenset({EOS, IM_END})
    add_eos = False

    def __init__(self, add_bos=True):
        self.add_bos = add_bos

    def tokenize(self, text, add_bos=None, special=False):
        if isinstance(text, str):
            text = text.encode("utf-8")
        if add_bos is None:
            add_bos = self.add_bos
        out = [BOS] if add_bos else []
        i = 0
        while i < len(text):
            if special:
                for tid, piece in SPECIAL.items():
                    if text.startswith(piece, i):
                        out.append(tid)
                        i += len(piece)
                        break
                else:
                    out.append(text[i])
                    i += 1
            else:
                out.append(text[i])
                i += 1
        return out

    def token_to_piece(self, token_id, special=False):
        return bytes([token_id]) if token_id < 256 else SPECIAL[token_id]

    def token_text(self, token_id):
        return self.token_to_piece(token_id).decode("latin-1")

    def detokenize(self, ids, special=False):
        return b"".join(self.token_to_piece(t) for t in ids if t < 256 or special)

    def decode(self, ids):
        return self.detokenize(ids).decode("utf-8", errors="replace")

    def stream(self, special=False, prev_ids=None):  # bytes have no leading-space rule
        return _Stream(self, special)


def hash_logits(context) -> np.ndarray:
    """The fake model's logits for a context (hash mode)."""
    key = zlib.crc32(np.asarray(context, dtype=np.int32).tobytes())
    return np.random.default_rng(key).normal(0.0, 2.0, N_VOCAB).astype(np.float32)


class FakeLlama(GenerationMixin):
    def __init__(self, n_ctx=64, n_batch=512, seed=-1, context_overflow="shift", add_bos=True,
                 chat_template=None, chat_format=None):
        self._n_ctx = n_ctx
        self.n_batch = n_batch
        self.seed = seed
        self.context_overflow = context_overflow
        self.tokenizer = FakeTokenizer(add_bos=add_bos)
        self.metadata = {}
        if chat_template is not None:
            self.metadata["tokenizer.chat_template"] = chat_template
        self.chat_format = chat_format
        self.model_path = "fake.gguf"
        self.input_ids = []
        self.logits = None
        self.eval_logits = None
        self.script = None
        self.eval_batches = []   # sizes of every eval call
        self.shifts = []         # (n_keep, n_discard) of every shift

    # --- the Llama interface used by GenerationMixin ---
    def n_ctx(self):
        return self._n_ctx

    @property
    def n_tokens(self):
        return len(self.input_ids)

    def logits_for(self, context):
        logits = hash_logits(context)
        if self.script is not None:
            base, ids = self.script
            k = len(context) - base
            if 0 <= k < len(ids):
                logits = logits.copy()
                logits[ids[k]] += 30.0
        return logits

    def eval(self, tokens, logits_all=False):
        tokens = [int(t) for t in tokens]
        if self.n_tokens + len(tokens) > self._n_ctx:
            raise ContextOverflowError("fake: past n_ctx")
        self.eval_batches.append(len(tokens))
        rows = []
        for t in tokens:
            self.input_ids.append(t)
            rows.append(self.logits_for(self.input_ids))
        self.logits = rows[-1]
        self.eval_logits = np.stack(rows) if logits_all else None

    def truncate(self, n):
        assert 0 <= n <= self.n_tokens
        del self.input_ids[n:]

    def shift_context(self, n_keep, n_discard):
        self.shifts.append((n_keep, n_discard))
        del self.input_ids[n_keep:n_keep + n_discard]

    def reset(self):
        self.input_ids = []

    def tokenize(self, text, add_bos=True, special=False):
        return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens, special=False):
        return self.tokenizer.detokenize(tokens, special=special)

    def evaluated(self):
        return sum(self.eval_batches)
