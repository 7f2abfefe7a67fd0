"""Generation and chat on the real default model (SmolLM2-135M-Instruct Q4_1).

One model instance for the module; prompts are short and max_tokens small.
The "Paris" expectations were checked against llama.cpp (llama-cpp-python
0.3.x, same file, greedy): with the system prompt below both engines answer
"The capital of France is Paris." (Without a system prompt this quantized
135M model rambles in French on both engines, so the test states the prompt.)
"""
import pytest

from pyllama import ContextOverflowError, Llama

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful assistant. Answer in one sentence."
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def llm(default_model_path):
    model = Llama(model_path=default_model_path, n_ctx=256, verbose=False)
    yield model
    model.close()


class EvalSpy:
    """Counts the tokens a model evaluates."""

    def __init__(self, llm):
        self.llm, self.batches = llm, []
        self._eval = llm.eval

    def __enter__(self):
        def spy(tokens, *a, **k):
            self.batches.append(len(tokens))
            return self._eval(tokens, *a, **k)
        self.llm.eval = spy
        return self

    def __exit__(self, *exc):
        del self.llm.eval

    @property
    def total(self):
        return sum(self.batches)


def first_turn():
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


def test_greedy_chat_knows_paris(llm):
    r = llm.create_chat_completion(first_turn(), temperature=0, max_tokens=16)
    (choice,) = r["choices"]
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"  # ended its turn with <|im_end|>
    assert "<|im_end|>" not in choice["message"]["content"]
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]


def test_two_turn_chat_reuses_the_cache(llm):
    messages = first_turn()
    r1 = llm.create_chat_completion(messages, temperature=0, max_tokens=16)
    n1 = r1["usage"]["prompt_tokens"] + r1["usage"]["completion_tokens"]
    messages += [r1["choices"][0]["message"], {"role": "user", "content": "And of Italy?"}]
    with EvalSpy(llm) as spy:
        r2 = llm.create_chat_completion(messages, temperature=0, max_tokens=4)
    p2 = r2["usage"]["prompt_tokens"]
    new_prompt_tokens = spy.batches[0]
    # The second prompt re-reads at most a couple of tokens of the first exchange
    # (its reply re-tokenized, the end-of-turn marker) plus the new user turn.
    assert new_prompt_tokens <= p2 - n1 + 3
    assert new_prompt_tokens < p2 / 2
    assert spy.batches[1:] == [1] * (len(spy.batches) - 1)  # one eval per generated token


def test_stop_strings_and_max_tokens(llm):
    prompt = "The capital of France is"
    r = llm.create_completion(prompt, temperature=0, max_tokens=3)
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 3
    full = llm.create_completion(prompt, temperature=0, max_tokens=8)["choices"][0]["text"]
    assert full.startswith(r["choices"][0]["text"])
    assert "Paris." in full
    cut = full.index("Paris.") + len("Pari")
    # a stop string that starts inside one token and ends in the next
    stop = full[cut:cut + 3]
    chunks = list(llm.create_completion(prompt, temperature=0, max_tokens=8, stop=[stop], stream=True))
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == full[:cut]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    r = llm.create_completion(prompt, temperature=0, max_tokens=8, stop=["Paris"])
    assert r["choices"][0]["text"] == full[:full.index("Paris")]


def test_seed_reproducibility(llm):
    def run(seed):
        # From an empty cache each time: batched and one-token evaluation of the same
        # prompt need not agree to the last bit, and at temperature 1 that can show.
        llm.reset()
        r = llm.create_completion("Once upon a time", temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                  max_tokens=6, seed=seed)
        return r["choices"][0]["text"]

    a = run(1234)
    assert run(1234) == a
    assert len({a, run(1), run(2)}) > 1


def test_context_shift_and_error_on_real_model(default_model_path):
    with Llama(model_path=default_model_path, n_ctx=12, verbose=False) as small:
        no_eot = {t: -100.0 for t in small.tokenizer.eot_ids}
        r = small.create_completion("Once upon a time", temperature=0, max_tokens=14, logit_bias=no_eot)
        assert r["usage"]["completion_tokens"] == 14
        assert r["choices"][0]["finish_reason"] == "length"
        assert small.n_tokens <= 12
        small.context_overflow = "error"
        with pytest.raises(ContextOverflowError, match="n_ctx"):
            small.create_completion("Once upon a time", temperature=0, max_tokens=14, logit_bias=no_eot)
        with pytest.raises(ContextOverflowError, match="n_ctx=12"):
            small.create_completion("word " * 20)


def test_chat_prompt_matches_llama_cpp_python(llm, default_model_path):
    """The rendered and tokenized chat prompt equals llama-cpp-python's for the file's template."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the reference here")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from pyllama.chat_format import format_chat

    ref = llama_cpp.Llama(model_path=default_model_path, vocab_only=True, verbose=False)
    tok = llm.tokenizer
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"],
                                    eos_token=tok.token_text(tok.eos_id),
                                    bos_token=tok.token_text(tok.bos_id))
    conversations = [
        [{"role": "user", "content": QUESTION}],
        first_turn() + [{"role": "assistant", "content": "Paris."},
                        {"role": "user", "content": "Ünïcode & <tags>, 123 numbers\n\n  spaced"}],
    ]
    for messages in conversations:
        expected = formatter(messages=messages)
        ref_tokens = ref.tokenize(expected.prompt.encode("utf-8"),
                                  add_bos=not expected.added_special, special=True)
        ours = format_chat(llm, messages)
        assert ours.text == expected.prompt
        assert ours.tokens == ref_tokens
