"""The real K-quant files (Qwen2.5-Coder 0.5B and 1.5B, qwen2 architecture) against llama.cpp.

The references, tests/data/perplexity_reference_<name>.json, are llama.cpp's `llama-perplexity`
on tests/data/perplexity_pride_and_prejudice.txt with 512-token windows, recorded by
tests/recorders/record_perplexity_reference.py (-m NAME -c 512 --chunks N --top-logits): the perplexity,
the token ids it scored, and for every scored position the ids of its largest logits and how far
each lies below the largest. pyllama runs the same windows through pyllama.perplexity's own code
(the `python -m pyllama.perplexity` path) and must
- tokenize the text into the same ids,
- give a perplexity within 1% of llama.cpp's,
- pick llama.cpp's top token at every position where llama.cpp's top-1 leads its top-2 by more
  than 0.5 (closer calls may legitimately flip: the two engines round activations differently).
The 0.5B file mixes Q5_0, Q8_0, Q4_K and Q6_K; the 1.5B file is Q4_K and Q6_K. Each test skips,
saying why, when its model file (python -m pyllama.models fetch NAME) or its recording is absent;
with PYLLAMA_TEST_FETCH=name[,name] (set by .ci/run for the 0.5B file) a missing file is fetched.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pyllama.models import sha256_file

DATA = Path(__file__).resolve().parent / "data"
TEXT = DATA / "perplexity_pride_and_prejudice.txt"
MODELS = ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
MARGIN = 0.5
THREADS = 2


def _reference(name: str) -> dict:
    path = DATA / f"perplexity_reference_{name}.json"
    if not path.exists():
        pytest.skip(f"no llama.cpp recording for {name} ({path.name}; tests/recorders/record_perplexity_reference.py "
                    f"-m {name} -c 512 --chunks N --top-logits makes it)")
    with open(path) as fh:
        return json.load(fh)


def _model_file(name: str, ref: dict) -> str:
    from pyllama import models

    path = models.cached_path(name)
    if not os.path.exists(path) and name in os.environ.get("PYLLAMA_TEST_FETCH", "").split(","):
        path = models.fetch(name)  # CI sets PYLLAMA_TEST_FETCH (.ci/run)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not downloaded ({path}); python -m pyllama.models fetch {name}, "
                    f"or PYLLAMA_TEST_FETCH={name} to have the tests fetch it")
    if sha256_file(str(path)) != ref["model"]["sha256"]:
        pytest.skip(f"{path} is not the file the reference was recorded on (sha256 "
                    f"{ref['model']['sha256'][:12]}...)")
    return path


class _KeepLogits:
    """Stands in for the Llama object in pyllama.perplexity.perplexity and keeps, per window,
    the logits of the positions it scores (its code path is otherwise untouched)."""

    def __init__(self, llm, first: int):
        self._llm, self._first = llm, first
        self.windows: list[np.ndarray] = []

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def eval(self, tokens, logits_all=False):
        self._llm.eval(tokens, logits_all=logits_all)
        self.windows.append(np.array(self._llm.eval_logits[self._first:len(tokens) - 1], dtype=np.float32))


@pytest.fixture(scope="module", params=MODELS)
def run(request):
    name = request.param
    ref = _reference(name)
    path = _model_file(name, ref)
    from pyllama import Llama
    from pyllama.perplexity import perplexity

    n_ctx, chunks = ref["n_ctx"], ref["chunks"]
    llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=THREADS, verbose=False)
    tokens = llm.tokenize(TEXT.read_bytes().decode("utf-8"), add_bos=True)  # as the CLI does
    keep = _KeepLogits(llm, n_ctx // 2)
    ppl, err, running = perplexity(keep, tokens, n_ctx, chunks)
    llm.close()
    return {"name": name, "ref": ref, "tokens": tokens, "ppl": ppl, "err": err, "running": running,
            "logits": keep.windows}


@pytest.mark.slow
def test_tokens_match_llama_cpp(run):
    ref = run["ref"]
    n = ref["n_ctx"] * ref["chunks"]
    want = [t for chunk in ref["top_logits"]["tokens"] for t in chunk]
    got = list(run["tokens"][:n])
    first_diff = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert got == want, f"{run['name']}: token {first_diff} differs: pyllama {got[first_diff]}, llama.cpp {want[first_diff]}"


@pytest.mark.slow
def test_perplexity_within_1_percent(run):
    ref = run["ref"]
    assert abs(run["ppl"] / ref["ppl"] - 1) < 0.01, (
        f"{run['name']}: pyllama PPL {run['ppl']:.4f} vs llama.cpp {ref['ppl']} ({ref['command']})")
    for i, (mine, theirs) in enumerate(zip(run["running"], ref["running_ppl"]), 1):
        assert abs(mine / theirs - 1) < 0.02, f"{run['name']} chunk {i}: pyllama {mine:.4f} vs llama.cpp {theirs}"


@pytest.mark.slow
def test_teacher_forced_top1_where_llama_cpp_is_sure(run):
    top = run["ref"]["top_logits"]
    checked, wrong = 0, []
    for c, (chunk, logits) in enumerate(zip(top["chunks"], run["logits"])):
        assert logits.shape[0] == len(chunk["top_ids"])
        ours = logits.argmax(axis=1)
        for p, (ids, below) in enumerate(zip(chunk["top_ids"], chunk["top_below"])):
            if below[1] <= MARGIN:
                continue
            checked += 1
            if ours[p] != ids[0]:
                wrong.append(f"chunk {c} position {top['first_scored'] + p}: pyllama {int(ours[p])}, "
                             f"llama.cpp {ids[0]} (lead {below[1]:.3f})")
    print(f"\n{run['name']}: top-1 differs at {len(wrong)} of {checked} positions where llama.cpp leads by > {MARGIN}; "
          f"PPL {run['ppl']:.4f} vs llama.cpp {run['ref']['ppl']}")
    assert checked > 100, f"{run['name']}: only {checked} positions with a margin over {MARGIN}"
    assert not wrong, f"{run['name']}: {len(wrong)} of {checked} confident positions differ:\n" + "\n".join(wrong[:10])


@pytest.mark.slow
def test_top_logit_gaps_close_to_llama_cpp(run):
    """Beyond the argmax: the gap between llama.cpp's top-1 and top-2 tokens, measured in pyllama's
    logits, agrees with llama.cpp's gap (median and worst), so the logits are close, not only the order.
    Measured: median 0.050 / max 0.75 (0.5B), 0.088 / 0.42 (1.5B); the engines round activations
    differently (pyllama 8 bits per 32 values, llama.cpp per 256 for K-quants), a wrong kernel is O(1)."""
    top = run["ref"]["top_logits"]
    diffs = []
    for chunk, logits in zip(top["chunks"], run["logits"]):
        for p, (ids, below) in enumerate(zip(chunk["top_ids"], chunk["top_below"])):
            if below[1] > 0:
                diffs.append((logits[p, ids[0]] - logits[p, ids[1]]) - below[1])
    diffs = np.abs(np.array(diffs))
    print(f"\n{run['name']}: |top-1 - top-2 gap, pyllama - llama.cpp| over {diffs.size} positions: median "
          f"{np.median(diffs):.4f}, 99th percentile {np.percentile(diffs, 99):.4f}, max {diffs.max():.4f}")
    assert np.median(diffs) < 0.15 and diffs.max() < 1.5, (
        f"{run['name']}: |gap difference| median {np.median(diffs):.3f}, max {diffs.max():.3f}")
