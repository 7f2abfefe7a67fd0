"""Constrained generation on the fake model of support/fake_llama.py (byte vocabulary, random
logits): a model with no preference at all explores the grammar widely, so every one of
the 30 schemas is sampled at temperature 1 and its output validated with ``jsonschema``,
without a real model. Also the chat's tool loop (--tools) with a scripted model."""
from __future__ import annotations

import io
import json

import pytest

pytest.importorskip("llguidance", reason="constrained decoding needs the llguidance package")
jsonschema = pytest.importorskip("jsonschema", reason="the tests validate output with the jsonschema package")

from support.json_schemas import SCHEMAS  # noqa: E402
from support.fake_llama import FakeLlama  # noqa: E402

from pyllama.grammar import LlamaGrammar  # noqa: E402


@pytest.fixture(scope="module")
def fake():
    return FakeLlama(n_ctx=2048, chat_format="chatml")


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_random_model_output_validates(fake, i):
    _, schema = SCHEMAS[i]
    grammar = LlamaGrammar.from_json_schema(schema)
    finished = 0
    for seed in range(3):
        r = fake.create_completion("JSON: ", grammar=grammar, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                   max_tokens=1500, seed=seed)
        text = r["choices"][0]["text"]
        if r["choices"][0]["finish_reason"] == "length":
            continue  # a random walk through a long number or string; the grammar held while it lasted
        finished += 1
        jsonschema.validate(json.loads(text), schema)
    assert finished >= 1


def test_forced_call_on_the_fake_model(fake):
    from pyllama.builtin_tools import tool_specs

    tools = tool_specs(["calculator"])
    for seed in range(5):
        r = fake.create_chat_completion([{"role": "user", "content": "2+2?"}], tools=tools, tool_choice="required",
                                        temperature=1.0, max_tokens=600, seed=seed)
        c = r["choices"][0]
        if c["finish_reason"] == "length":
            continue
        assert c["finish_reason"] == "tool_calls"
        (call,) = c["message"]["tool_calls"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), tools[0]["function"]["parameters"])


class ScriptedLlm(FakeLlama):
    """create_chat_completion streams scripted replies, one per call, and records its arguments."""

    def __init__(self, replies):
        super().__init__(n_ctx=4096, chat_format="chatml")
        self.replies = list(replies)
        self.calls = []

    def create_chat_completion(self, messages, stream=False, **kw):
        self.calls.append((json.loads(json.dumps(messages)), kw))
        reply = self.replies.pop(0)

        def chunks():
            yield {"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]}
            if isinstance(reply, str):
                yield {"choices": [{"delta": {"content": reply}, "finish_reason": None}]}
            else:
                yield {"choices": [{"delta": {"tool_calls": [
                    {"index": i, "id": f"call_{i}", "type": "function",
                     "function": {"name": n, "arguments": json.dumps(a)}} for i, (n, a) in enumerate(reply)]},
                    "finish_reason": None}]}
            yield {"choices": [{"delta": {}, "finish_reason": "stop"}]}
        return chunks()


def test_chat_session_runs_tools_and_returns_results():
    from pyllama.chat import ChatSession

    llm = ScriptedLlm([[("calculator", {"expression": "1234*5678"}), ("calculator", {"expression": "1/0"})],
                       [("python", {"code": "print(1)"})],
                       "It is 7006652."])
    shown = []
    session = ChatSession(llm, tools=["calculator"], show_tool=lambda *a: shown.append(a))
    reply, interrupted = session.reply("What is 1234*5678?", io.StringIO())
    assert reply == "It is 7006652." and not interrupted
    assert [s[2] for s in shown[:2]] == ["7006652", "error: division by zero"]
    assert shown[2][0] == "python" and "not enabled" in shown[2][2]  # only the tools asked for run
    roles = [m["role"] for m in session.messages]
    assert roles == ["user", "assistant", "tool", "tool", "assistant", "tool", "assistant"]
    assert session.messages[2]["tool_call_id"] == "call_0" and session.messages[2]["content"] == "7006652"
    assert llm.calls[0][1]["tools"][0]["function"]["name"] == "calculator"


def test_chat_session_stops_a_repeating_model():
    from pyllama.chat import ChatSession

    call = [("calculator", {"expression": "2+2"})]
    llm = ScriptedLlm([call, call, "4."])
    session = ChatSession(llm, tools=["calculator"])
    reply, _ = session.reply("2+2?", io.StringIO())
    assert reply == "4."
    assert llm.calls[-1][1]["tool_choice"] == "none" and llm.calls[-1][1]["grammar"] is not None
    assert sum(m["role"] == "tool" for m in session.messages) == 1  # the repeat was not run again


def test_chat_tools_flag_is_checked(capsys):
    from pyllama import chat

    with pytest.raises(SystemExit) as e:
        chat.main(["--tools", "calculator,shell", "-m", "/nonexistent.gguf"])
    assert e.value.code == 2
    assert "unknown tool shell" in capsys.readouterr().err
