"""One Llama shared by threads (issue 16): calls take turns, close() and n_threads changes
wait for an evaluation in progress, nothing crashes and no answer comes out wrong.

References: the same calls made one after another on a single thread (each prompt
starts with a different token, so every call evaluates its whole prompt in one batch
and the answers cannot depend on the order the calls ran in)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pyllama import Llama, PyllamaError

PROMPTS = ["hello world", "the quick brown fox", "one two three", "zebra crossing", "many small steps",
           "yesterday it rained", "blue green red", "numbers like seven"]


@pytest.fixture
def tiny(tiny_model_factory):
    return str(tiny_model_factory(context_length=128, n_layers=3))


def greedy(llm, prompt):
    return llm.create_completion(prompt, max_tokens=12, temperature=0)["choices"][0]["text"]


def test_threads_hammering_one_llama_get_the_sequential_answers(tiny):
    with Llama(tiny, n_ctx=128, n_threads=2) as llm:
        firsts = [llm.tokenize(p.encode())[0] for p in PROMPTS]
        assert len(set(firsts)) == len(firsts), "prompts must differ from their first token on"
        want = {p: greedy(llm, p) for p in PROMPTS}
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda p: (p, greedy(llm, p)), PROMPTS * 4))
        assert all(text == want[p] for p, text in got)

        def stream(p):
            return p, "".join(c["choices"][0]["text"] for c in llm.create_completion(
                p, max_tokens=12, temperature=0, stream=True))

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(stream, PROMPTS * 2))
        assert all(text == want[p] for p, text in got)


def test_a_stream_holds_the_model_until_closed_and_may_move_threads(tiny):
    with Llama(tiny, n_ctx=128, n_threads=1) as llm:
        want = greedy(llm, PROMPTS[0])
        it = llm.create_completion(PROMPTS[0], max_tokens=12, temperature=0, stream=True)
        parts = [next(it)["choices"][0]["text"]]
        other = []
        t = threading.Thread(target=lambda: other.append(greedy(llm, PROMPTS[1])))
        t.start()
        time.sleep(0.2)
        assert t.is_alive() and not other  # waits while the stream is open
        rest = []
        mover = threading.Thread(target=lambda: rest.extend(c["choices"][0]["text"] for c in it))
        mover.start()  # finished on another thread
        mover.join(timeout=30)
        t.join(timeout=30)
        assert "".join(parts + rest) == want
        assert other and other[0] == greedy(llm, PROMPTS[1])


def test_n_threads_changes_during_eval(tiny):
    with Llama(tiny, n_ctx=128, n_threads=2) as llm:
        stop = threading.Event()

        def flip():
            n = 1
            while not stop.is_set():
                llm.n_threads = n
                n = 3 - n

        t = threading.Thread(target=flip)
        t.start()
        try:
            for p in PROMPTS:
                llm.reset()
                llm.eval(llm.tokenize(p.encode()))
                assert np.isfinite(llm.logits).all()
        finally:
            stop.set()
            t.join()
        assert llm.n_threads in (1, 2)


@pytest.mark.subprocess
def test_close_during_eval_waits_or_raises(tiny):
    """In a child interpreter, so a crash is a failed test rather than a dead test run."""
    code = textwrap.dedent(f"""
        import threading, time
        from pyllama import Llama, PyllamaError
        outcomes = []
        for round in range(6):
            llm = Llama({tiny!r}, n_ctx=128, n_threads=2)
            # even rounds close between two chunks of the stream, for certain; odd ones race it
            # (a 100-token stream takes ~3 ms, less than a loaded machine's scheduling delays)
            between = round % 2 == 0
            first, go = threading.Event(), threading.Event()
            def work():
                try:
                    for i, chunk in enumerate(llm.create_completion("hello world", max_tokens=100, temperature=0,
                                                                    stream=True)):
                        if i == 0 and between:
                            first.set()
                            go.wait()
                    outcomes.append("finished")
                except PyllamaError as e:
                    assert "closed" in str(e), e
                    outcomes.append("closed")
                finally:
                    first.set()
            t = threading.Thread(target=work)
            t.start()
            if between:
                first.wait()
            else:
                time.sleep(0.002 * round)
            llm.close()
            go.set()
            t.join()
            try:
                llm.eval([1])
                raise SystemExit("eval after close did not raise")
            except PyllamaError:
                pass
        print(" ".join(outcomes))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    outcomes = r.stdout.split()
    assert len(outcomes) == 6 and "closed" in outcomes
    assert outcomes[0::2] == ["closed"] * 3, outcomes  # closed between two chunks: the stream's next one raises


def test_forks_share_weights_and_close_with_their_parent(tiny):
    llm = Llama(tiny, n_ctx=128, n_threads=1)
    fork = llm.fork(n_ctx=64)
    assert fork.n_ctx() == 64 and fork.n_vocab() == llm.n_vocab()
    assert greedy(fork, PROMPTS[2]) == greedy(llm, PROMPTS[2])
    with ThreadPoolExecutor(2) as pool:  # the parent and a fork used at once
        a, b = pool.map(lambda m: [greedy(m, p) for p in PROMPTS[:4]], (llm, fork))
    assert a == b
    llm.close()
    with pytest.raises(PyllamaError, match="closed"):
        fork.eval([1])


def test_bpe_tables_close_while_threads_encode():
    """A byte-level vocabulary's C tables are freed one way, as a Llama's are: close() (or
    collection) waits for the call in progress; every call either gives the answer it gives
    alone or, once closed, raises TokenizerError. Nothing reads freed memory."""
    import pickle

    from pyllama._bpe import BYTE_TO_CHAR, ByteLevelBpe
    from pyllama.errors import TokenizerError

    tokens = list(BYTE_TO_CHAR) + ["ab", "Ġab", "abc"]
    text = "ab abc xab " * 200
    for round in range(4):
        bpe = ByteLevelBpe(tokens, ["a b", "Ġ ab", "ab c"], "gpt2")
        want_ids, want_piece = bpe.encode(text), bpe.token_bytes(257)
        assert pickle.loads(pickle.dumps(bpe)).encode(text) == want_ids
        outcomes = []

        def work():
            try:
                while True:
                    assert bpe.encode(text) == want_ids and bpe.token_bytes(257) == want_piece
                    outcomes.append("ok")
            except TokenizerError as e:
                assert "closed" in str(e)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.002 * round)
        bpe.close()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        bpe.close()  # twice: nothing left to free
        for call in (lambda: bpe.encode("ab"), lambda: bpe.token_bytes(0), lambda: bpe.token_text(0),
                     lambda: pickle.dumps(bpe)):
            with pytest.raises(TokenizerError, match="closed"):
                call()
