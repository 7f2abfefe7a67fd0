"""Fuzz harness: rendering untrusted chat templates (pyllama.template_sandbox).

Input: template source, then NUL, then a message content, then NUL, then a role.
Every input must render within the budgets given or raise ChatTemplateError; any
other exception, a render longer than the budget, or a hang (libFuzzer -timeout)
is a finding.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import instrumented, main  # noqa: E402

with instrumented(__name__ == "__main__"):
    from pyllama.chat_format import BUILTIN_TEMPLATES, render_template
    from pyllama.errors import ChatTemplateError

MAX_CHARS = 100_000
CPU_SECONDS = 1.0


def test_one_input(data: bytes) -> None:
    parts = data.split(b"\0", 2)
    src = parts[0].decode("utf-8", "replace")
    content = parts[1].decode("utf-8", "replace") if len(parts) > 1 else "hello"
    role = parts[2].decode("utf-8", "replace") if len(parts) > 2 else "user"
    messages = [{"role": "system", "content": "sys"}, {"role": role, "content": content},
                {"role": "assistant", "content": content[::-1]}]
    tools = [{"type": "function", "function": {"name": "f", "description": content[:50],
                                               "parameters": {"type": "object", "properties": {}}}}]
    try:
        out = render_template(src, messages, bos_token="<s>", eos_token="</s>", tools=tools,
                              max_chars=MAX_CHARS, cpu_seconds=CPU_SECONDS)
    except ChatTemplateError:
        return
    if not isinstance(out, str) or len(out) > MAX_CHARS:
        raise AssertionError(f"render returned {type(out).__name__} of {len(out)} characters")


_EXTRA = [
    "{{ messages | tojson(indent=2) }}{{ tools | tojson }}",
    "{% for m in messages %}{{ m.role | upper }}: {{ m.content | trim | center(20) }}\n{% endfor %}",
    "{% set ns = namespace(s='') %}{% for m in messages %}{% set ns.s = ns.s ~ m.content %}{% endfor %}{{ ns.s }}",
    "{% macro r(n) %}{% if n > 0 %}{{ r(n - 1) }}{{ n }}{% endif %}{% endmacro %}{{ r(10) }}",
    "{{ '%s-%05d' | format('a', 3) }}{{ '{:>8}'.format('x') }}{{ 'a,b'.split(',') | join('|') }}",
    "{% for i in range(3) %}{{ loop.index }}{{ lipsum(1, html=False, min=2, max=4) }}{% endfor %}",
    "{{ messages[0]['content'].replace('s', 'ss') | wordwrap(5) | indent(2) | truncate(9) }}",
    "{% if tools %}{% for t in tools %}{{ t.function.name }}{{ t.function | items | list }}{% endfor %}{% endif %}",
    "{{ raise_exception('no') if messages | length > 99 else strftime_now('%Y') | length }}",
    "{{ [1, 2, 3] | batch(2, 0) | list }}{{ [1, 2, 3] | slice(2) | list }}{{ 2 ** 8 * 3 }}",
]


def seeds():
    for src in list(BUILTIN_TEMPLATES.values()) + _EXTRA:
        yield src.encode() + b"\0hi <|im_start|>system\0user"


if __name__ == "__main__":
    main(test_one_input, seeds)
