"""pyllama as a drop-in for llama-cpp-python: arguments checked at the Python boundary
(issue 18, "Callers"), the constructor keywords and methods llama-cpp-python users call,
save_state / load_state, logits_all, from_pretrained and text_offset.

References: the numpy forward pass (tests/support/reference.py) for logits_all rows; the
`gguf` package's reading of the vocabulary for token_nl; llama-cpp-python's documented
text_offset rule (len(prompt) + len(detokenize(completion[:i]).decode("utf-8", "ignore")),
its Llama._create_completion) recomputed here from the token ids.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from support import reference
from pyllama import FetchError, Llama
from pyllama.state import LlamaState

TOKENS = [5, 17, 3, 42, 9, 28, 11, 7, 30, 2, 19, 23]


def fresh(path, **kw):
    kw.setdefault("n_ctx", 64)
    kw.setdefault("n_threads", 1)
    return Llama(model_path=path, **kw)


# ------------------------------------------------------------------ callers


@pytest.mark.parametrize("tokens,error,match", [
    (np.array([2**32 + 5]), ValueError, "4294967301 is outside the vocabulary"),  # not token 5
    (np.array([5, 2**40], dtype=np.uint64), ValueError, "outside the vocabulary"),
    ([2**70], ValueError, "outside the vocabulary"),
    ([1.5], TypeError, "integer token ids"),  # not token 1
    (np.array([1.0, 2.0]), TypeError, "integer token ids"),
    ([True, False], TypeError, "integer token ids"),
    (["5"], TypeError, "integer token ids"),
    (list(range(10)) + [1.5], TypeError, "integer token ids"),
])
def test_eval_refuses_ids_numpy_would_mangle(tiny_path, tokens, error, match):
    llm = fresh(tiny_path)
    with pytest.raises(error, match=match):
        llm.eval(tokens)
    assert llm.n_tokens == 0 and llm.input_ids == []


def test_prompt_token_lists_are_integers(tiny_path):
    llm = fresh(tiny_path)
    with pytest.raises(TypeError, match="prompt"):
        llm.create_completion([1.5, 2], max_tokens=1)
    with pytest.raises(TypeError, match="tokens"):
        next(llm.generate([2, True]))
    out = llm.create_completion(np.array([1, 2], dtype=np.int16), max_tokens=1, temperature=0)
    assert out["usage"]["prompt_tokens"] == 2


def test_eval_takes_numpy_integer_arrays_of_any_width(tiny_path):
    a, b = fresh(tiny_path), fresh(tiny_path)
    a.eval(TOKENS)
    b.eval(np.array(TOKENS, dtype=np.uint16))
    assert b.input_ids == TOKENS
    np.testing.assert_array_equal(a.logits, b.logits)


@pytest.mark.parametrize("kw,error", [
    (dict(n_ctx=True), TypeError), (dict(n_ctx=64.0), TypeError), (dict(n_batch=True), TypeError),
    (dict(n_threads=2.5), TypeError), (dict(n_threads=False), TypeError), (dict(n_ubatch=0), ValueError),
    (dict(n_threads_batch=0), ValueError), (dict(n_gpu_layers="all"), TypeError),
])
def test_constructor_integers_are_integers(tiny_path, kw, error):
    name = next(iter(kw))
    with pytest.raises(error, match=name):
        fresh(tiny_path, **kw)


@pytest.mark.parametrize("kw,error,name", [
    (dict(frequency_penalty=float("nan")), ValueError, "frequency_penalty"),
    (dict(presence_penalty=float("inf")), ValueError, "presence_penalty"),
    (dict(repeat_penalty=float("nan")), ValueError, "repeat_penalty"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(top_k=1.5), TypeError, "top_k"),
    (dict(top_p=None), TypeError, "top_p"),
    (dict(max_tokens=2.5), TypeError, "max_tokens"),
    (dict(logprobs=True), TypeError, "logprobs"),
    (dict(logit_bias=[1, 2]), TypeError, "logit_bias"),
])
def test_sampling_arguments_name_themselves(tiny_path, kw, error, name):
    llm = fresh(tiny_path)
    with pytest.raises(error, match=name) as info:
        llm.create_completion([1, 2, 3], **{"max_tokens": 2, **kw})
    assert "model" not in str(info.value)  # never blamed on the model's numbers


def test_huge_top_k_keeps_the_whole_vocabulary(tiny_path):
    """top_k=10**12 was a raw OverflowError from the binding; it means what top_k >= n_vocab means."""
    llm = fresh(tiny_path)

    def run(top_k):
        return llm.create_completion([1, 2, 3], max_tokens=12, temperature=1.0, top_k=top_k, top_p=1.0,
                                     min_p=0.0, seed=7)["choices"][0]["text"]
    assert run(10**12) == run(0) == run(llm.n_vocab())


def test_thread_count_is_capped_with_a_warning(tiny_path, capfd):
    from pyllama.llama import thread_cap

    llm = fresh(tiny_path, n_threads=100_000)
    cap = thread_cap()
    assert cap == max(64, 4 * os.cpu_count())
    assert llm.n_threads == cap
    assert f"using {cap}" in capfd.readouterr().err
    llm.n_threads = 10**9
    assert llm.n_threads == cap
    llm.eval(TOKENS[:3])


@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ulimit -v and OpenMP's thread stacks")
def test_thousand_threads_under_a_memory_limit(tiny_path):
    """n_threads=1000 under `ulimit -v` ended the process inside the OpenMP runtime (each
    thread reserves a stack); the capped count runs."""
    script = textwrap.dedent(f"""
        from pyllama import Llama
        llm = Llama(model_path={tiny_path!r}, n_ctx=64, n_threads=1000)
        out = llm.create_completion([1, 2, 3], max_tokens=4, temperature=0)
        print("ok", llm.n_threads, out["usage"]["completion_tokens"] + len(out["choices"][0]["text"]) >= 0)
    """)
    from pyllama.llama import thread_cap

    if thread_cap() >= 1000:
        pytest.skip("this machine has enough CPUs for 1000 threads")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
    env["OPENBLAS_NUM_THREADS"] = "1"
    # room for the interpreter and the capped team (a stack of up to 8 MiB each), not for 1000 threads
    limit_kib = 1_500_000 + thread_cap() * 10_000
    proc = subprocess.run(["bash", "-c", f'ulimit -v {limit_kib} && exec "{sys.executable}" -c "$0"', script],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok ") and "warning: n_threads=1000" in proc.stderr


# ------------------------------------------------------------------ constructor keywords


def test_llama_cpp_python_keywords_are_accepted(tiny_path):
    llm = fresh(tiny_path, n_gpu_layers=-1, split_mode=1, main_gpu=0, tensor_split=None, offload_kqv=True,
                flash_attn=True, numa=False, use_mlock=False, vocab_only=False, kv_overrides=None,
                rope_scaling_type=-1, pooling_type=-1, rope_freq_base=0.0, rope_freq_scale=0.0,
                yarn_ext_factor=-1.0, yarn_attn_factor=1.0, yarn_beta_fast=32.0, yarn_beta_slow=1.0,
                yarn_orig_ctx=0, lora_base=None, lora_path=None, lora_scale=1.0,
                chat_handler=None, draft_model=None, tokenizer=None, spm_infill=False, last_n_tokens_size=64,
                no_perf=False, seed=0xFFFFFFFF, verbose=False)
    llm.eval(TOKENS)
    ref = fresh(tiny_path)
    ref.eval(TOKENS)
    np.testing.assert_array_equal(llm.logits, ref.logits)


@pytest.mark.parametrize("kw,match", [
    (dict(vocab_only=True), "vocab_only"),
    (dict(lora_path="x.gguf"), "lora_path"), (dict(kv_overrides={"a": 1}), "kv_overrides"),
    (dict(rope_freq_scale=0.5), "rope_freq_scale"), (dict(rope_freq_base=-5.0), "rope_freq_base"),
    (dict(rope_freq_base=float("nan")), "rope_freq_base"), (dict(rope_freq_base=1.0), "rope_freq_base"), (dict(yarn_ext_factor=1.0), "yarn_ext_factor"),
    (dict(chat_format="klingon"), "chat_format"), (dict(pooling_type=1), "pooling_type"),
])
def test_unsupported_keywords_are_refused_by_name(tiny_path, kw, match):
    with pytest.raises(ValueError, match=match):
        fresh(tiny_path, **kw)


def test_rope_freq_base_replaces_the_files(tiny_model_factory):
    """A file written with base 10000 run at rope_freq_base=1e6 gives the logits of the same
    weights written with base 1e6 (and of the numpy reference at 1e6)."""
    low, high = str(tiny_model_factory(rope_base=10000.0)), str(tiny_model_factory(rope_base=1e6))
    a = fresh(low, rope_freq_base=1e6, type_k="f32", type_v="f32")
    b = fresh(high, type_k="f32", type_v="f32")
    c = fresh(low, type_k="f32", type_v="f32")
    for llm in (a, b, c):
        llm.eval(TOKENS)
    assert a.config["rope_base"] == 1e6
    np.testing.assert_array_equal(a.logits, b.logits)
    assert reference.rel_err(c.logits, a.logits) > 1e-3  # the base matters for these tokens
    expect = reference.forward(reference.ReferenceModel(high), TOKENS)[-1]
    assert reference.rel_err(a.logits, expect) < 1e-4


def test_unknown_keyword_is_a_type_error(tiny_path):
    with pytest.raises(TypeError, match="n_ctxx"):
        fresh(tiny_path, n_ctxx=16)


def test_f16_kv_false_is_an_f32_cache(tiny_path):
    a, b = fresh(tiny_path, f16_kv=False), fresh(tiny_path, type_k="f32", type_v="f32")
    c = fresh(tiny_path)
    for llm in (a, b, c):
        llm.eval(TOKENS)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert not np.array_equal(a.logits, c.logits)  # F16 rounding shows


def test_n_ubatch_bounds_the_batch_and_threads_batch_is_used(tiny_path):
    llm = fresh(tiny_path, n_batch=64, n_ubatch=4, n_threads=1, n_threads_batch=2)
    assert llm.n_batch == 4 and llm.n_threads_batch == 2 and llm.n_threads == 1
    llm.eval(TOKENS)
    llm.eval([1])
    ref = fresh(tiny_path)
    ref.eval(TOKENS + [1])
    np.testing.assert_allclose(llm.logits, ref.logits, rtol=1e-5, atol=1e-5)
    follows = fresh(tiny_path, n_threads=1)
    follows.n_threads = 2  # without n_threads_batch, prompts follow n_threads (bench -t 1,2 relies on it)
    assert follows.n_threads_batch == 2


def test_use_mlock_locks_or_warns(tiny_path, capfd):
    llm = fresh(tiny_path, use_mlock=True)
    llm.eval(TOKENS[:2])
    err = capfd.readouterr().err
    assert err == "" or "use_mlock" in err


def test_small_methods(tiny_path, tiny_model_factory):
    from gguf import GGUFReader

    llm = fresh(tiny_path)
    assert llm.n_embd() == 64  # TinySpec.dim
    assert llm.tokenizer() is llm.tokenizer
    assert llm.tokenizer().encode("hi") == llm.tokenize(b"hi")
    r = GGUFReader(tiny_path)
    field = r.fields["tokenizer.ggml.tokens"]
    vocab = [bytes(field.parts[i]).decode() for i in field.data]
    assert llm.token_nl() == vocab.index("\u010a")  # GPT-2's byte-level form of "\n"


# ------------------------------------------------------------------ logits_all


def test_logits_all_rows_match_the_reference(tiny_path):
    """logits_all=True at construction: eval_logits has a row per cached position, across calls,
    each the numpy reference's logits at that position."""
    llm = fresh(tiny_path, logits_all=True, type_k="f32", type_v="f32")
    llm.eval(TOKENS[:5])
    llm.eval(TOKENS[5:])
    rows = llm.eval_logits
    assert rows.shape == (len(TOKENS), llm.n_vocab())
    expect = reference.forward(reference.ReferenceModel(tiny_path), TOKENS)
    assert reference.rel_err(rows, expect) < 1e-4
    np.testing.assert_array_equal(llm.logits, rows[-1])
    llm.truncate(3)
    assert llm.eval_logits.shape[0] == 3


# ------------------------------------------------------------------ save_state / load_state


def test_state_round_trip_continues_exactly(tiny_path):
    llm = fresh(tiny_path)
    llm.eval(TOKENS[:7])
    state = llm.save_state()
    assert state.n_tokens == 7 and list(state.input_ids) == TOKENS[:7]
    at_save = llm.logits.copy()
    llm.eval(TOKENS[7:])
    after = llm.logits.copy()

    llm.reset()
    llm.eval([1, 2, 3, 4])  # a different sequence in the cache
    llm.load_state(state)
    assert llm.n_tokens == 7 and llm.input_ids == TOKENS[:7]
    np.testing.assert_array_equal(llm.logits, at_save)
    llm.eval(TOKENS[7:])
    np.testing.assert_array_equal(llm.logits, after)

    other = fresh(tiny_path, n_ctx=32)  # another context of the same model, shorter
    other.load_state(pickle.loads(pickle.dumps(state)))
    other.eval(TOKENS[7:])
    np.testing.assert_array_equal(other.logits, after)
    whole = fresh(tiny_path)
    whole.eval(TOKENS)
    np.testing.assert_allclose(other.logits, whole.logits, rtol=1e-5, atol=1e-5)


def test_state_of_a_logits_all_model_keeps_its_rows(tiny_path):
    llm = fresh(tiny_path, logits_all=True)
    llm.eval(TOKENS[:5])
    state = llm.save_state()
    rows = llm.eval_logits.copy()
    llm.eval(TOKENS[5:])
    llm.load_state(state)
    assert state.scores.shape == (5, llm.n_vocab())
    np.testing.assert_array_equal(llm.eval_logits, rows)
    np.testing.assert_array_equal(llm.logits, rows[-1])


def test_bad_states_are_refused(tiny_path, tiny_model_factory):
    llm = fresh(tiny_path)
    llm.eval(TOKENS[:6])
    state = llm.save_state()

    def variant(**kw):
        fields = dict(input_ids=state.input_ids, scores=state.scores, n_tokens=state.n_tokens,
                      llama_state=state.llama_state, llama_state_size=state.llama_state_size, seed=state.seed)
        fields.update(kw)
        return LlamaState(**fields)

    bad = [
        (variant(llama_state=state.llama_state[:-1]), "bytes"),
        (variant(llama_state=b"junk" * 10), "magic"),
        (variant(n_tokens=5, input_ids=state.input_ids[:5]), "tokens"),
        (variant(n_tokens=6, input_ids=state.input_ids[:5]), "input_ids"),
        (variant(n_tokens=100), "n_tokens"),
        (variant(llama_state="text"), "bytes"),
    ]
    for s, match in bad:
        with pytest.raises((ValueError, TypeError), match=match):
            llm.load_state(s)
    with pytest.raises(ValueError, match="key/value types"):
        fresh(tiny_path, type_k="f32").load_state(state)
    with pytest.raises(ValueError, match="layers"):
        Llama(model_path=str(tiny_model_factory(n_layers=3)), n_ctx=64).load_state(state)
    with pytest.raises(TypeError, match="LlamaState"):
        llm.load_state({"n_tokens": 1})
    assert llm.n_tokens == 6  # nothing half-applied


# ------------------------------------------------------------------ from_pretrained


def test_from_pretrained_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(FetchError, match="pip install huggingface_hub"):
        Llama.from_pretrained("someone/model-GGUF", "*Q4_K_M.gguf")


@pytest.mark.subprocess
def test_from_pretrained_offline_is_a_fetch_error(tmp_path):
    pytest.importorskip("huggingface_hub", reason="from_pretrained needs huggingface_hub")
    script = textwrap.dedent("""
        from pyllama import Llama, FetchError
        for name in ("model.Q4_K_M.gguf", "*Q4_K_M.gguf"):
            try:
                Llama.from_pretrained("pyllama-test/no-such-repo-GGUF", name)
            except FetchError as e:
                print("FetchError", "offline?" in str(e))
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["FetchError True"] * 2


def test_from_pretrained_matches_one_file_and_passes_keywords(tiny_path, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        list_repo_files=lambda repo_id: ["README.md", "m.Q4_K_M.gguf", "m.Q8_0.gguf"],
        hf_hub_download=lambda **kw: calls.append(kw) or tiny_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    llm = Llama.from_pretrained("a/b", "*Q4_K_M.gguf", n_ctx=32, n_threads=1)
    assert calls[0]["repo_id"] == "a/b" and calls[0]["filename"] == "m.Q4_K_M.gguf"
    assert llm.n_ctx() == 32
    with pytest.raises(ValueError, match="matches 2 files"):
        Llama.from_pretrained("a/b", "*.gguf")
    with pytest.raises(ValueError, match="matches no file"):
        Llama.from_pretrained("a/b", "*Q2_K.gguf")


def test_from_pretrained_glob_offline_uses_the_cached_snapshot(tiny_path, tmp_path, monkeypatch):
    """Offline, a glob is matched against the files of an earlier download (hub cache)."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "m.Q4_K_M.gguf").symlink_to(tiny_path)

    def offline(*a, **kw):
        raise ConnectionError("Name or service not known")

    calls = []

    def snapshot_download(repo_id, allow_patterns, local_files_only, cache_dir):
        calls.append((repo_id, allow_patterns, local_files_only))
        return str(snapshot)
    fake = types.SimpleNamespace(list_repo_files=offline, hf_hub_download=offline,
                                 snapshot_download=snapshot_download)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    llm = Llama.from_pretrained("a/b", "*Q4_K_M.gguf", n_ctx=16, n_threads=1)
    assert llm.model_path == str(snapshot / "m.Q4_K_M.gguf")
    assert calls == [("a/b", ["*Q4_K_M.gguf"], True)]
    with pytest.raises(FetchError, match="offline"):
        Llama.from_pretrained("a/b", "*Q8_0.gguf")  # not in the snapshot


# ------------------------------------------------------------------ text_offset


def _llama_cpp_python_offsets(llm, prompt: str, completion_ids: list) -> list:
    """llama-cpp-python's rule for a non-echoed string prompt (Llama._create_completion)."""
    return [len(prompt) + len(llm.detokenize(completion_ids[:i]).decode("utf-8", errors="ignore"))
            for i in range(len(completion_ids))]


@pytest.mark.parametrize("stream", [False, True])
def test_text_offset_as_llama_cpp_python_counts(tiny_path, stream):
    llm = fresh(tiny_path)
    prompt = "hello world"
    kw = dict(max_tokens=10, temperature=0, logprobs=1, logit_bias={llm.token_eos(): -100.0})
    out = llm.create_completion(prompt, stream=stream, **kw)
    if stream:
        offsets = [o for c in out if c["choices"][0]["logprobs"] for o in c["choices"][0]["logprobs"]["text_offset"]]
    else:
        offsets = out["choices"][0]["logprobs"]["text_offset"]
    prompt_ids = llm.tokenize(prompt)
    gen = llm.generate(prompt_ids, temp=0, logit_bias={llm.token_eos(): -100.0})
    ids = [next(gen) for _ in range(10)]
    gen.close()
    assert offsets == _llama_cpp_python_offsets(llm, prompt, ids)


@pytest.mark.slow
def test_text_offset_points_into_the_text_on_the_default_model(default_model_path):
    llm = Llama(model_path=default_model_path, n_ctx=128, n_threads=2)
    prompt = "The capital of France is"
    r = llm.create_completion(prompt, max_tokens=8, temperature=0, logprobs=1)
    lp, text = r["choices"][0]["logprobs"], r["choices"][0]["text"]
    for tok, at in zip(lp["tokens"], lp["text_offset"]):
        assert (prompt + text)[at:].startswith(tok)
    r = llm.create_completion(prompt, max_tokens=4, temperature=0, logprobs=0, echo=True)
    lp, text = r["choices"][0]["logprobs"], r["choices"][0]["text"]
    assert lp["text_offset"][0] == 0 and lp["token_logprobs"][0] is None
    for tok, at in zip(lp["tokens"], lp["text_offset"]):
        assert text[at:].startswith(tok)
    assert llm.token_nl() == llm.tokenize("\n", add_bos=False)[0]
