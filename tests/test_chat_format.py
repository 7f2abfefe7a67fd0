"""Chat templates: built-in formats, the file's own template, and the sandbox."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_chat_fake import BOS, FakeLlama  # noqa: E402

from pyllama.chat_format import (BUILTIN_TEMPLATES, ChatTemplateError, format_chat,  # noqa: E402
                                 render_template, template_for)

CONV = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


# The expected strings are each family's documented prompt layout, written out by hand.
EXPECTED = {
    "chatml": "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
              "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n"
              "<|im_start|>assistant\n",
    "llama-2": "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]",
    "llama-3": "<s><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s>[INST] SYS\n\nU1 [/INST]A1</s>[INST] U2 [/INST]",
    "gemma": "<s><start_of_turn>user\nSYS\n\nU1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
             "<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\n",
}


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtin_templates(name):
    out = render_template(BUILTIN_TEMPLATES[name], CONV, bos_token="<s>", eos_token="</s>",
                          add_generation_prompt=True)
    assert out == EXPECTED[name]


def test_chatml_without_generation_prompt():
    out = render_template(BUILTIN_TEMPLATES["chatml"], CONV[:2], add_generation_prompt=False)
    assert out.endswith("U1<|im_end|>\n")


def test_content_parts_are_joined():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert "ab<|im_end|>" in render_template(BUILTIN_TEMPLATES["chatml"], msgs)


def test_file_template_used_and_options():
    # A typical HF-style template using loop controls, trim_blocks/lstrip_blocks and helpers.
    tpl = """{% for m in messages %}
    {% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}
[{{ m['role'] }}] {{ m['content'] }}
{% endfor %}
{% if add_generation_prompt %}[assistant]{% endif %}"""
    out = render_template(tpl, CONV[1:3], add_generation_prompt=True)
    assert out == "[user] U1\n[assistant] A1\n[assistant]"
    with pytest.raises(ChatTemplateError, match="bad role system"):
        render_template(tpl, CONV)


def test_strftime_now_and_tools_available():
    out = render_template("{{ strftime_now('%Y') }}|{{ tools[0]['name'] }}", [], tools=[{"name": "f"}])
    year, tool = out.split("|")
    assert len(year) == 4 and year.isdigit() and tool == "f"


def test_tojson_is_plain_json_in_given_order():
    tools = [{"name": "f", "description": "a <b> & 'c'", "parameters": {"z": 1, "a": 2}}]
    out = render_template("{{ tools[0] | tojson }}", [], tools=tools)
    assert out == '{"name": "f", "description": "a <b> & \'c\'", "parameters": {"z": 1, "a": 2}}'


@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__['os'] }}",
    "{{ lipsum.__globals__['os'].popen('echo pwned').read() }}",
    "{% set x = messages.append({'role': 'x'}) %}",
    "{{ (messages|first).update({'content': 'x'}) }}",
    "{{ 'a' * 100000000000 }}",
    "{{ [1] * 1000000000 }}",
])
def test_sandbox_blocks_escapes(evil):
    with pytest.raises(ChatTemplateError) as e:
        render_template(evil, [{"role": "user", "content": "hi"}])
    assert "pwned" not in str(e.value)


def test_syntax_error_is_clear():
    with pytest.raises(ChatTemplateError, match="syntax error"):
        render_template("{% for %}", [])


def test_bad_messages():
    with pytest.raises(ValueError, match="role"):
        render_template(BUILTIN_TEMPLATES["chatml"], [{"content": "x"}])


def test_template_choice():
    fake = FakeLlama(chat_template="{{ 'X' }}")
    assert template_for(None, fake.tokenizer, fake.metadata)[1] == "gguf"
    assert template_for("chatml", fake.tokenizer, fake.metadata)[1] == "chatml"  # explicit wins
    assert template_for("llama3", fake.tokenizer, {})[1] == "llama-3"
    with pytest.raises(ValueError, match="unknown chat_format"):
        template_for("nope", fake.tokenizer, {})
    # no template in the file: guessed from the vocabulary (the fake has <|im_start|>)
    assert template_for(None, fake.tokenizer, {})[1] == "chatml"
    assert template_for(None, fake.tokenizer, {"tokenizer.ggml.tokens": ["a", "[INST]"]})[1] == "mistral"
    # a Gemma file without a template: Gemma's format, whatever the vocabulary holds
    assert template_for(None, fake.tokenizer, {"general.architecture": "gemma3"})[1] == "gemma"


def test_bos_not_doubled():
    # model adds BOS and the template writes it too: one BOS
    fake = FakeLlama(add_bos=True, chat_format="llama-2")
    p = format_chat(fake, CONV[1:2])
    assert p.tokens[0] == BOS and p.tokens[1] != BOS
    # model adds BOS and the template does not: the model's BOS is added
    fake = FakeLlama(add_bos=True, chat_format="chatml")
    assert format_chat(fake, CONV[1:2]).tokens[0] == BOS
    fake = FakeLlama(add_bos=False, chat_format="chatml")
    assert format_chat(fake, CONV[1:2]).tokens[0] != BOS


def test_special_tokens_parsed_and_stop_ids():
    fake = FakeLlama(add_bos=False, chat_format="chatml")
    p = format_chat(fake, CONV[1:2])
    assert p.tokens[0] == 258  # <|im_start|> as one special token
    assert 259 in p.stop_ids and p.stop == ["<|im_end|>"]
