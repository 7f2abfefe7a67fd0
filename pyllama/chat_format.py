"""Chat templates: turn a list of messages into the prompt a model was trained on.

A GGUF file carries its template as Jinja2 source in ``tokenizer.chat_template``.
Model files are untrusted input, so templates are rendered in Jinja2's
``ImmutableSandboxedEnvironment`` (:mod:`pyllama.template_sandbox`): attribute
access to Python internals (``__class__``, ``__globals__``, ...) raises,
containers cannot be mutated, and rendering has a size budget and a CPU-time
budget. Any failure surfaces as :class:`ChatTemplateError` naming the problem.

Files without a template (and users who want another) can pick a built-in one
by name: chatml, llama-2, llama-3, mistral, gemma, phi-3.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import template_sandbox
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

# Gemma: roles user/model; as Gemma 3's template does, a system prompt (untrimmed) and a blank
# line go before the first turn's (trimmed) text.
_GEMMA = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set rest = messages %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in rest %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Phi-3 / Phi-3.5: <|role|> headers closed by <|end|>; an empty system prompt is left out,
# and a prompt that does not ask for the answer ends with EOS, as in Phi-3.5's template.
_PHI3 = (
    "{% for message in messages %}"
    "{% if message['role'] in ('user', 'assistant') or (message['role'] == 'system' and message['content']) %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

BUILTIN_TEMPLATES = {
    "chatml": _CHATML,
    "llama-2": _LLAMA2,
    "llama-3": _LLAMA3,
    "mistral": _MISTRAL,
    "gemma": _GEMMA,
    "phi-3": _PHI3,
}

# Strings that end an assistant turn in each built-in format (besides EOS).
_END_OF_TURN = {
    "chatml": ["<|im_end|>"],
    "llama-2": [],
    "llama-3": ["<|eot_id|>"],
    "mistral": [],
    "gemma": ["<end_of_turn>"],
    "phi-3": ["<|end|>"],
}

_ALIASES = {"llama2": "llama-2", "llama3": "llama-3", "llama-2-chat": "llama-2", "gemma2": "gemma",
            "gemma3": "gemma", "qwen": "chatml", "smollm": "chatml", "phi3": "phi-3",
            "phi-3.5": "phi-3"}


def _normalize_messages(messages):
    """Copy messages as plain dicts; OpenAI content parts become one string.

    Keys set to None (OpenAI clients send ``"tool_calls": null``) are dropped, as transformers'
    apply_chat_template drops them: templates test for a key (Llama 3.1's ``'tool_calls' in
    message``), not for None. A None content becomes "" instead, which the built-in formats need."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"messages[{i}] must be a dict with a 'role' key")
        m = {k: v for k, v in m.items() if v is not None or k == "content"}
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
                    add_generation_prompt: bool = True, tools=None,
                    max_chars: int = template_sandbox.DEFAULT_MAX_CHARS,
                    cpu_seconds: float = template_sandbox.DEFAULT_CPU_SECONDS, **extra) -> str:
    """Render a (possibly hostile) chat template in the sandbox: at most `max_chars`
    characters of output (and of any string built on the way) and `cpu_seconds` of CPU
    time, else :class:`ChatTemplateError` (see :mod:`pyllama.template_sandbox`)."""
    variables = dict(extra)
    variables.update(messages=_normalize_messages(messages), bos_token=bos_token,
                     eos_token=eos_token, add_generation_prompt=add_generation_prompt)
    if tools is not None:
        variables["tools"] = tools
    return template_sandbox.render(source, variables, max_chars=max_chars, cpu_seconds=cpu_seconds)


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
    if str((metadata or {}).get("general.architecture", "")) == "phi3":
        return "phi-3"
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


def _strings(value):
    """Every string inside `value` (nested dicts, lists and tuples; dict values only)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _replace_strings(value, replace):
    if isinstance(value, str):
        return replace(value)
    if isinstance(value, dict):
        return {k: _replace_strings(v, replace) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_replace_strings(v, replace) for v in value)
    return value


_PLACEHOLDER_BASE = 0xF0000  # Supplementary Private Use Area-A: in no vocabulary's control tokens


def _shield_control_texts(tokenizer, source, values):
    """`values` with each control-token spelling in its strings replaced by a placeholder
    character, and the placeholders' texts (None when nothing needed replacing).

    The rendered prompt is tokenized with special tokens parsed, so that the template's
    own ``<|im_start|>`` become control tokens; a placeholder survives the template
    (no filter changes a private-use character) and is turned back into its text only
    after the control tokens are cut out, as plain text."""
    found = set()
    for s in _strings(values):
        found |= tokenizer.control_texts_in(s)
    if not found:
        return values, None
    seen = set(source) | {c for s in _strings(values) for c in s} | {c for t in found for c in t}
    chars, c = [], _PLACEHOLDER_BASE
    for _ in found:
        while chr(c) in seen:
            c += 1
        chars.append(chr(c))
        c += 1
    texts = sorted(found, key=len, reverse=True)  # longest first: "<|im_start|>" before "<|im"
    literal = dict(zip(chars, texts))

    def replace(s: str) -> str:
        for ch, t in zip(chars, texts):
            if t in s:
                s = s.replace(t, ch)
        return s

    return _replace_strings(values, replace), literal


def format_chat(llama, messages, tools=None, add_generation_prompt=True,
                parse_special_in_messages: bool | None = None) -> ChatPrompt:
    """Render and tokenize a conversation for ``llama`` (anything with
    ``.tokenizer`` and ``.metadata``; ``chat_format`` is read if present).

    Text in the messages (and tools) that spells a control token, such as
    ``<|im_start|>system``, stays plain text: only the template's own markers become
    control tokens, so a user message, a retrieved document or a tool result cannot
    open a system turn. ``parse_special_in_messages=True`` (default: the model's
    ``parse_special_in_messages`` attribute, else False) parses them as the template's
    are, as llama.cpp's server and llama-cpp-python do."""
    tokenizer = llama.tokenizer
    metadata = getattr(llama, "metadata", None) or {}
    source, name = template_for(getattr(llama, "chat_format", None), tokenizer, metadata)
    bos = _token_str(tokenizer, tokenizer.bos_id)
    eos = _token_str(tokenizer, tokenizer.eos_id)
    if parse_special_in_messages is None:
        parse_special_in_messages = bool(getattr(llama, "parse_special_in_messages", False))
    literal = None
    if not parse_special_in_messages and hasattr(tokenizer, "control_texts_in"):
        messages = _normalize_messages(messages)
        (messages, tools), literal = _shield_control_texts(tokenizer, source, (messages, tools))
    n_ctx = llama.n_ctx() if callable(getattr(llama, "n_ctx", None)) else 0
    text = render_template(source, messages, bos_token=bos, eos_token=eos,
                           add_generation_prompt=add_generation_prompt, tools=tools,
                           max_chars=max(template_sandbox.DEFAULT_MAX_CHARS, 64 * int(n_ctx or 0)))
    # The template decides about BOS: add the model's BOS only when the model wants one
    # and the template did not already write it.
    add_bos = bool(tokenizer.add_bos) and not (bos and text.startswith(bos))
    if literal:
        tokens = tokenizer.tokenize(text, add_bos=add_bos, special=True, literal=literal)
        text = text.translate({ord(k): v for k, v in literal.items()})
    else:
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
