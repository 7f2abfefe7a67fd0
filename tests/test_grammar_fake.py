"""Constrained generation on the fake model of support/fake_llama.py (byte vocabulary, random
logits): a model with no preference at all explores the grammar widely, so every one of
the 30 schemas is sampled at temperature 1 and its output validated with ``jsonschema``,
without a real model. Also the chat's tool loop (--tools) with a scripted model.

The lazy check (draw without the mask, compute the mask only when the grammar rejects
the token) must change nothing: greedy runs give the same tokens with and without it, and
its temperature draws follow the masked distribution of the numpy reference sampler
(support/reference_sampling.py) on a mask written here by hand."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("llguidance", reason="constrained decoding needs the llguidance package")
jsonschema = pytest.importorskip("jsonschema", reason="the tests validate output with the jsonschema package")

from support.json_schemas import SCHEMAS  # noqa: E402
from support.fake_llama import FakeLlama  # noqa: E402

from pyllama.grammar import GrammarConstraint, LlamaGrammar  # noqa: E402
from pyllama.sampling import Sampler, SamplingParams, make_rng  # noqa: E402
from support.reference_sampling import apply_token_mask, candidate_distribution  # noqa: E402


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


def _greedy_tokens(fake, grammar, lazy, n=300):
    constraint = GrammarConstraint(fake.tokenizer, grammar, end_ids=fake.tokenizer.eot_ids, lazy=lazy)
    gen = fake.generate(fake.tokenizer.tokenize("JSON: "), temp=0.0, grammar=constraint)
    out = []
    for token in gen:
        out.append(token)
        if token in fake.tokenizer.eot_ids or len(out) == n:
            break
    gen.close()
    return out, constraint.n_masks


def test_lazy_check_keeps_greedy_output(fake):
    n_tokens = n_masks = 0
    for i in range(0, len(SCHEMAS), 3):
        grammar = LlamaGrammar.from_json_schema(SCHEMAS[i][1])
        full, full_masks = _greedy_tokens(fake, grammar, lazy=False)
        lazy, lazy_masks = _greedy_tokens(fake, grammar, lazy=True)
        assert lazy == full, SCHEMAS[i][0]
        assert full_masks == len(full)
        n_tokens, n_masks = n_tokens + len(lazy), n_masks + lazy_masks
    assert n_masks < n_tokens  # some steps took the lazy check (inside strings, at least)


def test_lazy_check_draws_the_masked_distribution():
    """Plain temperature sampling under a grammar that allows the bytes a..m: a draw the
    grammar rejects is drawn again under the mask, which must leave exactly the masked
    distribution (chi-square against the reference's probabilities)."""
    from support.fake_llama import FakeTokenizer

    tok = FakeTokenizer()
    allowed = np.zeros(tok.n_vocab, bool)
    allowed[ord("a"):ord("m") + 1] = True  # what [a-m]+ allows first, by hand
    logits = np.random.default_rng(3).normal(0, 2, tok.n_vocab).astype(np.float32)
    logits[allowed] += 3.0  # about half the mass allowed: both paths are taken often
    padded = np.zeros((tok.n_vocab + 31) // 32 * 32, bool)
    padded[:tok.n_vocab] = allowed
    words = np.packbits(padded, bitorder="little").view("<u4")
    ref_ids, ref_probs = candidate_distribution(apply_token_mask(logits, words), (), SamplingParams(
        temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
    keep = ref_probs > 0
    expected = dict(zip(ref_ids[keep].tolist(), ref_probs[keep].tolist()))
    assert set(expected) == set(np.flatnonzero(allowed).tolist())

    sampler = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), make_rng(7))
    assert sampler.untruncated
    constraint = GrammarConstraint(tok, LlamaGrammar.from_regex("[a-m]+"), end_ids=tok.eot_ids)
    n = 20000
    draws = []
    for _ in range(n):
        draws.append(constraint.choose(sampler, logits, []))
        constraint._matcher.rollback(1)
    assert 0.2 * n < constraint.n_masks < 0.8 * n  # both the lazy accept and the masked redraw ran
    counts = np.bincount(draws, minlength=tok.n_vocab)
    assert counts[~allowed].sum() == 0
    ids = sorted(expected)
    exp = np.array([expected[i] for i in ids]) * n
    chi2 = float((((counts[ids] - exp) ** 2) / exp).sum())
    assert chi2 < 45, chi2  # 12 degrees of freedom: p < 1e-5 to fail by chance


def test_truncating_samplers_always_use_the_mask():
    from support.fake_llama import FakeTokenizer

    tok = FakeTokenizer()
    logits = np.zeros(tok.n_vocab, np.float32)
    logits[ord("a")] = 10.0  # allowed and the favourite: the lazy check would take it
    grammar = LlamaGrammar.from_regex("[a-m]+")
    for params in (SamplingParams(temperature=1.0), SamplingParams(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0),
                   SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=0.9)):
        sampler = Sampler(params, make_rng(0))
        assert not sampler.untruncated
        constraint = GrammarConstraint(tok, grammar, end_ids=tok.eot_ids)
        constraint.choose(sampler, logits, [])
        assert constraint.n_masks == 1


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
    from pyllama.cli.chat import ChatSession

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
    from pyllama.cli.chat import ChatSession

    call = [("calculator", {"expression": "2+2"})]
    llm = ScriptedLlm([call, call, "4."])
    session = ChatSession(llm, tools=["calculator"])
    reply, _ = session.reply("2+2?", io.StringIO())
    assert reply == "4."
    assert llm.calls[-1][1]["tool_choice"] == "none" and llm.calls[-1][1]["grammar"] is not None
    assert sum(m["role"] == "tool" for m in session.messages) == 1  # the repeat was not run again


def test_chat_tools_flag_is_checked(capsys):
    from pyllama.cli import chat

    with pytest.raises(SystemExit) as e:
        chat.main(["--tools", "calculator,shell", "-m", "/nonexistent.gguf"])
    assert e.value.code == 2
    assert "unknown tool shell" in capsys.readouterr().err
