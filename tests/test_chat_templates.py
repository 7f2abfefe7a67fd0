"""The model families' own chat templates render in pyllama exactly as Hugging Face renders them.

Reference: transformers' ``render_jinja_template`` (what ``apply_chat_template`` calls; it needs
no tokenizer), or where transformers is not installed, :func:`hf_like_render` below: plain Jinja2
set up as transformers sets it up (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, the
loopcontrols extension, ``raise_exception``, ``strftime_now``, a ``tojson`` that is
``json.dumps(ensure_ascii=False)``, ``tools`` and ``documents`` always defined). Neither shares
code with pyllama's budgeted sandbox (pyllama/template_sandbox.py).

The templates are the official ones that llama.cpp keeps in its source tree
(models/templates/*.jinja): found through PYLLAMA_LLAMACPP_SRC or the cache that
``LLAMACPP_SOURCE_ONLY=1 bash bench/build_llamacpp.sh`` fills; the tests skip when it is absent.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
from pathlib import Path

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pyllama.chat_format import BUILTIN_TEMPLATES, render_template

BOS, EOS = "<s>", "</s>"  # stand-ins: each test passes the same strings to both renderers


def template_dir() -> Path | None:
    for c in (os.environ.get("PYLLAMA_LLAMACPP_SRC", ""), str(Path.home() / ".cache/pyllama/llama.cpp-0.3.36/src")):
        if c and (Path(c) / "models/templates").is_dir():
            return Path(c) / "models/templates"
    return None


def official(name: str) -> str:
    d = template_dir()
    if d is None:
        pytest.skip("llama.cpp's source (models/templates) not found: set PYLLAMA_LLAMACPP_SRC or run "
                    "LLAMACPP_SOURCE_ONLY=1 bash bench/build_llamacpp.sh")
    path = d / f"{name}.jinja"
    if not path.is_file():
        pytest.skip(f"{path} not found in llama.cpp's source")
    return path.read_text(encoding="utf-8")


class _GenerationBlock(jinja2.ext.Extension):
    """transformers' `{% generation %}...{% endgeneration %}` (it marks the assistant's text for a
    training mask): for rendering, the block's body as it is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def hf_like_render(source, messages, tools=None, documents=None, add_generation_prompt=False, **kwargs):
    """Plain Jinja2 configured as transformers' chat-template code configures it."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, _GenerationBlock])

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source).render(messages=messages, tools=tools, documents=documents,
                                          add_generation_prompt=add_generation_prompt, **kwargs)


def reference(source, messages, tools=None, add_generation_prompt=True, **kwargs) -> str:
    messages = copy.deepcopy(messages)
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:
        return hf_like_render(source, messages, tools=tools, add_generation_prompt=add_generation_prompt,
                              **kwargs)
    out, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=source,
                                   add_generation_prompt=add_generation_prompt, **kwargs)
    return out[0]


def pyllama(source, messages, tools=None, add_generation_prompt=True, **kwargs) -> str:
    return render_template(source, copy.deepcopy(messages), tools=tools,
                           add_generation_prompt=add_generation_prompt, **kwargs)


# ---------------------------------------------------------------------------
# Conversations

SYSTEM = {"role": "system", "content": "You are terse. Ünïcödé ✓ & <tags>"}
U1 = {"role": "user", "content": "What is 2+2?"}
A1 = {"role": "assistant", "content": "4."}
U2 = {"role": "user", "content": "  And the weather in Paris?\n"}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city (°C) <b>now</b>",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Zürich"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "now", "description": "The time",
                                          "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, CLOCK]

CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call12345", "type": "function",
     "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]}
RESULT = {"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
          "content": '{"temperature": 21, "sky": "clear ☀"}'}
A2 = {"role": "assistant", "content": "21 °C and clear."}

PLAIN = {
    "single": [U1],
    "system": [SYSTEM, U1],
    "multi": [U1, A1, U2],
    "system-multi": [SYSTEM, U1, A1, U2],
    "history": [SYSTEM, U1, A1, U2, A2],
}
WITH_TOOLS = {
    "tools": [U2],
    "tools-system": [SYSTEM, U2],
    "tools-call": [SYSTEM, U1, A1, U2, CALL, RESULT],
    "tools-answered": [U2, CALL, RESULT, A2],
}

# official template name -> (conversations, whether tools are passed), options
FAMILIES = {
    "Qwen-Qwen2.5-7B-Instruct": ({**PLAIN, **WITH_TOOLS}, {}),
    "Qwen-Qwen3-0.6B": ({**PLAIN, **WITH_TOOLS}, {}),
    "meta-llama-Llama-3.1-8B-Instruct": ({**PLAIN, **WITH_TOOLS}, {}),
    "meta-llama-Llama-3.2-3B-Instruct": ({**PLAIN, **WITH_TOOLS}, {"date_string": "06 Dec 2026"}),
    "meta-llama-Llama-3.3-70B-Instruct": ({**PLAIN, **WITH_TOOLS}, {}),
    "google-gemma-2-2b-it": ({k: v for k, v in PLAIN.items() if "system" not in k and k != "history"}, {}),
    "microsoft-Phi-3.5-mini-instruct": (PLAIN, {}),
    # Mistral's tool call ids are 9 characters (the template checks); no system before a tool call
    "mistralai-Mistral-Nemo-Instruct-2407": ({**PLAIN, "tools": [U2], "tools-system": [SYSTEM, U2],
                                              "tools-call": [U1, A1, U2, CALL, RESULT]}, {}),
}
CASES = [(name, conv, gen) for name, (convs, _) in FAMILIES.items() for conv in convs for gen in (True, False)]


@pytest.mark.parametrize("name,conv,gen", CASES, ids=[f"{n}-{c}-{'gen' if g else 'nogen'}" for n, c, g in CASES])
def test_family_template_renders_as_transformers(name, conv, gen):
    source = official(name)
    convs, extra = FAMILIES[name]
    messages = convs[conv]
    tools = TOOLS if conv.startswith("tools") else None
    kwargs = dict(bos_token=BOS, eos_token=EOS, **extra)
    want = reference(source, messages, tools=tools, add_generation_prompt=gen, **kwargs)
    got = pyllama(source, messages, tools=tools, add_generation_prompt=gen, **kwargs)
    assert got == want
    if tools:  # the tools are rendered (not just accepted)
        assert "get_weather" in got


def test_fallback_reference_agrees_with_transformers():
    """hf_like_render stands in for transformers where it is not installed: it must agree."""
    pytest.importorskip("transformers", reason="transformers is not installed")
    for name in ("Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.1-8B-Instruct",
                 "mistralai-Mistral-Nemo-Instruct-2407"):
        source = official(name)
        for messages, tools in (([SYSTEM, U1, A1, U2], None), ([U1, A1, U2, CALL, RESULT], TOOLS)):
            kw = dict(bos_token=BOS, eos_token=EOS)
            assert hf_like_render(source, copy.deepcopy(messages), tools=tools, add_generation_prompt=True,
                                  **kw) == reference(source, messages, tools=tools, **kw)


@pytest.mark.parametrize("name", ["meta-llama-Llama-3.1-8B-Instruct", "Qwen-Qwen2.5-7B-Instruct",
                                  "mistralai-Mistral-Nemo-Instruct-2407", "Qwen-Qwen3-0.6B"])
def test_null_fields_as_openai_clients_send_them(name):
    """``"tool_calls": null`` on a plain answer (the OpenAI SDK's model_dump() writes it):
    apply_chat_template drops None-valued keys before rendering, and so must pyllama
    (Llama 3.1's template tests ``'tool_calls' in message``)."""
    source = official(name)
    sent = [U1, {"role": "assistant", "content": "4.", "tool_calls": None, "name": None}, U2]
    dropped = [U1, {"role": "assistant", "content": "4."}, U2]
    assert pyllama(source, sent, bos_token=BOS, eos_token=EOS) == reference(source, dropped, bos_token=BOS,
                                                                           eos_token=EOS)


def test_qwen3_thinking_switch():
    source = official("Qwen-Qwen3-0.6B")
    for flag in (True, False):
        want = reference(source, [SYSTEM, U1], bos_token=BOS, eos_token=EOS, enable_thinking=flag)
        assert pyllama(source, [SYSTEM, U1], bos_token=BOS, eos_token=EOS, enable_thinking=flag) == want
    reasoning = {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4."}
    msgs = [U1, reasoning, U2]
    assert pyllama(source, msgs, bos_token=BOS, eos_token=EOS) == reference(source, msgs, bos_token=BOS,
                                                                           eos_token=EOS)


def test_llama31_today_is_the_default_date():
    """Llama 3.2's template asks strftime_now for today's date when no date_string is given."""
    source = official("meta-llama-Llama-3.2-3B-Instruct")
    got = pyllama(source, [U1], bos_token=BOS, eos_token=EOS)
    today = datetime.datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {today}\n" in got or "Today Date:" in got and datetime.datetime.now().hour == 0


def test_llama31_builtin_tools_and_tools_in_system():
    source = official("meta-llama-Llama-3.1-8B-Instruct")
    for kw in ({"builtin_tools": ["brave_search", "wolfram_alpha"]}, {"tools_in_user_message": False}):
        msgs = [SYSTEM, U2]
        want = reference(source, msgs, tools=TOOLS, bos_token=BOS, eos_token=EOS, **kw)
        assert pyllama(source, msgs, tools=TOOLS, bos_token=BOS, eos_token=EOS, **kw) == want


# ---------------------------------------------------------------------------
# Built-in formats (for files without a template) against the official templates

BUILTIN_VS_OFFICIAL = [
    # Llama 3.x's official templates write a "Cutting Knowledge Date / Today Date" system preamble;
    # the built-in "llama-3" format (for files that carry no template) writes the plain header layout.
    # With the preamble removed, the two agree exactly (checked below).
    ("llama-3", "meta-llama-Llama-3.1-8B-Instruct"),
    ("llama-3", "meta-llama-Llama-3.3-70B-Instruct"),
    ("gemma", "google-gemma-2-2b-it"),
    ("chatml", "Qwen-Qwen2.5-7B-Instruct"),
    ("chatml", "Qwen-Qwen3-0.6B"),
    ("phi-3", "microsoft-Phi-3.5-mini-instruct"),
]


def _strip_llama3_preamble(text: str) -> str:
    head = "<|start_header_id|>system<|end_header_id|>\n\n"
    start = text.index(head) + len(head)
    preamble_end = text.index("\n\n", text.index("Today Date:")) + 2
    rest = text[preamble_end:]
    if rest.startswith("<|eot_id|>"):  # no system message: the preamble was the whole system turn
        return text[:text.index(head)] + rest[len("<|eot_id|>"):]
    return text[:start] + rest


@pytest.mark.parametrize("builtin,name", BUILTIN_VS_OFFICIAL)
@pytest.mark.parametrize("conv", sorted(PLAIN))
@pytest.mark.parametrize("gen", [True, False])
def test_builtin_format_matches_official(builtin, name, conv, gen):
    source = official(name)
    messages = PLAIN[conv]
    if builtin == "gemma" and messages[0]["role"] == "system":
        pytest.skip("Gemma 2's official template refuses a system message (test_gemma_system_prompt)")
    if name == "Qwen-Qwen3-0.6B" and conv == "history":
        pytest.skip("Qwen3's template writes an empty <think></think> before the last answer: Qwen3-only")
    if builtin == "chatml" and messages[0]["role"] != "system":
        # Qwen's templates add their own default system prompt ("You are Qwen, ...") when there is none
        messages = [{"role": "system", "content": "You are Qwen, created by Alibaba Cloud. "
                                                  "You are a helpful assistant."}] + messages \
            if name.startswith("Qwen-Qwen2.5") else messages
    want = reference(source, messages, add_generation_prompt=gen, bos_token=BOS, eos_token=EOS,
                     date_string="26 Jul 2024")
    if builtin == "llama-3":
        want = _strip_llama3_preamble(want)
    got = pyllama(BUILTIN_TEMPLATES[builtin], messages, add_generation_prompt=gen, bos_token=BOS, eos_token=EOS)
    assert got == want


def test_phi3_file_without_template_gets_phi3_format():
    from pyllama.chat_format import template_for

    source, name = template_for(None, None, {"general.architecture": "phi3", "tokenizer.ggml.tokens": ["<|end|>"]})
    assert name == "phi-3" and source == BUILTIN_TEMPLATES["phi-3"]


def test_gemma_system_prompt_goes_before_the_first_turn():
    """Gemma 2's template refuses a system message; Gemma 3's (not in llama.cpp's collection) puts
    it, untrimmed, and a blank line before the first turn's trimmed text. Written out by hand."""
    msgs = [{"role": "system", "content": " Be brief. "}, U2, A1, U1]
    want = ("<bos><start_of_turn>user\n Be brief. \n\nAnd the weather in Paris?<end_of_turn>\n"
            "<start_of_turn>model\n4.<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
            "<start_of_turn>model\n")
    assert pyllama(BUILTIN_TEMPLATES["gemma"], msgs, bos_token="<bos>", eos_token="<eos>") == want


# ---------------------------------------------------------------------------
# Every template in llama.cpp's collection (other families too): the same text, or both refuse


def _all_templates():
    d = template_dir()
    return sorted(p.stem for p in d.glob("*.jinja")) if d else ["(llama.cpp source not found)"]


def _tool_iteration_error(e: Exception) -> bool:
    return isinstance(e, TypeError) and "not iterable" in str(e)


@pytest.mark.parametrize("name", _all_templates())
def test_every_collected_template_renders_as_transformers(name):
    """Covers {% break %}/{% continue %}, {% generation %} and tojson(ensure_ascii=...), which
    other families' templates use.

    One intended difference: without tools, pyllama leaves ``tools`` undefined where
    transformers sets it to None, so a template that loops over ``tools`` unguarded (Hermes 2 Pro,
    Command R+) renders with an empty tool list in pyllama and raises TypeError in transformers."""
    source = official(name)
    kw = dict(bos_token=BOS, eos_token=EOS, date_string="1 Jan 2025")
    for messages, tools in (([SYSTEM, U1, A1, U2], None), ([U1, A1, U2], None),
                            ([SYSTEM, U1, A1, U2, CALL, RESULT], TOOLS)):
        try:
            want = reference(source, messages, tools=tools, **kw)
        except Exception as e:  # the template refuses this conversation: pyllama must refuse too
            if tools is None and _tool_iteration_error(e):
                pyllama(source, messages, tools=tools, **kw)  # renders (see the docstring)
                continue
            with pytest.raises(Exception):
                pyllama(source, messages, tools=tools, **kw)
            continue
        assert pyllama(source, messages, tools=tools, **kw) == want


# ---------------------------------------------------------------------------
# Real files: format_chat as Llama.create_chat_completion calls it


def _real_model(name: str):
    from pyllama import Llama, models

    path = models.cached_path(name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not downloaded ({path}): python -m pyllama.models fetch {name}")
    return Llama(model_path=path, n_ctx=512, n_threads=1, verbose=False)


def _token_text(llm, token_id):
    return llm.tokenizer.token_text(token_id) if token_id is not None else ""


@pytest.mark.slow
def test_qwen_file_with_tools_renders_as_its_own_template():
    """OpenAI-shaped request (arguments as a JSON string, content None) through the path
    create_chat_completion takes, against transformers rendering the file's template with the
    file's BOS/EOS strings and the call arguments as an object (what HF templates expect)."""
    llm = _real_model("qwen2.5-coder-0.5b-instruct")
    source = llm.metadata["tokenizer.chat_template"]
    assert "tools" in source
    openai_call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call12345", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]}
    hf_call = {"role": "assistant", "tool_calls": CALL["tool_calls"]}  # None-valued keys dropped, as HF does
    kw = dict(bos_token=_token_text(llm, llm.tokenizer.bos_id), eos_token=_token_text(llm, llm.tokenizer.eos_id))
    for sent, ref in (([SYSTEM, U2], [SYSTEM, U2]),
                      ([U1, A1, U2], [U1, A1, U2]),
                      ([SYSTEM, U2, openai_call, RESULT], [SYSTEM, U2, hf_call, RESULT])):
        prompt, _, _ = llm._chat_prompt(sent, tools=TOOLS)
        want = reference(source, ref, tools=TOOLS, add_generation_prompt=True, **kw)
        assert prompt.text == want
        assert "<tools>" in want and "get_weather" in want
    prompt, _, _ = llm._chat_prompt([SYSTEM, U1, A1, U2])
    assert prompt.text == reference(source, [SYSTEM, U1, A1, U2], add_generation_prompt=True, **kw)


@pytest.mark.slow
def test_smollm2_file_renders_as_its_own_template():
    llm = _real_model("smollm2-135m-instruct-q4_1")
    source = llm.metadata["tokenizer.chat_template"]
    kw = dict(bos_token=_token_text(llm, llm.tokenizer.bos_id), eos_token=_token_text(llm, llm.tokenizer.eos_id))
    from pyllama.chat_format import format_chat

    for messages in ([U1], [SYSTEM, U1, A1, U2]):
        for gen in (True, False):
            want = reference(source, messages, add_generation_prompt=gen, **kw)
            assert format_chat(llm, messages, add_generation_prompt=gen).text == want
        assert llm._chat_prompt(messages)[0].text == reference(source, messages, add_generation_prompt=True, **kw)


@pytest.mark.slow
def test_gemma3_file_without_template_gets_gemma_format():
    """The Gemma 3 file carries no template: the prompt equals Gemma's official template
    (Gemma 2's; Gemma 3 keeps its turn layout) with the file's BOS."""
    llm = _real_model("gemma-3-270m-q4_k_m")
    assert not llm.metadata.get("tokenizer.chat_template")
    from pyllama.chat_format import format_chat

    kw = dict(bos_token=_token_text(llm, llm.tokenizer.bos_id), eos_token=_token_text(llm, llm.tokenizer.eos_id))
    assert kw["bos_token"] == "<bos>"
    source = official("google-gemma-2-2b-it")
    for messages in ([U1], [U1, A1, U2]):
        want = reference(source, messages, add_generation_prompt=True, **kw)
        assert format_chat(llm, messages).text == want
