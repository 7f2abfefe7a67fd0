"""The generation loop (pyllama.completion) on a fake model whose logits are a
known function of the context (tests/support/fake_llama.py): caching, batching,
stop strings, max_tokens, context overflow, seeds, response shapes."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from support.fake_llama import BOS, EOS, IM_END, FakeLlama, hash_logits  # noqa: E402

from pyllama.errors import ContextOverflowError  # noqa: E402
from pyllama.completion import StopStringFilter  # noqa: E402


def greedy_reference(prompt, n):
    """Greedy continuation computed straight from the fake's logits function."""
    ctx = list(prompt)
    out = []
    for _ in range(n):
        t = int(np.argmax(hash_logits(ctx)))
        out.append(t)
        ctx.append(t)
    return out


def take(gen, n):
    out = []
    for t in gen:
        out.append(t)
        if len(out) == n:
            break
    gen.close()
    return out


def script(fake, prompt_tokens, text: bytes, eos=True):
    ids = list(text) + ([EOS] if eos else [])
    fake.script = (len(prompt_tokens), ids)


# ---------------------------------------------------------------------------- generate


def test_generate_greedy_matches_reference():
    fake = FakeLlama(n_ctx=64)
    prompt = [BOS] + list(b"abc")
    got = take(fake.generate(prompt, temp=0.0), 10)
    assert got == greedy_reference(prompt, 10)


def test_prompt_evaluated_in_batches():
    fake = FakeLlama(n_ctx=64, n_batch=4)
    take(fake.generate([BOS] + list(b"123456789"), temp=0), 3)
    # 10 prompt tokens in batches of 4, then one eval per resumed token (the last one never)
    assert fake.eval_batches == [4, 4, 2, 1, 1]


def test_prompt_cache_reuses_common_prefix():
    fake = FakeLlama(n_ctx=128)
    p1 = [BOS] + list(b"hello there")
    out1 = take(fake.generate(p1, temp=0), 5)
    fake.eval_batches.clear()
    p2 = p1 + out1 + list(b" and more")
    out2 = take(fake.generate(p2, temp=0), 5)
    # Cached: p1 + out1[:-1] (the last sampled token was never evaluated).
    assert fake.evaluated() == len(p2) - (len(p1) + len(out1) - 1) + 4
    assert out2 == greedy_reference(p2, 5)  # same result as without a cache


def test_prompt_cache_diverging_prompt_truncates():
    fake = FakeLlama(n_ctx=128)
    take(fake.generate([BOS] + list(b"abcdef"), temp=0), 2)
    fake.eval_batches.clear()
    p2 = [BOS] + list(b"abcXYZ")
    out = take(fake.generate(p2, temp=0), 3)
    assert fake.eval_batches[0] == 3  # only "XYZ"
    assert out == greedy_reference(p2, 3)


def test_same_prompt_twice_evaluates_one_token():
    fake = FakeLlama(n_ctx=64)
    p = [BOS] + list(b"same")
    a = take(fake.generate(p, temp=0), 1)
    fake.eval_batches.clear()
    b = take(fake.generate(p, temp=0), 1)
    assert fake.eval_batches == [1] and a == b


def test_interrupted_generation_leaves_consistent_cache():
    fake = FakeLlama(n_ctx=128)
    p = [BOS] + list(b"story:")
    take(fake.generate(p, temp=1.0, seed=3), 7)
    p2 = [BOS] + list(b"story: again")
    assert take(fake.generate(p2, temp=0), 4) == greedy_reference(p2, 4)


def test_reset_false_appends():
    fake = FakeLlama(n_ctx=64)
    p = [BOS] + list(b"ab")
    t = take(fake.generate(p, temp=0), 1)
    fake.eval([t[0]])
    more = take(fake.generate(list(b"cd"), temp=0, reset=False), 2)
    assert more == greedy_reference(p + t + list(b"cd"), 2)


def test_context_shift_like_llama_cpp():
    fake = FakeLlama(n_ctx=16, context_overflow="shift")
    p = [BOS] + list(b"abcdef")  # 7 tokens, BOS kept
    got = take(fake.generate(p, temp=0), 30)
    assert len(got) == 30
    assert fake.shifts, "context never shifted"
    n_keep, n_discard = fake.shifts[0]
    assert n_keep == 1 and n_discard == (16 - 1) // 2
    assert fake.input_ids[0] == BOS
    assert fake.n_tokens <= 16


def test_context_shift_without_bos_keeps_nothing():
    fake = FakeLlama(n_ctx=10, add_bos=False)
    take(fake.generate(list(b"xyz"), temp=0), 20)
    assert fake.shifts[0] == (0, 5)


def test_context_overflow_error_policy():
    fake = FakeLlama(n_ctx=12, context_overflow="error")
    with pytest.raises(ContextOverflowError, match="n_ctx=12"):
        take(fake.generate([BOS] + list(b"abcd"), temp=0), 20)


def test_prompt_longer_than_context_raises():
    fake = FakeLlama(n_ctx=8)
    with pytest.raises(ContextOverflowError, match="9 tokens"):
        next(fake.generate([BOS] * 9))
    for stream in (False, True):
        with pytest.raises(ContextOverflowError, match="n_ctx=8"):
            fake.create_completion("x" * 20, stream=stream)  # raised eagerly, even when streaming


# ---------------------------------------------------------------------------- completions


def test_completion_shape_and_usage():
    fake = FakeLlama()
    r = fake.create_completion("Hi", max_tokens=5, temperature=0, logit_bias={EOS: -100, IM_END: -100})
    assert set(r) == {"id", "object", "created", "model", "choices", "usage"}
    assert r["id"].startswith("cmpl-") and r["object"] == "text_completion"
    assert isinstance(r["created"], int) and r["model"] == "fake.gguf"
    (c,) = r["choices"]
    assert set(c) == {"text", "index", "logprobs", "finish_reason"}
    assert c["index"] == 0 and c["logprobs"] is None and c["finish_reason"] == "length"
    prompt = [BOS] + list(b"Hi")
    assert r["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    # greedy with the bias applied, computed independently
    ctx, expect = list(prompt), []
    for _ in range(5):
        lg = hash_logits(ctx).astype(np.float64)
        lg[EOS] -= 100
        lg[IM_END] -= 100
        expect.append(int(np.argmax(lg)))
        ctx.append(expect[-1])
    assert c["text"] == bytes(t for t in expect if t < 256).decode("utf-8", errors="replace")


def test_call_is_create_completion():
    a = FakeLlama()(prompt="Hey", max_tokens=4, temperature=0)
    b = FakeLlama().create_completion("Hey", max_tokens=4, temperature=0)
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"]


def test_stops_at_eos_without_text():
    fake = FakeLlama()
    script(fake, [BOS] + list(b"Q"), b"answer")
    r = fake.create_completion("Q", max_tokens=50, temperature=0)
    assert r["choices"][0]["text"] == "answer"
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] == 6


def test_max_tokens_none_runs_to_context_end():
    fake = FakeLlama(n_ctx=20)
    r = fake.create_completion("abc", max_tokens=None, temperature=0,
                               logit_bias={EOS: -1000, IM_END: -1000})
    assert r["usage"]["completion_tokens"] == 20 - 4
    assert r["choices"][0]["finish_reason"] == "length"
    assert fake.shifts == []


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_split_across_tokens_never_leaks(stream):
    fake = FakeLlama()
    prompt = [BOS] + list(b"P")
    script(fake, prompt, b"Hello STOP world")
    r = fake.create_completion("P", max_tokens=50, temperature=0, stop=["STOP"], stream=stream)
    if stream:
        chunks = list(r)
        texts = [c["choices"][0]["text"] for c in chunks]
        assert "".join(texts) == "Hello "
        assert all("S" not in t for t in texts)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    else:
        assert r["choices"][0]["text"] == "Hello "
        assert r["choices"][0]["finish_reason"] == "stop"
        # Every byte is a token: "Hello STOP" is 10 tokens generated.
        assert r["usage"]["completion_tokens"] == 10


def test_held_back_text_is_released_when_not_a_stop():
    fake = FakeLlama()
    script(fake, [BOS] + list(b"P"), b"ST and STO and STOx")
    r = fake.create_completion("P", max_tokens=50, temperature=0, stop="STOP")
    assert r["choices"][0]["text"] == "ST and STO and STOx"
    assert r["choices"][0]["finish_reason"] == "stop"  # by EOS


def test_held_back_text_released_at_max_tokens():
    fake = FakeLlama()
    script(fake, [BOS] + list(b"P"), b"abcST")
    r = fake.create_completion("P", max_tokens=5, temperature=0, stop=["STOP"])
    assert r["choices"][0]["text"] == "abcST" and r["choices"][0]["finish_reason"] == "length"


def test_earliest_of_several_stops_wins():
    fake = FakeLlama()
    script(fake, [BOS] + list(b"P"), b"one, two. three")
    r = fake.create_completion("P", max_tokens=50, temperature=0, stop=[".", ","])
    assert r["choices"][0]["text"] == "one"


def test_stream_utf8_split_across_tokens():
    fake = FakeLlama()
    text = "héllo wörld ✓".encode()
    script(fake, [BOS] + list(b"P"), text)
    chunks = [c["choices"][0]["text"] for c in
              fake.create_completion("P", max_tokens=50, temperature=0, stream=True)]
    assert "".join(chunks) == text.decode()
    assert all("\ufffd" not in c for c in chunks)


def test_echo_and_suffix():
    fake = FakeLlama()
    script(fake, [BOS] + list(b"Say"), b" hi")
    r = fake.create_completion("Say", max_tokens=10, temperature=0, echo=True, suffix="!")
    assert r["choices"][0]["text"] == "Say hi!"


def test_logprobs_match_log_softmax():
    fake = FakeLlama()
    r = fake.create_completion("ab", max_tokens=3, temperature=0, logprobs=2,
                               logit_bias={EOS: -100, IM_END: -100})
    lp = r["choices"][0]["logprobs"]
    # llama-cpp-python's text_offset: into prompt + completion, so the first is len(prompt)
    assert len(lp["tokens"]) == 3 and lp["text_offset"][0] == len("ab")
    ctx = [BOS] + list(b"ab")
    for i in range(3):
        raw = hash_logits(ctx).astype(np.float64)
        ref = raw - np.log(np.sum(np.exp(raw - raw.max()))) - raw.max()
        b = raw.copy()
        b[EOS] -= 100
        b[IM_END] -= 100
        tok = int(np.argmax(b))
        assert lp["token_logprobs"][i] == pytest.approx(ref[tok], abs=1e-5)
        top = lp["top_logprobs"][i]
        best2 = np.argsort(-ref)[:2]
        for t in best2:
            piece = bytes([t]).decode("utf-8", errors="ignore") if t < 256 else ""
            assert top[piece] == pytest.approx(ref[t], abs=1e-5)
        ctx.append(tok)


def test_echo_logprobs_cover_prompt():
    fake = FakeLlama()
    r = fake.create_completion("xyz", max_tokens=1, temperature=0, echo=True, logprobs=0,
                               logit_bias={EOS: -100, IM_END: -100})
    lp = r["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None
    assert len(lp["tokens"]) == 3 + 1  # as llama-cpp-python: no entry for BOS
    assert lp["text_offset"] == [0, 1, 2, 3]
    raw = hash_logits([BOS, ord("x")]).astype(np.float64)
    ref = raw - raw.max() - np.log(np.sum(np.exp(raw - raw.max())))
    assert lp["token_logprobs"][1] == pytest.approx(ref[ord("y")], abs=1e-5)


def test_seed_reproducible_and_distinct():
    def run(seed):
        return FakeLlama().create_completion("seed", max_tokens=12, temperature=1.0, top_k=0,
                                             top_p=1.0, min_p=0.0, seed=seed,
                                             logit_bias={EOS: -100, IM_END: -100})["choices"][0]["text"]
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_constructor_seed_used_when_no_seed_given():
    def run():
        return FakeLlama(seed=7).create_completion(
            "s", max_tokens=10, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
            logit_bias={EOS: -100, IM_END: -100})["choices"][0]["text"]
    assert run() == run()


def test_invalid_sampling_arguments_raise():
    with pytest.raises(ValueError, match="top_p"):
        FakeLlama().create_completion("x", top_p=1.5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        FakeLlama().create_completion("x", logit_bias={99999: 1.0})


# ---------------------------------------------------------------------------- chat


def test_chat_completion_shape_and_stop_at_im_end():
    fake = FakeLlama(chat_format="chatml", add_bos=False)
    msgs = [{"role": "user", "content": "hi"}]
    prompt = fake.tokenizer.tokenize("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                                     special=True)
    fake.script = (len(prompt), list(b"Hello!") + [IM_END])
    r = fake.create_chat_completion(msgs, temperature=0)
    assert r["id"].startswith("chatcmpl-") and r["object"] == "chat.completion"
    (c,) = r["choices"]
    assert c["message"] == {"role": "assistant", "content": "Hello!"}
    assert c["finish_reason"] == "stop" and c["index"] == 0
    assert r["usage"]["prompt_tokens"] == len(prompt)
    assert r["usage"]["completion_tokens"] == 6


def test_chat_stream_chunks():
    fake = FakeLlama(chat_format="chatml", add_bos=False)
    msgs = [{"role": "user", "content": "yo"}]
    prompt = fake.tokenizer.tokenize("<|im_start|>user\nyo<|im_end|>\n<|im_start|>assistant\n",
                                     special=True)
    fake.script = (len(prompt), list(b"abc") + [IM_END])
    chunks = list(fake.create_chat_completion(msgs, temperature=0, stream=True))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == "abc"
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_two_turns_reuse_cache():
    fake = FakeLlama(chat_format="chatml", add_bos=False, n_ctx=256)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"}]
    p1 = fake.tokenizer.tokenize(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\none<|im_end|>\n"
        "<|im_start|>assistant\n", special=True)
    fake.script = (len(p1), list(b"first") + [IM_END])
    r1 = fake.create_chat_completion(msgs, temperature=0)
    msgs += [r1["choices"][0]["message"], {"role": "user", "content": "two"}]
    fake.eval_batches.clear()
    r2 = fake.create_chat_completion(msgs, temperature=0, max_tokens=3)
    p2 = r2["usage"]["prompt_tokens"]
    # Everything up to the end of the first reply was cached.
    assert fake.eval_batches[0] == p2 - (len(p1) + 5)


def test_chat_response_format_of_unknown_type_is_refused():
    with pytest.raises(ValueError, match="response_format type 'yaml'"):
        FakeLlama(chat_format="chatml").create_chat_completion(
            [{"role": "user", "content": "x"}], response_format={"type": "yaml"})


# ---------------------------------------------------------------------------- stop filter


@pytest.mark.parametrize("pieces,stops,expect", [
    (["ab", "c<", "/s", ">tail"], ["</s>"], "abc"),
    (["<", "<", "/s>"], ["</s>"], "<"),
    (["xx", "y"], ["xyz"], "xxy"),
    (["a", "b", "c"], [], "abc"),
    (["hello wor", "ld"], ["world", "lo w"], "hel"),
])
def test_stop_filter(pieces, stops, expect):
    f = StopStringFilter(stops)
    out = "".join(f.push(p) for p in pieces) + ("" if f.stopped else f.flush())
    assert out == expect


def test_llama_cpp_python_options_at_neutral_values_are_accepted():
    from support.fake_llama import FakeLlama

    llm = FakeLlama()
    out = llm.create_completion("ab", max_tokens=3, temperature=0, tfs_z=1.0, mirostat_mode=0,
                                mirostat_tau=5.0, grammar=None, logits_processor=None)
    assert out["object"] == "text_completion"
    with pytest.raises(ValueError, match="mirostat_mode"):
        llm.create_completion("ab", max_tokens=3, mirostat_mode=2)
    with pytest.raises(TypeError, match="no_such_option"):
        llm.create_completion("ab", max_tokens=3, no_such_option=1)
    with pytest.raises(ValueError, match="grammar"):
        llm.create_chat_completion([{"role": "user", "content": "hi"}], grammar="root ::= x")
