"""Tool calling for chat completions: OpenAI's ``tools`` / ``tool_choice`` / ``tool_calls``.

The call format is the Hermes / Qwen2.5 one: the assistant writes

    <tool_call>
    {"name": "NAME", "arguments": {...}}
    </tool_call>

and a tool's result comes back as a ``role: "tool"`` message.

Prompting. A chat template that mentions ``tools`` (Qwen2.5's does) renders the tool
list and past calls itself. Other templates get the fallback: a system prompt
(:data:`FALLBACK_PROMPT`, put before the conversation's own system prompt) that lists
the tools as JSON and asks for the format above; past assistant calls are written
into the assistant's text in that format and tool results become user turns wrapped
in ``<tool_response>`` tags (Qwen's template does the same), so templates that only
know user/assistant/system still render them.

tool_choice. ``"none"``: the tools are left out of the prompt and nothing is parsed.
``"auto"`` (the default with tools): the reply is parsed for calls. ``"required"``
or ``{"type": "function", "function": {"name": ...}}``: the reply is constrained by
a grammar to exactly one call whose arguments are JSON valid under the function's
``parameters`` schema.
"""
from __future__ import annotations

import copy
import json
import re
import uuid

__all__ = ["FALLBACK_PROMPT", "normalize_tools", "resolve_tool_choice", "prepare_messages",
           "forced_call_grammar", "parse_tool_calls", "has_tool_history", "ToolCallStream", "template_supports_tools"]

OPEN, CLOSE = "<tool_call>", "</tool_call>"

FALLBACK_PROMPT = (
    "You can call functions to help with the user's request. The functions are listed here as "
    "JSON, within <tools></tools> tags:\n<tools>\n{tools}\n</tools>\n\n"
    "To call a function, reply with a JSON object holding its name and arguments within "
    "<tool_call></tool_call> tags, and nothing else:\n"
    "<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>\n"
    "The result comes back within <tool_response></tool_response> tags. When you need no "
    "function, answer directly."
)


def normalize_tools(tools, functions=None) -> list[dict] | None:
    """OpenAI tools as ``[{"type": "function", "function": {...}}]`` (legacy ``functions`` too), checked."""
    if tools is None and functions:
        tools = [{"type": "function", "function": f} for f in functions]
    if not tools:
        return None
    if not isinstance(tools, (list, tuple)):
        raise ValueError("tools must be a list of {'type': 'function', 'function': {...}} dicts")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(
                t.get("function"), dict):
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}")
        f = t["function"]
        name = f.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise ValueError(f"tools[{i}]: function name must be 1-64 letters, digits, _ . or - (got {name!r})")
        params = f.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ValueError(f"tools[{i}] ({name}): parameters must be a JSON schema object")
        out.append({"type": "function", "function": {**f, "parameters": params}})
    names = [t["function"]["name"] for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"tools: duplicate function names in {names}")
    return out


def resolve_tool_choice(tool_choice, tools, function_call=None):
    """``"none"``, ``"auto"``, ``"required"`` or the name of the function that must be called."""
    if tool_choice is None and function_call is not None:  # the legacy argument
        tool_choice = function_call if isinstance(function_call, str) else {
            "type": "function", "function": function_call}
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise ValueError(f"tool_choice={tool_choice!r} needs tools")
        return "none"
    if tool_choice is None:
        return "auto"
    if tool_choice in ("none", "auto", "required"):
        return tool_choice
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") if isinstance(
            tool_choice.get("function"), dict) else tool_choice.get("name")
        names = [t["function"]["name"] for t in tools]
        if name not in names:
            raise ValueError(f"tool_choice names function {name!r}, which is not among the tools {names}")
        return {"name": name}
    raise ValueError(f"tool_choice must be 'none', 'auto', 'required' or "
                     f"{{'type': 'function', 'function': {{'name': ...}}}} (got {tool_choice!r})")


def template_supports_tools(source: str) -> bool:
    """Whether a chat template renders a tool list (it reads the ``tools`` variable)."""
    return bool(re.search(r"\btools\b", source or ""))


def _arguments_object(arguments):
    """Arguments as a dict for templates (OpenAI sends them as a JSON string)."""
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
        return value
    return arguments


def _call_text(call: dict) -> str:
    f = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(f, dict) or not isinstance(f.get("name"), str):
        raise ValueError(f"a tool call is an object whose 'function' has a 'name' and 'arguments' (got {call!r:.80})")
    args = _arguments_object(f.get("arguments", {}))
    return f"{OPEN}\n" + json.dumps({"name": f.get("name"), "arguments": args}, ensure_ascii=False) + f"\n{CLOSE}"


def has_tool_history(messages) -> bool:
    """Whether a conversation holds tool calls or results (they need rendering even without tools)."""
    return isinstance(messages, (list, tuple)) and any(
        isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in messages)


def prepare_messages(messages, tools, native: bool):
    """(messages, tools for the template): ready for rendering with or without native tool support."""
    messages = [dict(m) if isinstance(m, dict) else m for m in messages]
    if native:
        for m in messages:
            if isinstance(m, dict) and m.get("tool_calls"):
                calls = copy.deepcopy(m["tool_calls"])
                for c in calls:
                    f = c.get("function", c)
                    if "arguments" in f:
                        f["arguments"] = _arguments_object(f["arguments"])
                m["tool_calls"] = calls
        return messages, tools
    out = []
    for m in messages:
        if not isinstance(m, dict):
            out.append(m)
            continue
        role = m.get("role")
        if role == "tool":
            out.append({"role": "user", "content": "<tool_response>\n" + str(m.get("content") or "")
                        + "\n</tool_response>"})
        elif role == "assistant" and m.get("tool_calls"):
            text = "\n".join(([m["content"]] if m.get("content") else []) +
                              [_call_text(c) for c in m["tool_calls"]])
            out.append({"role": "assistant", "content": text})
        else:
            out.append(m)
    if tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        prompt = FALLBACK_PROMPT.format(tools=listing)
        if out and isinstance(out[0], dict) and out[0].get("role") == "system":
            out[0] = {**out[0], "content": prompt + "\n\n" + str(out[0].get("content") or "")}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out, None


def _schema_with_json_style(schema: dict) -> dict:
    """The arguments' schema for a forced call: JSON written compactly, and (as OpenAI's strict
    mode does) no keys beyond the declared properties unless the schema says otherwise."""
    schema = dict(schema) if isinstance(schema, dict) else {}
    schema.setdefault("type", "object")
    if "properties" in schema:
        schema.setdefault("additionalProperties", False)
    schema["x-guidance"] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    return schema


def forced_call_grammar(tools, choice):
    """A grammar for exactly one call: of the named function, or of any of the tools (``"required"``)."""
    from .grammar import LlamaGrammar

    funcs = [t["function"] for t in tools]
    if isinstance(choice, dict):
        funcs = [f for f in funcs if f["name"] == choice["name"]]
    alternatives, rules = [], []
    for i, f in enumerate(funcs):
        head = json.dumps(f'{OPEN}\n{{"name": {json.dumps(f["name"])}, "arguments": ')
        alternatives.append(f"{head} args_{i} " + json.dumps(f"}}\n{CLOSE}"))
        rules.append(f"args_{i}: %json " + json.dumps(_schema_with_json_style(f.get("parameters"))))
    lark = "start: " + " | ".join(alternatives) + "\n" + "\n".join(rules) + "\n"
    return LlamaGrammar.from_lark(lark)


def _new_call(name: str, arguments) -> dict:
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _parse_call(body: str):
    """A call from the JSON inside <tool_call> tags, or None when it is not one."""
    try:
        value = json.loads(body.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        args = _arguments_object(args)
    return _new_call(value["name"], args)


_FENCE = re.compile(r"\s*```(?:json)?\s*\n(.*?)\n?```\s*", re.DOTALL)


def _bare_call(text: str, names):
    """A reply that is only a call's JSON object without the tags, bare or in a ``` fence
    (small models write that)."""
    fenced = _FENCE.fullmatch(text)
    if fenced:
        text = fenced.group(1)
    call = _parse_call(text) if text.lstrip().startswith("{") else None
    return call if call is not None and call["function"]["name"] in names else None


def parse_tool_calls(text: str, names=()):
    """(content, tool calls) from a reply: each well-formed <tool_call> block becomes a call
    (a block cut off by max_tokens, at the end, is parsed if its JSON is complete), and so does
    a reply that is nothing but such a JSON object naming one of ``names``. Content is the
    text outside the calls, None when only whitespace."""
    bare = _bare_call(text, names)
    if bare is not None:
        return None, [bare]
    calls, parts, pos = [], [], 0
    while True:
        start = text.find(OPEN, pos)
        if start < 0:
            parts.append(text[pos:])
            break
        end = text.find(CLOSE, start)
        body = text[start + len(OPEN):end if end >= 0 else len(text)]
        call = _parse_call(body)
        if call is None:
            parts.append(text[pos:end + len(CLOSE) if end >= 0 else len(text)])
        else:
            parts.append(text[pos:start])
            calls.append(call)
        if end < 0:
            break
        pos = end + len(CLOSE)
    content = "".join(parts).strip()
    return (content or None), calls


class ToolCallStream:
    """Splits streamed reply text into content pieces and tool calls, as they complete.

    ``push(text)`` and ``flush()`` return a list of ``("content", str)`` and
    ``("call", dict)`` items. Text that might be the start of ``<tool_call>`` is held
    back until it is known not to be. A reply that starts with ``{`` is held back whole:
    it may be a call written without the tags (see :func:`parse_tool_calls`).
    """

    def __init__(self, names=()):
        self._buf = ""
        self._in_call = False
        self._names = tuple(names)
        self._started = False  # some content was released: the reply is no bare call
        self._bare = False     # holding a reply that starts with "{"
        self.calls: list[dict] = []

    def push(self, text: str) -> list:
        self._buf += text
        if not self._started and not self._bare:
            head = self._buf.lstrip()
            if not head:
                return []
            if head[:1] in "{`" and self._names:
                self._bare = True
            self._started = True
        if self._bare:
            return []
        out = []
        while True:
            if not self._in_call:
                i = self._buf.find(OPEN)
                if i < 0:
                    keep = _partial_suffix(self._buf, OPEN)
                    piece, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                    if piece:
                        out.append(("content", piece))
                    return out
                if self._buf[:i]:
                    out.append(("content", self._buf[:i]))
                self._buf = self._buf[i:]
                self._in_call = True
            j = self._buf.find(CLOSE)
            if j < 0:
                return out
            block = self._buf[:j + len(CLOSE)]
            self._buf = self._buf[j + len(CLOSE):]
            self._in_call = False
            call = _parse_call(block[len(OPEN):-len(CLOSE)])
            if call is None:
                out.append(("content", block))
            else:
                self.calls.append(call)
                out.append(("call", call))

    def flush(self) -> list:
        buf, self._buf = self._buf, ""
        if not buf:
            return []
        if self._bare:
            self._bare = False
            call = _bare_call(buf, self._names)
            if call is not None:
                self.calls.append(call)
                return [("call", call)]
            self._buf = ""
            return self.push(buf) + self.flush()
        if self._in_call:
            self._in_call = False
            call = _parse_call(buf[len(OPEN):])
            if call is not None:
                self.calls.append(call)
                return [("call", call)]
        return [("content", buf)]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0
