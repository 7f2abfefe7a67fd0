"""Completions on top of a model's ``eval``: the llama-cpp-python API.

:class:`GenerationMixin` gives a model class ``generate``, ``create_completion``
(also ``__call__``) and ``create_chat_completion``. It only uses these
attributes of the model:

``eval(tokens, logits_all=False)``, ``logits``, ``eval_logits``, ``n_tokens``,
``input_ids``, ``truncate(n)``, ``shift_context(n_keep, n_discard)``,
``reset()``, ``tokenizer``, ``metadata``, ``n_ctx()``, ``n_batch``, ``seed``,
``context_overflow`` ("shift" or "error"), and optionally ``model_path`` and
``chat_format``.

Prompt caching: a new prompt is compared with the tokens already in the KV
cache (``input_ids``); the common prefix is kept and only the rest is
evaluated, in batches of ``n_batch``.

Full context: with ``context_overflow="shift"`` the oldest half of the
positions after the first ``n_keep`` (the BOS token, when the prompt starts
with one) is dropped, as llama.cpp's ``main`` does; with ``"error"`` a
:class:`ContextOverflowError` is raised. A prompt that does not fit the
context raises either way.
"""
from __future__ import annotations

import codecs
import numbers
import time
import uuid
from typing import Iterator

import numpy as np

from .errors import ContextOverflowError
from .sampling import Sampler, SamplingParams, log_softmax, make_rng

__all__ = ["GenerationMixin", "StopStringFilter", "LogitsProcessorList", "StoppingCriteriaList"]


def _token_list(tokens, name: str) -> list:
    """Token ids as Python ints; a float or bool among them is a TypeError, not silently truncated."""
    out = []
    for t in tokens:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral):
            raise TypeError(f"{name} must be a string or integer token ids (got {type(t).__name__} {t!r})")
        out.append(int(t))
    return out


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.nonzero(x != y)[0]
    return int(diff[0]) if diff.size else n


class StopStringFilter:
    """Streams text while holding back anything that might be the start of a
    stop string, so a stop string split across tokens never leaks."""

    def __init__(self, stops):
        self.stops = [s for s in (stops or []) if s]
        self.text = ""      # everything pushed
        self.emitted = 0    # how much of it was released
        self.stopped = False

    def _held_back(self) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def push(self, piece: str) -> str:
        """Add text; return what can safely be shown now. Sets ``stopped`` on a stop string."""
        if self.stopped:
            return ""
        self.text += piece
        if self.stops:
            # A stop string cannot start before `emitted` minus its length (held-back rule),
            # so searching from there is enough.
            start = max(0, self.emitted - max(len(s) for s in self.stops))
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                end = min(hits)
                self.stopped = True
                self.text = self.text[:end]
                out = self.text[self.emitted:end]
                self.emitted = end
                return out
        safe = len(self.text) - self._held_back()
        if safe <= self.emitted:
            return ""
        out = self.text[self.emitted:safe]
        self.emitted = safe
        return out

    def flush(self) -> str:
        """Release the held-back text (generation ended without a stop string)."""
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out


# llama-cpp-python options pyllama does not implement, with the values that mean "off":
# code written for llama-cpp-python often passes them explicitly.
_NEUTRAL_OPTIONS = {
    "tfs_z": 1.0, "mirostat_mode": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1, "logprobs_processor": None,
}


class LogitsProcessorList(list):
    """llama-cpp-python's: callables ``(input_ids, scores) -> scores`` applied in order."""

    def __call__(self, input_ids, scores):
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class StoppingCriteriaList(list):
    """llama-cpp-python's: callables ``(input_ids, scores) -> bool``; generation stops when any is true."""

    def __call__(self, input_ids, scores) -> bool:
        return any(criterion(input_ids, scores) for criterion in self)


def _as_callable_list(value, name):
    """logits_processor / stopping_criteria: one callable or a list of them (llama-cpp-python's
    LogitsProcessorList / StoppingCriteriaList are lists that are also callable)."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for f in items:
        if not callable(f):
            raise ValueError(f"{name} must be a callable (input_ids, scores) or a list of them "
                             f"(got {type(f).__name__})")
    return items


def _process_logits(processors, input_ids, logits):
    """Run logits processors in order, each on the previous one's output (float32, n_vocab)."""
    ids = np.asarray(input_ids, dtype=np.intc)
    scores = np.array(logits, dtype=np.float32)
    for f in processors:
        out = f(ids, scores)
        if out is not None:
            scores = np.asarray(out, dtype=np.float32)
        if scores.shape != logits.shape:
            raise ValueError(f"a logits_processor returned shape {scores.shape}, not {logits.shape}")
    return scores


def _check_llama_cpp_options(options: dict) -> None:
    for name, value in options.items():
        if name not in _NEUTRAL_OPTIONS:
            raise TypeError(f"unexpected keyword argument {name!r}")
        if name in ("mirostat_tau", "mirostat_eta"):
            continue  # only matter when mirostat_mode is on
        if value != _NEUTRAL_OPTIONS[name]:
            raise ValueError(f"{name}={value!r} is not supported by pyllama (leave it at {_NEUTRAL_OPTIONS[name]!r})")


class _TextOffsets:
    """text_offset of each token as llama-cpp-python counts it: the characters of the
    text before it (``len(detokenize(tokens[:i]).decode("utf-8", "ignore"))``) plus a base
    (the prompt's length when the prompt is not echoed), kept incrementally."""

    def __init__(self, base: int):
        self.chars = base
        self._utf8 = codecs.getincrementaldecoder("utf-8")("ignore")

    def push(self, piece: bytes) -> int:
        """The offset of a token whose text is ``piece``; advances past it."""
        at = self.chars
        self.chars += len(self._utf8.decode(piece))
        return at


def _collect(events):
    """Drain the generation events of a non-streamed call: (text, logprob entries, finish reason, usage)."""
    parts, entries = [], []
    finish_reason, usage = "length", None
    for kind, value, extra in events:
        if kind == "text":
            parts.append(value)
            if extra:
                entries.extend(extra)
        else:
            finish_reason, usage = value, extra
    return "".join(parts), entries, finish_reason, usage


class GenerationMixin:
    """Sampling loop, completions and chat completions for a model with ``eval``."""

    # -- helpers -----------------------------------------------------------------------

    def _generation_rng(self):
        rng = getattr(self, "_pl_rng", None)
        if rng is None:
            rng = make_rng(getattr(self, "seed", None))
            self._pl_rng = rng
        return rng

    def set_seed(self, seed) -> None:
        """Reseed the sampler (None or negative: random)."""
        self._pl_rng = make_rng(seed)

    def _timings(self) -> dict:
        t = getattr(self, "last_timings", None)
        if t is None:
            t = self.last_timings = {}
        return t

    def _shift_or_raise(self, n_keep: int, needed: int) -> None:
        n_ctx = self.n_ctx()
        policy = getattr(self, "context_overflow", "shift")
        if policy != "shift":
            raise ContextOverflowError(
                f"context window full: {self.n_tokens} tokens cached + {needed} new > n_ctx={n_ctx} "
                f"(pass a larger n_ctx, fewer max_tokens, or context_overflow='shift')")
        n_past = self.n_tokens
        n_keep = min(n_keep, n_past)
        n_discard = (n_past - n_keep) // 2
        if n_discard <= 0:
            raise ContextOverflowError(
                f"context window full and nothing left to shift out (n_ctx={n_ctx}, n_keep={n_keep})")
        self.shift_context(n_keep, n_discard)

    def _eval_tokens(self, tokens, n_keep: int) -> None:
        """Evaluate tokens in batches of n_batch, shifting the context when full."""
        n_ctx = self.n_ctx()
        n_batch = max(1, int(getattr(self, "n_batch", 512) or 512))
        i = 0
        while i < len(tokens):
            room = n_ctx - self.n_tokens
            if room <= 0:
                self._shift_or_raise(n_keep, len(tokens) - i)
                continue
            take = min(n_batch, room, len(tokens) - i)
            self.eval(tokens[i:i + take])
            i += take

    # -- token level -------------------------------------------------------------------

    def generate(self, tokens, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0,
                 reset: bool = True, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 penalty_last_n: int = 64, logit_bias: dict | None = None, seed=None,
                 n_keep: int | None = None, grammar=None, logits_processor=None) -> Iterator[int]:
        """Evaluate ``tokens`` and yield sampled token ids forever (the caller stops).

        Each yielded token is evaluated when the generator is resumed, so
        stopping after a token never pays for its forward pass. With
        ``reset=True`` (default) the KV cache keeps its longest common prefix
        with ``tokens``; with ``reset=False`` the tokens are appended to it.

        ``grammar`` (a :class:`~pyllama.grammar.LlamaGrammar`, or a running
        :class:`~pyllama.grammar.GrammarConstraint`) restricts every token to what
        it allows; ``logits_processor`` (a callable ``(input_ids, scores) -> scores``
        or a list of them) rewrites the logits before sampling.
        """
        tokens = _token_list(tokens, "tokens")
        if not tokens:
            raise ValueError("generate() needs at least one prompt token")
        n_ctx = self.n_ctx()
        if len(tokens) > n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens but the context window holds n_ctx={n_ctx}")
        params = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                                typical_p=typical_p, repeat_penalty=repeat_penalty,
                                frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, penalty_last_n=penalty_last_n,
                                logit_bias=logit_bias)
        if seed is not None:
            self.set_seed(seed)
        sampler = Sampler(params, self._generation_rng())
        processors = _as_callable_list(logits_processor, "logits_processor")
        constraint = None
        if grammar is not None:
            from .grammar import GrammarConstraint, as_grammar

            constraint = grammar if isinstance(grammar, GrammarConstraint) else GrammarConstraint(
                self.tokenizer, as_grammar(grammar), end_ids=getattr(self.tokenizer, "eot_ids", ()))

        if reset:
            # Keep at least one token to evaluate so fresh logits exist.
            keep = _common_prefix(self.input_ids, tokens[:-1])
            if keep < self.n_tokens:
                if keep == 0:
                    self.reset()
                else:
                    self.truncate(keep)
            history = list(tokens)
            pending = tokens[keep:]
        else:
            history = list(self.input_ids) + tokens
            pending = tokens
        if n_keep is None:
            bos = getattr(self.tokenizer, "bos_id", None)
            n_keep = 1 if (bos is not None and history and history[0] == bos) else 0

        timings = self._timings()
        timings.update(prompt_tokens=len(pending), prompt_s=0.0, gen_tokens=0, gen_s=0.0,
                       sample_s=0.0)
        t0 = time.perf_counter()
        self._eval_tokens(pending, n_keep)
        timings["prompt_s"] = time.perf_counter() - t0

        now, sample, ev = time.perf_counter, sampler.sample, self.eval
        while True:
            t0 = now()
            if processors is None and constraint is None:
                token = sample(self.logits, history)
            else:
                logits = self.logits if processors is None else _process_logits(processors, history, self.logits)
                token = sample(logits, history) if constraint is None else constraint.choose(sampler, logits, history)
            timings["sample_s"] += now() - t0
            history.append(token)
            yield token
            t0 = now()
            if self.n_tokens < n_ctx:
                ev([token])
            else:  # full: shift the context first
                self._eval_tokens([token], n_keep)
            timings["gen_s"] += now() - t0
            timings["gen_tokens"] += 1

    # -- completions -------------------------------------------------------------------

    def _model_name(self, model):
        if model is not None:
            return model
        return str(getattr(self, "model_path", None) or "pyllama")

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.token_to_piece(token_id).decode("utf-8", errors="ignore")

    def _top_logprobs(self, logprobs_row: np.ndarray, token: int, n: int) -> dict:
        top = {}
        if n > 0:
            best = np.argpartition(-logprobs_row, min(n, logprobs_row.size) - 1)[:n]
            best = best[np.argsort(-logprobs_row[best], kind="stable")]
            for i in best:
                top[self._piece(int(i))] = float(logprobs_row[i])
        top[self._piece(token)] = float(logprobs_row[token])
        return top

    def _prompt_logprobs(self, prompt_tokens, n_top: int) -> list:
        """Logprobs of the prompt tokens (echo=True with logprobs): re-evaluates the prompt."""
        self.reset()
        rows = []
        n_batch = max(1, int(getattr(self, "n_batch", 512) or 512))
        for i in range(0, len(prompt_tokens), n_batch):
            self.eval(prompt_tokens[i:i + n_batch], logits_all=True)
            n = len(prompt_tokens[i:i + n_batch])
            rows.append(np.array(self.eval_logits[-n:], dtype=np.float32))
        logits = np.concatenate(rows, axis=0)
        out = [(prompt_tokens[0], None, None)]
        for pos in range(1, len(prompt_tokens)):
            lp = log_softmax(logits[pos - 1])
            tok = prompt_tokens[pos]
            out.append((tok, float(lp[tok]), self._top_logprobs(lp, tok, n_top)))
        return out

    def _completion_events(self, prompt, *, suffix=None, max_tokens=16, temperature=0.8,
                           top_p=0.95, min_p=0.05, typical_p=1.0, logprobs=None, echo=False,
                           stop=None, frequency_penalty=0.0, presence_penalty=0.0,
                           repeat_penalty=1.0, top_k=40, seed=None, logit_bias=None,
                           penalty_last_n=64, stop_ids=(), grammar=None, logits_processor=None,
                           stopping_criteria=None):
        """Check the arguments and return an iterator of ("text", str, logprob_entries)
        events ending with ("end", finish_reason, usage)."""
        tokenizer = self.tokenizer
        if isinstance(prompt, str):
            if prompt == "":
                if tokenizer.bos_id is None:
                    raise ValueError("empty prompt and the model has no BOS token to start from")
                prompt_tokens = [tokenizer.bos_id]
            else:
                prompt_tokens = list(tokenizer.tokenize(prompt, add_bos=None, special=True))
        else:
            prompt_tokens = _token_list(prompt, "prompt")
        if not prompt_tokens:
            raise ValueError("the prompt has no tokens")
        n_ctx = self.n_ctx()
        if len(prompt_tokens) >= n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(prompt_tokens)} tokens but the context window holds n_ctx={n_ctx} "
                f"(including at least one generated token); pass a larger n_ctx or a shorter prompt")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, numbers.Integral)):
            raise TypeError(f"max_tokens must be an integer or None (got {max_tokens!r})")
        if max_tokens is None or max_tokens <= 0:
            max_tokens = n_ctx - len(prompt_tokens)
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, numbers.Integral)):
            raise TypeError(f"logprobs must be an integer or None (got {logprobs!r})")
        if logprobs is not None and logprobs < 0:
            raise ValueError("logprobs must be >= 0")
        if isinstance(stop, str):
            stop = [stop]
        end_ids = set(getattr(tokenizer, "eot_ids", ()) or ())
        if tokenizer.eos_id is not None:
            end_ids.add(tokenizer.eos_id)
        end_ids.update(stop_ids or ())

        if seed is not None:
            self.set_seed(seed)

        SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                       typical_p=typical_p, repeat_penalty=repeat_penalty,
                       frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                       penalty_last_n=penalty_last_n, logit_bias=logit_bias).validate()
        stoppers = _as_callable_list(stopping_criteria, "stopping_criteria")
        _as_callable_list(logits_processor, "logits_processor")
        constraint = None
        if grammar is not None:  # compiled now, so a bad grammar fails at the call
            from .grammar import GrammarConstraint, as_grammar

            constraint = GrammarConstraint(tokenizer, as_grammar(grammar), end_ids=end_ids)

        # Arguments are checked above, eagerly; the work below runs as the caller iterates.
        space_rule = getattr(tokenizer, "add_space_prefix", False)

        def token_bytes(token, prev):  # a token's text where it stands (SentencePiece's leading space)
            if not space_rule:
                return tokenizer.token_to_piece(token)
            return tokenizer.detokenize([token], prev_ids=prev)

        def events():
            if echo:
                offsets = _TextOffsets(0)
                prompt_text = tokenizer.detokenize(prompt_tokens).decode("utf-8", errors="replace")
                entries = None
                if logprobs is not None:
                    entries = []
                    for pos, (t, lp, top) in enumerate(self._prompt_logprobs(prompt_tokens, logprobs)):
                        if pos == 0 and t == tokenizer.bos_id:
                            continue  # no text, and no entry in llama-cpp-python's list
                        at = offsets.push(token_bytes(t, prompt_tokens[pos - 1:pos] if pos else None))
                        entries.append((self._piece(t), lp, top, at))
                    if entries:  # llama-cpp-python (and OpenAI): the first echoed token has none
                        entries[0] = (entries[0][0], None, None, entries[0][3])
                yield ("text", prompt_text, entries)
            elif isinstance(prompt, str):
                offsets = _TextOffsets(len(prompt))
            else:
                offsets = _TextOffsets(len(tokenizer.detokenize(prompt_tokens).decode("utf-8", errors="ignore")))

            gen = self.generate(prompt_tokens, top_k=top_k, top_p=top_p, min_p=min_p,
                                typical_p=typical_p, temp=temperature, repeat_penalty=repeat_penalty,
                                frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                                penalty_last_n=penalty_last_n, logit_bias=logit_bias,
                                grammar=constraint, logits_processor=logits_processor)
            # prev_ids: a SentencePiece continuation keeps its leading space ("is" + " Paris")
            decoder = tokenizer.stream(prev_ids=prompt_tokens)
            stops = StopStringFilter(stop)
            n_completion = 0
            finish_reason = "length"
            pending_entries = []  # logprob entries of tokens whose text is not released yet
            prev = prompt_tokens[-1:]
            try:
                for token in gen:
                    if token in end_ids:
                        finish_reason = "stop"
                        break
                    n_completion += 1
                    if logprobs is not None:
                        lp = log_softmax(self.logits)
                        pending_entries.append((self._piece(token), float(lp[token]),
                                                self._top_logprobs(lp, token, logprobs),
                                                offsets.push(token_bytes(token, prev))))
                        prev = [token]
                    out = stops.push(decoder.push(token))
                    if out or stops.stopped:
                        yield ("text", out, pending_entries if logprobs is not None else None)
                        pending_entries = []
                    if stops.stopped:
                        finish_reason = "stop"
                        break
                    if stoppers is not None:
                        # llama-cpp-python's StoppingCriteria: (input_ids, scores of the last step);
                        # input_ids end with the token just sampled, whose text is kept
                        ids = np.asarray(self.input_ids + [token], dtype=np.intc)
                        if any(f(ids, self.logits) for f in stoppers):
                            finish_reason = "stop"
                            out = stops.push(decoder.flush()) + stops.flush()
                            if out or pending_entries:
                                yield ("text", out, pending_entries if logprobs is not None else None)
                                pending_entries = []
                            stops.stopped = True
                            break
                    if n_completion >= max_tokens:
                        break
            finally:
                gen.close()
            if not stops.stopped:
                out = stops.push(decoder.flush())
                if stops.stopped:
                    finish_reason = "stop"
                out += stops.flush()
                if out or pending_entries:
                    yield ("text", out, pending_entries if logprobs is not None else None)
            if suffix:
                yield ("text", suffix, [] if logprobs is not None else None)
            usage = {"prompt_tokens": len(prompt_tokens), "completion_tokens": n_completion,
                     "total_tokens": len(prompt_tokens) + n_completion}
            yield ("end", finish_reason, usage)

        return events()

    @staticmethod
    def _logprobs_dict(entries):
        out = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
        for piece, lp, top, offset in entries:
            out["tokens"].append(piece)
            out["text_offset"].append(offset)
            out["token_logprobs"].append(lp)
            out["top_logprobs"].append(top)
        return out

    def create_completion(self, prompt, suffix: str | None = None, max_tokens: int | None = 16,
                          temperature: float = 0.8, top_p: float = 0.95, min_p: float = 0.05,
                          typical_p: float = 1.0, logprobs: int | None = None, echo: bool = False,
                          stop=None, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                          repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False,
                          seed: int | None = None, model: str | None = None,
                          logit_bias: dict | None = None, penalty_last_n: int = 64, grammar=None,
                          logits_processor=None, stopping_criteria=None, **llama_cpp_options):
        """OpenAI-style text completion (llama-cpp-python's shapes).

        ``prompt`` is a string or a list of token ids. ``max_tokens`` None or
        <= 0 generates until the context is full. ``stop`` strings end the
        completion and are not included. ``stream=True`` returns an iterator
        of chunks. ``grammar`` (a :class:`~pyllama.grammar.LlamaGrammar`) constrains
        the output; ``logits_processor`` and ``stopping_criteria`` are callables
        ``(input_ids, scores)`` (or lists of them) as in llama-cpp-python.
        llama-cpp-python options pyllama lacks (mirostat, tfs_z, ...) are accepted at
        their neutral values and refused otherwise.
        """
        _check_llama_cpp_options(llama_cpp_options)
        events = self._completion_events(
            prompt, suffix=suffix, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            min_p=min_p, typical_p=typical_p, logprobs=logprobs, echo=echo, stop=stop,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            repeat_penalty=repeat_penalty, top_k=top_k, seed=seed, logit_bias=logit_bias,
            penalty_last_n=penalty_last_n, grammar=grammar, logits_processor=logits_processor,
            stopping_criteria=stopping_criteria)
        completion_id = f"cmpl-{uuid.uuid4()}"
        created = int(time.time())
        model_name = self._model_name(model)
        if stream:
            return self._stream_completion(events, completion_id, created, model_name)
        text, entries, finish_reason, usage = _collect(events)
        lp = self._logprobs_dict(entries) if logprobs is not None else None
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": [{"text": text, "index": 0, "logprobs": lp,
                         "finish_reason": finish_reason}],
            "usage": usage,
        }

    def _stream_completion(self, events, completion_id, created, model_name):
        for kind, value, extra in events:
            if kind == "text":
                lp = None
                if extra is not None:
                    lp = self._logprobs_dict(extra)
                yield {"id": completion_id, "object": "text_completion", "created": created,
                       "model": model_name,
                       "choices": [{"text": value, "index": 0, "logprobs": lp,
                                    "finish_reason": None}]}
            else:
                self.last_usage = extra  # token counts of the stream just finished (servers report them)
                yield {"id": completion_id, "object": "text_completion", "created": created,
                       "model": model_name,
                       "choices": [{"text": "", "index": 0, "logprobs": None,
                                    "finish_reason": value}]}

    def __call__(self, prompt, *args, **kwargs):
        """Same as :meth:`create_completion`."""
        return self.create_completion(prompt, *args, **kwargs)

    # -- chat ----------------------------------------------------------------------------

    def create_chat_completion(self, messages, functions=None, function_call=None, tools=None,
                               tool_choice=None, temperature: float = 0.2, top_p: float = 0.95,
                               top_k: int = 40, min_p: float = 0.05, typical_p: float = 1.0,
                               stream: bool = False, stop=None, seed: int | None = None,
                               response_format=None, max_tokens: int | None = None,
                               presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                               repeat_penalty: float = 1.0, model: str | None = None,
                               logit_bias: dict | None = None, logprobs: bool | None = None,
                               top_logprobs: int | None = None, penalty_last_n: int = 64,
                               grammar=None, logits_processor=None, stopping_criteria=None,
                               **llama_cpp_options):
        """OpenAI-style chat completion, rendered with the model's chat template.

        Returns a ``chat.completion`` dict, or with ``stream=True`` an iterator
        of ``chat.completion.chunk`` dicts (first delta carries the role).
        ``response_format`` ``{"type": "json_object"}`` or ``{"type": "json_schema",
        "json_schema": {"schema": ...}}`` constrains the reply to JSON (valid under
        the schema). ``tools`` / ``tool_choice`` as OpenAI's (see :mod:`pyllama.tools`):
        calls come back in ``message["tool_calls"]`` with finish_reason "tool_calls".
        """
        _check_llama_cpp_options(llama_cpp_options)
        from .grammar import response_format_grammar
        from . import tools as tool_calls

        format_grammar = response_format_grammar(response_format)
        if grammar is not None and format_grammar is not None:
            raise ValueError("pass either grammar= or a JSON response_format, not both")
        grammar = grammar if grammar is not None else format_grammar
        chat, tools, choice = self._chat_prompt(messages, tools, tool_choice, functions, function_call)
        if choice not in ("none", "auto"):  # a call is required: the reply is constrained to one
            if grammar is not None:
                raise ValueError(f"tool_choice={tool_choice!r} constrains the reply to a tool call; "
                                 "it cannot be combined with grammar= or a JSON response_format")
            grammar = tool_calls.forced_call_grammar(tools, choice)
        if isinstance(stop, str):
            stop = [stop]
        stop = list(stop or []) + [s for s in chat.stop if s not in (stop or [])]
        n_top = (top_logprobs or 0) if logprobs else None
        events = self._completion_events(
            chat.tokens, max_tokens=max_tokens, temperature=temperature, top_p=top_p, min_p=min_p,
            typical_p=typical_p, logprobs=n_top, stop=stop, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, repeat_penalty=repeat_penalty, top_k=top_k,
            seed=seed, logit_bias=logit_bias, penalty_last_n=penalty_last_n,
            stop_ids=chat.stop_ids, grammar=grammar, logits_processor=logits_processor,
            stopping_criteria=stopping_criteria)
        chat_id = f"chatcmpl-{uuid.uuid4()}"
        created = int(time.time())
        model_name = self._model_name(model)
        if stream:
            names = [t["function"]["name"] for t in tools] if tools else None
            return self._stream_chat(events, chat_id, created, model_name, n_top, tool_names=names)
        text, entries, finish_reason, usage = _collect(events)
        message = {"role": "assistant", "content": text}
        if tools:
            content, calls = tool_calls.parse_tool_calls(text, [t["function"]["name"] for t in tools])
            if calls:
                message = {"role": "assistant", "content": content, "tool_calls": calls}
                finish_reason = "tool_calls"
        return {
            "id": chat_id,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0,
                         "message": message,
                         "logprobs": self._chat_logprobs(entries) if n_top is not None else None,
                         "finish_reason": finish_reason}],
            "usage": usage,
        }

    def _chat_prompt(self, messages, tools=None, tool_choice=None, functions=None, function_call=None):
        """(ChatPrompt, tools offered, resolved tool_choice) for a chat request: the tools and any
        tool calls / results in the history rendered through the template or the fallback prompt."""
        from .chat_format import format_chat, template_for
        from . import tools as tool_calls

        tools = tool_calls.normalize_tools(tools, functions)
        choice = tool_calls.resolve_tool_choice(tool_choice, tools, function_call)
        if choice == "none":
            tools = None
        template_tools = None
        if tools or tool_calls.has_tool_history(messages):
            source, _ = template_for(getattr(self, "chat_format", None), self.tokenizer,
                                     getattr(self, "metadata", None) or {})
            messages, template_tools = tool_calls.prepare_messages(
                messages, tools, native=tool_calls.template_supports_tools(source))
        return format_chat(self, messages, tools=template_tools), tools, choice

    def chat_prompt_tokens(self, messages, tools=None, tool_choice=None, functions=None,
                           function_call=None) -> list:
        """The prompt token ids ``create_chat_completion`` evaluates for these arguments
        (a server prefills its cache with them)."""
        return list(self._chat_prompt(messages, tools, tool_choice, functions, function_call)[0].tokens)

    @staticmethod
    def _chat_logprobs(entries):
        return {"content": [
            {"token": piece, "logprob": lp, "bytes": list(piece.encode("utf-8")),
             "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))}
                              for t, v in (top or {}).items()]}
            for piece, lp, top, _ in entries]}

    def _stream_chat(self, events, chat_id, created, model_name, n_top, tool_names=None):
        def chunk(delta, finish_reason=None, logprobs=None):
            return {"id": chat_id, "object": "chat.completion.chunk", "created": created,
                    "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                 "finish_reason": finish_reason}]}

        n_calls = [0]

        def tool_deltas(items):
            # a call is sent whole once its closing tag arrives (one delta per call)
            for kind, value in items:
                if kind == "content":
                    yield chunk({"content": value})
                else:
                    yield chunk({"tool_calls": [{"index": n_calls[0], **value}]})
                    n_calls[0] += 1

        splitter = None
        if tool_names:
            from .tools import ToolCallStream

            splitter = ToolCallStream(tool_names)
        yield chunk({"role": "assistant"})
        for kind, value, extra in events:
            if kind == "text":
                if splitter is not None:
                    yield from tool_deltas(splitter.push(value))
                elif value or extra:
                    yield chunk({"content": value},
                                logprobs=self._chat_logprobs(extra) if n_top is not None else None)
            else:
                if splitter is not None:
                    yield from tool_deltas(splitter.flush())
                    if splitter.calls:
                        value = "tool_calls"
                self.last_usage = extra
                yield chunk({}, finish_reason=value)
