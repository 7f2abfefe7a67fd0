"""Constrained generation and tool calls on real models.

References: the ``jsonschema`` package validates every JSON output; llguidance's own
token check (``validate_tokens``, which does not use the bitmask) vets every sampled
token; llama.cpp's GBNF sample grammars are checked with validators written here from
their rules; the calculator's answer is plain arithmetic.

Qwen2.5-Coder-0.5B runs when ``qwen2.5-coder-0.5b-instruct`` is in the pyllama cache
and loads (its file is Q5_0/Q4_K/Q6_K), or from PYLLAMA_TEST_QWEN=/path/to/file.gguf.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llguidance", reason="constrained decoding needs the llguidance package")
jsonschema = pytest.importorskip("jsonschema", reason="the tests validate output with the jsonschema package")

from support.json_schemas import SCHEMAS  # noqa: E402
from pyllama.grammar import GrammarConstraint, LlamaGrammar  # noqa: E402

pytestmark = pytest.mark.slow

GRAMMARS = Path(__file__).parent / "data" / "grammars"


@pytest.fixture(scope="module")
def llm(default_model_path):
    from pyllama import Llama

    model = Llama(default_model_path, n_ctx=1024)
    yield model
    model.close()


@pytest.fixture(scope="module")
def qwen():
    from pyllama import Llama, models
    from pyllama.errors import ModelError

    path = os.environ.get("PYLLAMA_TEST_QWEN")
    if not path:
        name = "qwen2.5-coder-0.5b-instruct"
        if not models.is_cached(name):
            pytest.skip(f"{name} is not in the pyllama cache (or set PYLLAMA_TEST_QWEN=file.gguf)")
        path = models.cached_path(name)
    try:
        model = Llama(path, n_ctx=2048)
    except ModelError as e:
        pytest.skip(f"Qwen2.5-Coder-0.5B does not load here: {e}")
    yield model
    model.close()


def _schema_reply(model, request, schema, max_tokens=160):
    r = model.create_chat_completion(
        [{"role": "user", "content": f"{request} Reply in JSON."}], temperature=0, max_tokens=max_tokens,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    return r["choices"][0]


@pytest.mark.parametrize("model", ["llm", "qwen"])  # the fixtures: the default model, Qwen2.5-Coder-0.5B
@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_json_schema_output_validates(request, model, i):
    ask, schema = SCHEMAS[i]
    choice = _schema_reply(request.getfixturevalue(model), ask, schema)
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_json_object_response_format(llm):
    # any object: a small model can nest forever when asked for much, so ask for little
    r = llm.create_chat_completion([{"role": "user", "content": "Give a JSON object with the name and age of a dog."}],
                                   temperature=0, max_tokens=200, response_format={"type": "json_object"})
    assert r["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(r["choices"][0]["message"]["content"]), dict)


class _Checked(GrammarConstraint):
    """Asks llguidance itself (validate_tokens, no bitmask) about every sampled token, and
    holds the lazy check's answer (no mask) to the mask's at every step it is used."""

    steps = 0

    def _vet(self, token):
        if token in self._end:  # the end of generation: only once the grammar is satisfied
            assert self.accepting, f"step {self.steps}: end token {token} before the grammar is complete"
        else:
            assert self.allows(token), f"step {self.steps}: token {token} is not allowed by the grammar"
        type(self).steps += 1

    def accept(self, token):
        bits = self.mask
        assert bits[token >> 5] >> (token & 31) & 1
        self._vet(token)
        super().accept(token)

    def try_accept(self, token):
        in_mask = bool(self.fill_mask()[token >> 5] >> (token & 31) & 1)  # this step's mask, for the checks
        self.n_masks -= 1
        forced = token not in self._end and bool(self._matcher.compute_ff_bytes())
        if token not in self._end and not forced:
            assert self.allows(token) == in_mask, f"step {self.steps}: validate_tokens and the mask differ"
        taken = super().try_accept(token)  # an end token it takes goes through accept() above
        # with forced text the check defers to the mask (which allows only its canonical tokens)
        assert taken == (in_mask and not forced), f"step {self.steps}: lazy {taken}, mask {in_mask} for {token}"
        if taken and token not in self._end:
            type(self).steps += 1
        return taken


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_sampled_token_is_allowed(llm, temperature):
    schema = SCHEMAS[-2][1]
    grammar = LlamaGrammar.from_json_schema(schema)
    prompt = llm.tokenize(b"A meeting as JSON: ", add_bos=True)
    constraint = _Checked(llm.tokenizer, grammar, end_ids=llm.tokenizer.eot_ids)
    out = []
    gen = llm.generate(prompt, temp=temperature, seed=3, grammar=constraint)
    for token in gen:
        if token in llm.tokenizer.eot_ids:
            break
        out.append(token)
        if len(out) >= 150:
            break
    gen.close()
    assert _Checked.steps >= len(out) > 5
    if temperature == 0.0:  # greedy: the lazy check ran, and took the model's token at some steps
        assert constraint.n_masks < len(out)
    if constraint.accepting:
        jsonschema.validate(json.loads(llm.detokenize(out).decode()), schema)


def test_lazy_check_keeps_greedy_output(llm):
    """Greedy JSON under a schema: the same tokens whether each step computes the mask or
    first asks llguidance about the model's own choice."""
    grammar = LlamaGrammar.from_json_schema(SCHEMAS[-2][1])
    prompt = llm.tokenize(b"A meeting as JSON: ", add_bos=True)

    def run(lazy):
        llm.reset()
        constraint = GrammarConstraint(llm.tokenizer, grammar, end_ids=llm.tokenizer.eot_ids, lazy=lazy)
        gen = llm.generate(prompt, temp=0.0, grammar=constraint)
        out = []
        for token in gen:
            out.append(token)
            if token in llm.tokenizer.eot_ids or len(out) >= 120:
                break
        gen.close()
        return out, constraint.n_masks

    (full, full_masks), (lazy, lazy_masks) = run(False), run(True)
    assert lazy == full
    assert full_masks == len(full) and lazy_masks < len(lazy)  # forced text (keys, patterns) still masks


def test_without_a_constraint_tokens_are_unchanged(llm):
    """The constrained path with nothing constraining (an identity logits processor) draws the same
    tokens for a seed as the plain path, and sampling leaves the model's logits as they were."""
    prompt = llm.tokenize(b"Once upon a time", add_bos=True)

    def run(**kw):
        llm.reset()  # the whole prompt evaluated each time (a cached prefix can round differently)
        gen = llm.generate(prompt, temp=0.9, seed=11, **kw)
        toks = [next(gen) for _ in range(12)]
        gen.close()
        return toks

    seen = []

    def identity(input_ids, scores):
        seen.append(scores.copy())
        return scores

    plain = run()
    assert run(logits_processor=identity) == plain
    llm.reset()
    gen = llm.generate(prompt, temp=0.9, seed=11)
    next(gen)
    np.testing.assert_array_equal(llm.logits, seen[0])  # the first step's logits, untouched by sampling
    gen.close()


def test_logits_processor_and_stopping_criteria(llm):
    prompt = "The three primary colors are"
    base = llm.create_completion(prompt, temperature=0, max_tokens=8)["choices"][0]["text"]
    banned = llm.tokenize(base.encode(), add_bos=False)[0]
    calls = []

    def ban(input_ids, scores):
        calls.append(np.asarray(input_ids).copy())
        scores[banned] = -np.inf
        return scores

    from pyllama import LogitsProcessorList, StoppingCriteriaList

    r = llm.create_completion(prompt, temperature=0, max_tokens=8, logits_processor=LogitsProcessorList([ban]))
    ref = llm.create_completion(prompt, temperature=0, max_tokens=8, logit_bias={banned: float("-inf")})
    assert r["choices"][0]["text"] == ref["choices"][0]["text"] != base
    prompt_ids = llm.tokenize(prompt.encode(), add_bos=True)
    assert list(calls[0]) == prompt_ids and len(calls[1]) == len(prompt_ids) + 1  # the ids so far, each step

    def three(input_ids, scores):
        return len(input_ids) >= len(prompt_ids) + 3

    r = llm.create_completion(prompt, temperature=0, max_tokens=20, stopping_criteria=StoppingCriteriaList([three]))
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == 3
    with pytest.raises(ValueError, match="callable"):
        llm.create_completion(prompt, max_tokens=2, stopping_criteria=[3])


# ---------------------------------------------------------------------------- GBNF samples

_ARITH_TERM = r"(?:[a-z][a-z0-9_]*|[0-9]+)[ \t\n]*"
_ARITH_LINE = re.compile(rf"{_ARITH_TERM}(?:[-+*/]{_ARITH_TERM})*=[ \t\n]*{_ARITH_TERM}\n")
_MOVE = r"(?:(?:[a-h]x)?[a-h][1-8](?:=[NBKQR])?|[NBKQR][a-h]?[1-8]?x?[a-h][1-8]|O-O(?:-O)?)[+#]?"
_CHESS_LINE = re.compile(rf"[1-9][0-9]?\. {_MOVE} {_MOVE}")


def _arith_ok(text):
    """A prefix of arithmetic.gbnf's language: parenthesized groups are reduced to a number,
    then every complete statement must match."""
    flat = text
    while re.search(r"\([^()]*\)", flat):
        flat = re.sub(r"\([ \t\n]*([^()]*)\)", "1", flat)
    pos = 0
    while True:
        m = _ARITH_LINE.match(flat, pos)
        if not m:
            break
        pos = m.end()
    return pos > 0 and re.fullmatch(r"[a-z0-9_ \t\n+\-*/=(]*", flat[pos:]) is not None


@pytest.mark.parametrize("name,prompt,check", [
    ("json", "A JSON object describing a dog:\n", lambda t, done: done and isinstance(json.loads(t), dict)),
    ("json_arr", "A JSON list of three colors:\n", lambda t, done: done and isinstance(json.loads(t), list)),
    ("list", "Shopping list:\n", lambda t, done: t.startswith("- ") and all(
        re.fullmatch(r"- [^\r\n\x0b\x0c\x85\u2028\u2029]+", line) for line in t.split("\n")[:-1])),
    ("chess", "The opening moves of a chess game:\n", lambda t, done: t.startswith("1. ") and all(
        _CHESS_LINE.fullmatch(line) for line in t.split("\n")[:-1])),
    ("arithmetic", "Some sums:\n", lambda t, done: _arith_ok(t)),
])
def test_llama_cpp_gbnf_grammars_constrain(llm, name, prompt, check):
    grammar = LlamaGrammar.from_file(GRAMMARS / f"{name}.gbnf")
    r = llm.create_completion(prompt, grammar=grammar, temperature=0, max_tokens=48, repeat_penalty=1.1)
    text = r["choices"][0]["text"]
    assert check(text, r["choices"][0]["finish_reason"] == "stop"), text


# ---------------------------------------------------------------------------- tool calls

def _calculator_spec():
    from pyllama.builtin_tools import tool_specs

    return tool_specs(["calculator"])


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "calculator"}}])
def test_forced_tool_call_round_trip(llm, choice):
    from pyllama.builtin_tools import run_tool

    tools = _calculator_spec()
    messages = [{"role": "user", "content": "What is 1234*5678?"}]
    r = llm.create_chat_completion(messages, tools=tools, tool_choice=choice, temperature=0, max_tokens=80)
    choice0 = r["choices"][0]
    assert choice0["finish_reason"] == "tool_calls"
    (call,) = choice0["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "calculator"
    args = json.loads(call["function"]["arguments"])
    jsonschema.validate(args, tools[0]["function"]["parameters"])
    messages += [choice0["message"], {"role": "tool", "tool_call_id": call["id"],
                                      "content": run_tool("calculator", args)}]
    final = llm.create_chat_completion(messages, tools=tools, tool_choice="none", temperature=0, max_tokens=40)
    msg = final["choices"][0]["message"]
    assert "tool_calls" not in msg and msg["content"].strip()


def test_forced_tool_call_streams(llm):
    # a tool whose arguments are bounded (an enum), so the call ends within max_tokens whatever the
    # greedy path: a free-text argument lets a 135M model ramble at a near-tie of the logits
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
                       "required": ["city"]}}}]
    chunks = list(llm.create_chat_completion(
        [{"role": "user", "content": "What is the weather in Paris?"}], tools=tools, tool_choice="required",
        temperature=0, max_tokens=60, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), tools[0]["function"]["parameters"])
    assert not any(d.get("content") for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_fallback_prompt_reaches_a_template_without_tools(llm):
    """SmolLM2's template ignores `tools`: the tool list comes through the fallback system prompt."""
    from pyllama import tools as tool_calls
    from pyllama.chat_format import format_chat

    tools = _calculator_spec()
    plain = format_chat(llm, [{"role": "user", "content": "hi"}], tools=tools).text
    assert "calculator" not in plain
    msgs, _ = tool_calls.prepare_messages([{"role": "user", "content": "hi"}], tools, native=False)
    text = format_chat(llm, msgs).text
    assert '"name": "calculator"' in text and "<tool_call>" in text


def test_qwen_calculator_answers_1234_times_5678(qwen):
    from pyllama.cli.chat import ChatSession

    shown = []
    session = ChatSession(qwen, tools=["calculator"], show_tool=lambda *a: shown.append(a), temperature=0,
                          max_tokens=120)
    out = io.StringIO()
    reply, interrupted = session.reply("What is 1234*5678?", out)
    assert not interrupted
    assert shown and shown[0][0] == "calculator" and shown[0][2] == "7006652"
    assert "7006652" in reply.replace(",", "")


def test_generate_cli_json_schema_and_grammar(default_model_path, capsys):
    from pyllama.cli import generate

    schema = '{"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}}, ' \
             '"required": ["capital"], "additionalProperties": false}'
    prompt = "The capital of France as JSON: "
    assert generate.main(["-m", default_model_path, "-p", prompt, "--temp", "0", "-n", "40", "-j", schema]) == 0
    out = capsys.readouterr().out
    jsonschema.validate(json.loads(out[len(prompt):]), json.loads(schema))
    assert generate.main(["-m", default_model_path, "-p", "Answer yes or no: is the sky blue? ", "--temp", "0",
                          "-n", "8", "--grammar", 'root ::= "yes" | "no"']) == 0
    assert capsys.readouterr().out.split("? ", 1)[1].strip() in ("yes", "no")
