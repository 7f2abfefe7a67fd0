"""Gemma 3 270M (gemma-3-270m-q4_k_m.gguf: gemma3, Q5_0/Q4_K/Q6_K/Q8_0) against recordings of llama.cpp.

Two recordings, each with the script that made it (llama.cpp built from the llama-cpp-python 0.3.36
sdist; nothing of pyllama's engine involved):
- tests/data/reference_greedy_gemma-3-270m.json (tests/recorders/record_gemma_reference.py, llama-server):
  for five prompts (token ids), llama.cpp's greedy continuation of 32 tokens and its top-5
  log-probabilities at every step (their differences are logit differences).
- tests/data/perplexity_reference_gemma-3-270m-window.json (tests/recorders/record_perplexity_reference.py
  -c 1024 --chunks 3 --top-logits): llama-perplexity's 1024-token windows of the Pride and Prejudice
  text, and for each scored position (512..1022, where the 512-position sliding window of five layers
  in six no longer reaches the start) the top-5 token ids and their distance below the largest logit.

pyllama must
- pick llama.cpp's top token, teacher-forced, wherever llama.cpp's top-1 leads its top-2 by more
  than MARGIN = 0.5 logits (on the text windows, and along llama.cpp's own greedy continuations);
- continue each prompt greedily with llama.cpp's tokens until the two part, and part only at a step
  where llama.cpp's logit for pyllama's token is within MARGIN of its best (at a near-tie the two
  engines may legitimately part: they round activations differently, pyllama to 8 bits per 32
  values, llama.cpp per 256 for K-quants); the default model's criterion (tests/test_forward.py).
Slow; skips, saying why, when the model file (python -m pyllama.models fetch gemma-3-270m-q4_k_m) or
a recording is absent, or the file is not the one recorded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pyllama.models import sha256_file

DATA = Path(__file__).resolve().parent / "data"
NAME = "gemma-3-270m-q4_k_m"
GREEDY = DATA / "reference_greedy_gemma-3-270m.json"
WINDOWS = DATA / "perplexity_reference_gemma-3-270m-window.json"
MARGIN = 0.5
THREADS = 2
PIECE = 128  # tokens evaluated per call when logits are kept (Gemma's 262,144 logits a token add up)


def _recording(path: Path, key: str) -> dict:
    if not path.exists():
        pytest.skip(f"no llama.cpp recording {path.name} (see tests/recorders/record_gemma_reference.py)")
    with open(path) as fh:
        ref = json.load(fh)
    if key not in ref:
        pytest.skip(f"{path.name} has no '{key}' (re-record it with --top-logits)")
    return ref


def _model_file(ref: dict) -> str:
    from pyllama import models

    path = models.cached_path(NAME)
    if not os.path.exists(path) and NAME in os.environ.get("PYLLAMA_TEST_FETCH", "").split(","):
        path = models.fetch(NAME)
    if not os.path.exists(path):
        pytest.skip(f"{NAME} is not downloaded ({path}); python -m pyllama.models fetch {NAME}, "
                    f"or PYLLAMA_TEST_FETCH={NAME} to have the tests fetch it")
    if sha256_file(str(path)) != ref["model"]["sha256"]:
        pytest.skip(f"{path} is not the file the recording was made with")
    return str(path)


@pytest.fixture(scope="module")
def greedy_ref():
    return _recording(GREEDY, "runs")


@pytest.fixture(scope="module")
def llm():
    from pyllama import Llama

    recorded = next((p for p in (GREEDY, WINDOWS) if p.exists()), None)
    if recorded is None:
        pytest.skip(f"no llama.cpp recording for {NAME} ({GREEDY.name}, {WINDOWS.name})")
    model = Llama(model_path=_model_file(json.loads(recorded.read_text())), n_ctx=1024, n_batch=1024,
                  n_threads=THREADS, verbose=False)
    yield model
    model.close()


def _lead(top: list) -> float:
    """llama.cpp's top-1 minus top-2 (log-probability differences are logit differences)."""
    return top[0][1] - top[1][1]


@pytest.mark.slow
def test_prompts_tokenize_as_in_llama_cpp(llm, greedy_ref):
    for text, run in zip(greedy_ref["prompts_text"], greedy_ref["runs"]):
        assert llm.tokenize(text, add_bos=True, special=True) == run["prompt"], text


@pytest.mark.slow
def test_greedy_continuation_matches_llama_cpp(llm, greedy_ref):
    """Free-running greedy decoding equals llama.cpp's until the two part, and they part only
    where llama.cpp's logit for pyllama's token is within MARGIN of its best (the default
    model's criterion, tests/test_forward.py): so always past llama.cpp's first near-tie."""
    agreed = []
    for run in greedy_ref["runs"]:
        llm.reset()
        llm.eval(run["prompt"])
        step = 0
        for step, (want, top) in enumerate(zip(run["tokens"], run["top_logprob"])):
            got = int(np.argmax(llm.logits))
            if got != want:
                theirs = dict((tid, lp) for tid, lp in top)
                assert got in theirs, (f"prompt {run['prompt']}: step {step}: pyllama {got}, not in llama.cpp's "
                                       f"top-5 {top}")
                gap = top[0][1] - theirs[got]
                assert gap < MARGIN, (f"prompt {run['prompt']}: step {step}: pyllama {got}, llama.cpp {want}; "
                                      f"llama.cpp's gap {gap:.3f} >= {MARGIN}")
                break
            llm.eval([got])
        else:
            step = len(run["tokens"])
        agreed.append(step)
    print(f"\ngreedy: steps equal to llama.cpp's before parting, per prompt: {agreed} of {greedy_ref['n_new']}")


@pytest.mark.slow
def test_teacher_forced_greedy_steps_match_llama_cpp(llm, greedy_ref):
    """Given llama.cpp's previous tokens, every step where llama.cpp is sure has its top token."""
    checked, wrong = 0, []
    for run in greedy_ref["runs"]:
        llm.reset()
        llm.eval(list(run["prompt"]) + list(run["tokens"][:-1]), logits_all=True)
        ours = np.asarray(llm.eval_logits)[len(run["prompt"]) - 1:].argmax(axis=1)
        for step, (got, want, top) in enumerate(zip(ours.tolist(), run["tokens"], run["top_logprob"])):
            if _lead(top) > MARGIN:
                checked += 1
                if got != want:
                    wrong.append(f"prompt {run['prompt'][:6]}...: step {step}: pyllama {got}, llama.cpp {want}")
    print(f"\nteacher-forced greedy steps: {len(wrong)} of {checked} confident ones differ")
    assert checked >= 100, f"only {checked} confident steps"
    assert not wrong, f"{len(wrong)} of {checked} confident steps differ:\n" + "\n".join(wrong[:10])


@pytest.fixture(scope="module")
def windows(llm):
    """pyllama's logits over llama-perplexity's windows (BOS first, as llama-perplexity does): per
    chunk and scored position, our argmax and our top-1 minus top-2 gap for llama.cpp's two best."""
    ref = _recording(WINDOWS, "top_logits")
    top = ref["top_logits"]
    n_ctx, first = top["n_ctx"], top["first_scored"]
    out = []
    for tokens, chunk in zip(top["tokens"], top["chunks"]):
        tokens = [llm.token_bos()] + list(tokens[1:])
        llm.reset()
        llm.eval(tokens[:first])
        argmax, gaps = [], []
        for start in range(first, n_ctx, PIECE):
            llm.eval(tokens[start:start + PIECE], logits_all=True)
            rows = np.asarray(llm.eval_logits)
            for r in range(len(rows)):
                p = start + r - first  # index among the scored positions first..n_ctx-2
                if p < len(chunk["top_ids"]):
                    ids = chunk["top_ids"][p]
                    argmax.append(int(rows[r].argmax()))
                    gaps.append(float(rows[r, ids[0]] - rows[r, ids[1]]))
        out.append((argmax, gaps))
    return ref, out


@pytest.mark.slow
def test_teacher_forced_top1_on_text_where_llama_cpp_is_sure(windows):
    ref, ours = windows
    top = ref["top_logits"]
    checked, wrong = 0, []
    for c, (chunk, (argmax, _)) in enumerate(zip(top["chunks"], ours)):
        assert len(argmax) == len(chunk["top_ids"])
        for p, (ids, below) in enumerate(zip(chunk["top_ids"], chunk["top_below"])):
            if below[1] <= MARGIN:
                continue
            checked += 1
            if argmax[p] != ids[0]:
                wrong.append(f"chunk {c} position {top['first_scored'] + p}: pyllama {argmax[p]}, "
                             f"llama.cpp {ids[0]} (lead {below[1]:.3f})")
    print(f"\ntop-1 differs at {len(wrong)} of {checked} positions where llama.cpp leads by > {MARGIN}")
    assert checked > 300, f"only {checked} positions with a lead over {MARGIN}"
    assert not wrong, f"{len(wrong)} of {checked} confident positions differ:\n" + "\n".join(wrong[:10])


@pytest.mark.slow
def test_top_logit_gaps_close_to_llama_cpp(windows):
    """Beyond the argmax: llama.cpp's top-1 minus top-2 gap, measured in pyllama's logits, agrees with
    llama.cpp's own (median and worst), so the logits are close and not only their order.
    Measured (2026-12-07): median 0.103, 99th percentile 0.51, max 1.00 over 1533 positions; a wrong
    kernel or a misplaced norm moves logits by O(1) everywhere."""
    ref, ours = windows
    diffs = []
    for chunk, (_, gaps) in zip(ref["top_logits"]["chunks"], ours):
        for below, gap in zip(chunk["top_below"], gaps):
            if below[1] > 0:
                diffs.append(gap - below[1])
    diffs = np.abs(np.array(diffs))
    print(f"\n|top-1 - top-2 gap, pyllama - llama.cpp| over {diffs.size} positions: median "
          f"{np.median(diffs):.4f}, 99th percentile {np.percentile(diffs, 99):.4f}, max {diffs.max():.4f}")
    assert np.median(diffs) < 0.15 and diffs.max() < 1.5, (
        f"|gap difference| median {np.median(diffs):.3f}, max {diffs.max():.3f}")
