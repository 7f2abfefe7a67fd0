"""Chat templates: turn a list of messages into the prompt a model was trained on.

A GGUF file carries its template as Jinja2 source in ``tokenizer.chat_template``.
Model files are untrusted input, so templates are rendered in Jinja2's
``ImmutableSandboxedEnvironment``: attribute access to Python internals
(``__class__``, ``__globals__``, ...) raises, containers cannot be mutated,
and huge repetitions (``'a' * 10**10``) are refused. Any failure surfaces as
:class:`ChatTemplateError` naming the problem.

Files without a template (and users who want another) can pick a built-in one
by name: chatml, llama-2, llama-3, mistral, gemma.
"""
from __future__ import annotations

import datetime
import json
import operator
from dataclasses import dataclass

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ChatTemplateError

__all__ = ["ChatTemplateError", "BUILTIN_TEMPLATES", "render_template", "ChatPrompt",
           "template_for", "format_chat"]


# ---------------------------------------------------------------------------
# Built-in templates (written for pyllama; each follows its family's published format)

_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama 2 chat: the system prompt goes inside the first [INST] block.
_LLAMA2 = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = none %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' }}"
    "{% if loop.first and system is not none %}{{ '<<SYS>>\n' + system + '\n<</SYS>>\n\n' }}{% endif %}"
    "{{ message['content'] | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
    "{% else %}{{ raise_exception('llama-2 format: roles must be system, user or assistant') }}"
    "{% endif %}"
    "{% endfor %}"
)

_LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Mistral instruct: no system role; a system prompt is prepended to the first user turn.
_MISTRAL = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = none %}{% set rest = messages %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in rest %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system is not none %}{% set content = system + '\n\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{{ '[INST] ' + content + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('mistral format: roles must be system, user or assistant') }}"
    "{% endif %}"
    "{% endfor %}"
)

# Gemma: roles user/model; a system prompt is prepended to the first user turn.
_GEMMA = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = none %}{% set rest = messages %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in rest %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{% if loop.first and system is not none %}{% set content = system + '\n\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + content | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

BUILTIN_TEMPLATES = {
    "chatml": _CHATML,
    "llama-2": _LLAMA2,
    "llama-3": _LLAMA3,
    "mistral": _MISTRAL,
    "gemma": _GEMMA,
}

# Strings that end an assistant turn in each built-in format (besides EOS).
_END_OF_TURN = {
    "chatml": ["<|im_end|>"],
    "llama-2": [],
    "llama-3": ["<|eot_id|>"],
    "mistral": [],
    "gemma": ["<end_of_turn>"],
}

_ALIASES = {"llama2": "llama-2", "llama3": "llama-3", "llama-2-chat": "llama-2", "gemma2": "gemma",
            "gemma3": "gemma", "qwen": "chatml", "smollm": "chatml"}


# ---------------------------------------------------------------------------
# Sandbox

_MAX_OUTPUT_ITEMS = 1_000_000  # largest string/list a template may build with * or **


class _StrictUnsafeUndefined(jinja2.Undefined):
    """Undefined that is lenient like the default one, except for sandbox refusals:
    those raise even when merely printed, so ``{{ ''.__class__ }}`` fails loudly
    instead of rendering an empty string."""

    __slots__ = ()

    def _strict(self):
        if self._undefined_exception is SecurityError:
            self._fail_with_undefined_error()

    def __str__(self):
        self._strict()
        return super().__str__()

    def __iter__(self):
        self._strict()
        return super().__iter__()

    def __bool__(self):
        self._strict()
        return super().__bool__()

    def __len__(self):
        self._strict()
        return super().__len__()


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator_name, left, right):
        if operator_name == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple, bytes)) and isinstance(count, int):
                    if len(seq) * count > _MAX_OUTPUT_ITEMS:
                        raise SecurityError("template tried to build a sequence that is too large")
            return operator.mul(left, right)
        if operator_name == "**":
            if isinstance(right, (int, float)) and isinstance(left, (int, float)):
                if abs(right) > 64 and abs(left) > 1:
                    raise SecurityError("template tried to compute a power that is too large")
            return operator.pow(left, right)
        return super().call_binop(context, operator_name, left, right)


def _raise_exception(message):
    raise jinja2.TemplateError(str(message))


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(str(fmt))


def _tojson(value, indent=None, separators=None, sort_keys=False):
    # Like Hugging Face's: plain JSON (Jinja's own tojson HTML-escapes <, >, & and ').
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _environment() -> _Sandbox:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, undefined=_StrictUnsafeUndefined,
                   loader=jinja2.BaseLoader(), autoescape=False)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


def _normalize_messages(messages):
    """Copy messages as plain dicts; OpenAI content parts become one string."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"messages[{i}] must be a dict with a 'role' key")
        m = dict(m)
        content = m.get("content")
        if content is None:
            m["content"] = ""
        elif isinstance(content, list):
            m["content"] = "".join(part.get("text", "") for part in content
                                   if isinstance(part, dict) and part.get("type", "text") == "text")
        elif not isinstance(content, str):
            raise ValueError(f"messages[{i}]['content'] must be a string or a list of content parts")
        out.append(m)
    return out


def render_template(source: str, messages, *, bos_token: str = "", eos_token: str = "",
                    add_generation_prompt: bool = True, tools=None, **extra) -> str:
    """Render a (possibly hostile) chat template in the sandbox."""
    env = _environment()
    try:
        template = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template has a syntax error (line {e.lineno}): {e.message}") from None
    variables = dict(extra)
    variables.update(messages=_normalize_messages(messages), bos_token=bos_token,
                     eos_token=eos_token, add_generation_prompt=add_generation_prompt)
    if tools is not None:
        variables["tools"] = tools
    try:
        return template.render(**variables)
    except SecurityError as e:
        raise ChatTemplateError(f"chat template refused by the sandbox: {e}") from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
            OverflowError, RecursionError, MemoryError) as e:
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------
# Choosing a template for a model


def _vocab_has(tokenizer, metadata, piece: str) -> bool:
    tokens = metadata.get("tokenizer.ggml.tokens") if metadata else None
    if tokens is not None:
        try:
            return piece in tokens
        except TypeError:
            pass
    try:
        ids = tokenizer.tokenize(piece, add_bos=False, special=True)
    except Exception:
        return False
    return len(ids) == 1


def _guess_format(tokenizer, metadata) -> str:
    if str((metadata or {}).get("general.architecture", "")).startswith("gemma"):
        return "gemma"  # Gemma files often come without a template
    for piece, name in (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama-3"),
                        ("<start_of_turn>", "gemma"), ("[INST]", "mistral")):
        if _vocab_has(tokenizer, metadata, piece):
            return name
    return "llama-2"


def template_for(chat_format, tokenizer, metadata) -> tuple[str, str]:
    """(template source, format name) for a model: an explicit built-in name,
    else the file's own template, else a guess from the vocabulary."""
    if chat_format:
        name = _ALIASES.get(chat_format, chat_format)
        if name not in BUILTIN_TEMPLATES:
            raise ValueError(f"unknown chat_format {chat_format!r}; choose one of "
                             + ", ".join(sorted(BUILTIN_TEMPLATES)))
        return BUILTIN_TEMPLATES[name], name
    source = (metadata or {}).get("tokenizer.chat_template")
    if isinstance(source, str) and source.strip():
        return source, "gguf"
    name = _guess_format(tokenizer, metadata)
    return BUILTIN_TEMPLATES[name], name


@dataclass
class ChatPrompt:
    text: str             # the rendered prompt
    tokens: list          # its token ids
    stop_ids: frozenset   # tokens that end the assistant turn (besides tokenizer.eot_ids)
    stop: list            # strings that end it


def _token_str(tokenizer, token_id) -> str:
    if token_id is None:
        return ""
    try:
        return tokenizer.token_text(token_id)
    except Exception:
        return tokenizer.detokenize([token_id], special=True).decode("utf-8", errors="replace")


def format_chat(llama, messages, tools=None, add_generation_prompt=True) -> ChatPrompt:
    """Render and tokenize a conversation for ``llama`` (anything with
    ``.tokenizer`` and ``.metadata``; ``chat_format`` is read if present)."""
    tokenizer = llama.tokenizer
    metadata = getattr(llama, "metadata", None) or {}
    source, name = template_for(getattr(llama, "chat_format", None), tokenizer, metadata)
    bos = _token_str(tokenizer, tokenizer.bos_id)
    eos = _token_str(tokenizer, tokenizer.eos_id)
    text = render_template(source, messages, bos_token=bos, eos_token=eos,
                           add_generation_prompt=add_generation_prompt, tools=tools)
    # The template decides about BOS: add the model's BOS only when the model wants one
    # and the template did not already write it.
    add_bos = bool(tokenizer.add_bos) and not (bos and text.startswith(bos))
    tokens = tokenizer.tokenize(text, add_bos=add_bos, special=True)
    if name in _END_OF_TURN:
        stop = list(_END_OF_TURN[name])
    else:  # the file's own template: the end-of-turn markers it writes
        stop = [s for s in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>") if s in source]
    stop_ids = set()
    for s in stop:
        ids = tokenizer.tokenize(s, add_bos=False, special=True)
        if len(ids) == 1:
            stop_ids.add(ids[0])
    return ChatPrompt(text=text, tokens=list(tokens), stop_ids=frozenset(stop_ids), stop=stop)
