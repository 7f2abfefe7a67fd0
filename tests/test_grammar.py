"""Grammars, response formats and tool-call plumbing that need no model: compiling
(llguidance), OpenAI argument shapes, parsing replies into tool_calls (streamed or not),
and the built-in calculator and python tools."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("llguidance", reason="constrained decoding needs the llguidance package")

from pyllama import builtin_tools, tools  # noqa: E402
from pyllama.grammar import LlamaGrammar, response_format_grammar  # noqa: E402

GRAMMARS = Path(__file__).parent / "data" / "grammars"


@pytest.mark.parametrize("name", ["json", "json_arr", "arithmetic", "list", "chess"])
def test_llama_cpp_gbnf_grammars_compile(name):
    g = LlamaGrammar.from_file(GRAMMARS / f"{name}.gbnf")
    assert "root" in g.source


def test_lark_and_regex_grammars_compile():
    LlamaGrammar.from_string('start: "yes" | "no"')
    LlamaGrammar.from_regex(r"[0-9]{3}")


@pytest.mark.parametrize("bad", ["root ::= (", "root ::= undefined_rule", "", "   "])
def test_bad_gbnf_is_a_value_error(bad):
    with pytest.raises(ValueError, match="grammar"):
        LlamaGrammar.from_string(bad)


def test_bad_grammar_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        LlamaGrammar.from_file(tmp_path / "missing.gbnf")
    p = tmp_path / "latin1.gbnf"
    p.write_bytes(b'root ::= "\xe9"')
    with pytest.raises(ValueError, match="cannot read"):
        LlamaGrammar.from_file(p)


@pytest.mark.parametrize("schema", ["{not json", "[1, 2]", '"a string"'])
def test_bad_json_schema_is_a_value_error(schema):
    with pytest.raises(ValueError, match="JSON schema"):
        LlamaGrammar.from_json_schema(schema)


def test_response_format_shapes():
    assert response_format_grammar(None) is None
    assert response_format_grammar({"type": "text"}) is None
    assert isinstance(response_format_grammar({"type": "json_object"}), LlamaGrammar)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    g = response_format_grammar({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert json.loads(g.source) == schema
    g = response_format_grammar({"type": "json_object", "schema": schema})  # llama-cpp-python's variant
    assert json.loads(g.source) == schema
    for bad in ({"type": "yaml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"name": "x"}},
                "json"):
        with pytest.raises(ValueError):
            response_format_grammar(bad)


# ---------------------------------------------------------------------------- tools: arguments

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_normalize_tools_checks_shapes():
    assert tools.normalize_tools(None) is None
    assert tools.normalize_tools(None, functions=[WEATHER["function"]])[0]["function"]["name"] == "get_weather"
    for bad in ([{"type": "function"}], [{"type": "retrieval", "function": {"name": "x"}}],
                [{"type": "function", "function": {"name": "has space"}}], "get_weather",
                [WEATHER, WEATHER], [{"type": "function", "function": {"name": "x", "parameters": "s"}}]):
        with pytest.raises(ValueError):
            tools.normalize_tools(bad)


def test_resolve_tool_choice():
    t = tools.normalize_tools([WEATHER])
    assert tools.resolve_tool_choice(None, t) == "auto"
    assert tools.resolve_tool_choice(None, None) == "none"
    assert tools.resolve_tool_choice("required", t) == "required"
    assert tools.resolve_tool_choice({"type": "function", "function": {"name": "get_weather"}}, t) == {
        "name": "get_weather"}
    with pytest.raises(ValueError, match="not among"):
        tools.resolve_tool_choice({"type": "function", "function": {"name": "nope"}}, t)
    with pytest.raises(ValueError, match="needs tools"):
        tools.resolve_tool_choice("required", None)
    with pytest.raises(ValueError):
        tools.resolve_tool_choice("sometimes", t)


def test_forced_call_grammar_compiles_for_each_choice():
    t = tools.normalize_tools([WEATHER, builtin_tools.BUILTIN_TOOLS["calculator"].spec])
    tools.forced_call_grammar(t, "required")
    tools.forced_call_grammar(t, {"name": "calculator"})


# ---------------------------------------------------------------------------- tools: parsing

def test_parse_tool_calls():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>')
    content, calls = tools.parse_tool_calls(text)
    assert content == "Let me check."
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert len({c["id"] for c in calls}) == 2
    # not calls: broken JSON stays content; plain text
    content, calls = tools.parse_tool_calls("<tool_call>\n{oops}\n</tool_call>")
    assert calls == [] and content == "<tool_call>\n{oops}\n</tool_call>"
    assert tools.parse_tool_calls("Paris is sunny.") == ("Paris is sunny.", [])
    # a bare call naming a known tool (what small models write), in a fence too
    for bare in ('{"name": "get_weather", "arguments": {"city": "Oslo"}}',
                 '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```'):
        content, calls = tools.parse_tool_calls(bare, ["get_weather"])
        assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert tools.parse_tool_calls('{"name": "other", "arguments": {}}', ["get_weather"])[1] == []
    # arguments given as a JSON string are decoded, not double-encoded
    _, calls = tools.parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 1}


@pytest.mark.parametrize("seed", range(20))
def test_streamed_parse_matches_whole_parse(seed):
    rng = random.Random(seed)
    pieces = ["Sure. ", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
              " and <tool", "_call is not a tag", " <b>bold</b> ", "<tool_call>{bad}</tool_call>",
              '<tool_call>{"name": "get_weather", "arguments": {"city": "Nice"}}</tool_call>']
    text = "".join(rng.sample(pieces, rng.randint(1, len(pieces))))
    if rng.random() < 0.3:
        text = '{"name": "get_weather", "arguments": {"city": "Lyon"}}'
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12))))
    stream = tools.ToolCallStream(["get_weather"])
    items = []
    for a, b in zip([0] + cuts, cuts + [len(text)]):
        items += stream.push(text[a:b])
    items += stream.flush()
    content = "".join(v for k, v in items if k == "content")
    calls = [v for k, v in items if k == "call"]
    want_content, want_calls = tools.parse_tool_calls(text, ["get_weather"])
    assert (content.strip() or None) == want_content
    strip = lambda cs: [c["function"] for c in cs]  # noqa: E731  (ids are random)
    assert strip(calls) == strip(want_calls)


def test_fallback_prompt_renders_tools_and_history():
    t = tools.normalize_tools([WEATHER])
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    msgs, template_tools = tools.prepare_messages(history, t, native=False)
    assert template_tools is None
    assert msgs[0]["role"] == "system" and '"get_weather"' in msgs[0]["content"]
    assert msgs[0]["content"].endswith("Be brief.")
    assert msgs[2] == {"role": "assistant", "content":
                       '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'}
    assert msgs[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    native, template_tools = tools.prepare_messages(history, t, native=True)
    assert template_tools == t
    assert native[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # a dict for the template
    assert history[2]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'  # caller's list untouched


def test_template_supports_tools():
    assert tools.template_supports_tools("{% if tools %}{{ tools | tojson }}{% endif %}")
    assert not tools.template_supports_tools("{% for message in messages %}{{ message.content }}{% endfor %}")


# ---------------------------------------------------------------------------- built-in tools

@pytest.mark.parametrize("expr,want", [
    ("1234*5678", "7006652"), ("2^10", "1024"), ("2**0.5", repr(2 ** 0.5)), ("-(3+4)*2", "-14"),
    ("10/4", "2.5"), ("10/2", "5"), ("7//2", "3"), ("7 % 3", "1"), ("sqrt(16)+abs(-2)", "6"),
    ("factorial(20)", "2432902008176640000"), ("round(pi, 3)", "3.142"), ("1e3+1", "1001"),
    ("12345678901234567890*98765432109876543210", str(12345678901234567890 * 98765432109876543210)),
])
def test_calculator_values(expr, want):
    assert builtin_tools.calculate(expr) == want


@pytest.mark.parametrize("expr,why", [
    ("__import__('os').system('true')", "not allowed"), ("__import__('os')", "unknown function"), ("().__class__", "not allowed"),
    ("x + 1", "unknown name"), ("9**9**9", "too large"), ("factorial(10**6)", "too large"),
    ("1/0", "division by zero"), ("[1, 2]", "not allowed"), ("'a' * 3", "not allowed"),
    ("(-1)**0.5", "complex"), ("1 +", "not an arithmetic"), ("", "empty"), ("1+" * 2000 + "1", "longer"),
    ("(" * 300 + "1" + ")" * 300, "nested|not an arithmetic"), ("sqrt(-1)", "sqrt"),
])
def test_calculator_refusals(expr, why):
    with pytest.raises(builtin_tools.CalculatorError, match=why):
        builtin_tools.calculate(expr)


def test_run_tool_never_raises():
    assert builtin_tools.run_tool("calculator", '{"expression": "2+2"}') == "4"
    assert builtin_tools.run_tool("calculator", {"expression": "1/0"}).startswith("error:")
    assert builtin_tools.run_tool("calculator", "{not json").startswith("error:")
    assert builtin_tools.run_tool("calculator", "[1]").startswith("error:")
    assert builtin_tools.run_tool("nope", "{}").startswith("error:")
    with pytest.raises(ValueError, match="unknown tool"):
        builtin_tools.tool_specs(["calculator", "shell"])


@pytest.mark.subprocess
def test_python_tool_runs_code_with_limits():
    lim = builtin_tools.PythonLimits(cpu_seconds=1, wall_seconds=5, memory_bytes=256 * 2**20, output_bytes=1000)
    assert builtin_tools.run_python("print(6 * 7)", lim) == "42\n"
    assert "ZeroDivisionError" in builtin_tools.run_python("1/0", lim)
    assert "CPU time limit" in builtin_tools.run_python("while True: pass", lim)
    assert "MemoryError" in builtin_tools.run_python("x = bytearray(1 << 30)", lim)
    cut = builtin_tools.run_python("print('a' * 100000)", lim)
    assert "output cut at 1000 bytes" in cut and len(cut) < 1100
    slow = builtin_tools.PythonLimits(cpu_seconds=5, wall_seconds=1)
    assert "wall-clock" in builtin_tools.run_python("import time; time.sleep(30)", slow)
    # it starts in an empty directory of its own, with almost no environment
    assert builtin_tools.run_python("import os; print(os.listdir('.'), sorted(os.environ))", lim).startswith("[")
    assert "PYLLAMA" not in builtin_tools.run_python("import os; print(dict(os.environ))", lim)


@pytest.mark.subprocess
def test_python_tool_has_no_network():
    if not builtin_tools.network_isolated():
        pytest.skip("unshare cannot make a network namespace here: the python tool has network access")
    code = ("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=3)\n    print('CONNECTED')\n"
            "except OSError as e:\n    print('blocked', e.errno)\n"
            "import subprocess\nprint(open('/proc/net/dev').read().count(':'))")
    out = builtin_tools.run_python(code)
    assert "blocked" in out and "CONNECTED" not in out


def test_generate_cli_refuses_a_bad_grammar(capsys, tmp_path):
    from pyllama.cli import generate

    for args in (["--grammar", "root ::= ("], ["--json-schema", "{nope"], ["--grammar-file", str(tmp_path / "none")]):
        with pytest.raises(SystemExit) as e:
            generate.main(["-m", "/nonexistent.gguf", "-p", "x"] + args)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err and ("grammar" in err or "JSON schema" in err), err
    with pytest.raises(SystemExit):
        generate.main(["--grammar", "root ::= \"a\"", "-j", "{}"])  # one constraint at a time
