"""`python -m pyllama.perplexity` against llama.cpp's `llama-perplexity` on the same model and text.

The reference, tests/data/perplexity_reference.json, is llama-perplexity's output recorded by
tests/recorders/record_perplexity_reference.py (llama.cpp from the llama-cpp-python 0.3.36 sdist, built
by bench/build_llamacpp.sh) on the default model and tests/data/perplexity_pride_and_prejudice.txt
(chapters 1-5 of Pride and Prejudice, public domain), 256-token windows. pyllama must agree
within 1% on the final perplexity, and print the final line in llama.cpp's form.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyllama.models import sha256_file

DATA = Path(__file__).resolve().parent / "data"
REFERENCE = DATA / "perplexity_reference.json"
TEXT = DATA / "perplexity_pride_and_prejudice.txt"
ROOT = Path(__file__).resolve().parent.parent
FINAL_LINE = re.compile(r"^Final estimate: PPL = ([0-9]+\.[0-9]+) \+/- ([0-9]+\.[0-9]+)$")
RUNNING = re.compile(r"\[(\d+)\]([0-9]+\.[0-9]+),")


@pytest.fixture(scope="module")
def reference() -> dict:
    with open(REFERENCE) as fh:
        return json.load(fh)


def test_reference_matches_its_text(reference):
    # The recorded numbers are only meaningful for exactly this text.
    assert sha256_file(TEXT) == reference["text"]["sha256"]
    assert reference["text"]["file"] == "tests/data/perplexity_pride_and_prejudice.txt"
    assert FINAL_LINE.match(reference["final_line"])
    assert len(reference["running_ppl"]) == reference["chunks"]
    assert reference["running_ppl"][-1] == pytest.approx(reference["ppl"], abs=1e-4)


@pytest.fixture(scope="module")
def pyllama_run(reference, default_model_path):
    if importlib.util.find_spec("pyllama.perplexity") is None:
        pytest.skip("pyllama.perplexity is not importable (the perplexity tool is not in this checkout yet)")
    if sha256_file(default_model_path) != reference["model"]["sha256"]:
        pytest.skip(f"{default_model_path} is not the model the reference was recorded on "
                    f"({reference['model']['file']}, sha256 {reference['model']['sha256'][:12]}...)")
    n = str(reference["n_ctx"])
    cmd = [sys.executable, "-m", "pyllama.perplexity", "-m", default_model_path, "-f", str(TEXT),
           "-c", n, "-b", str(reference["n_batch"]), "-t", str(reference["n_threads"]),
           "--chunks", str(reference["chunks"])]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900,
                         cwd=ROOT)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}"
    return res


@pytest.mark.slow
@pytest.mark.subprocess
def test_final_line_format(pyllama_run):
    lines = [line for line in pyllama_run.stdout.splitlines() if line.strip()]
    assert lines, "pyllama.perplexity printed nothing on stdout"
    assert FINAL_LINE.match(lines[-1]), f"last line is {lines[-1]!r}"


@pytest.mark.slow
@pytest.mark.subprocess
def test_agrees_with_llama_cpp(pyllama_run, reference):
    lines = [line for line in pyllama_run.stdout.splitlines() if line.strip()]
    m = FINAL_LINE.match(lines[-1]) if lines else None
    assert m, f"no final estimate line in {pyllama_run.stdout!r}"
    ppl, err = float(m.group(1)), float(m.group(2))
    ref_ppl, ref_err = reference["ppl"], reference["ppl_error"]
    assert abs(ppl / ref_ppl - 1) < 0.01, f"pyllama PPL {ppl} vs llama.cpp {ref_ppl} ({reference['command']})"
    # Same definition of the error (standard error of the mean NLL times PPL): close as well.
    assert abs(err / ref_err - 1) < 0.05, f"pyllama error {err} vs llama.cpp {ref_err}"


@pytest.mark.slow
@pytest.mark.subprocess
def test_progress_matches_llama_cpp_chunk_by_chunk(pyllama_run, reference):
    # Progress on stderr as llama.cpp prints it: "[1]11.18,[2]13.15,..." (running perplexity).
    running = [float(v) for _, v in RUNNING.findall(pyllama_run.stderr)]
    assert len(running) == reference["chunks"], pyllama_run.stderr[-2000:]
    for i, (mine, theirs) in enumerate(zip(running, reference["running_ppl"]), 1):
        assert abs(mine / theirs - 1) < 0.02, f"chunk {i}: pyllama {mine} vs llama.cpp {theirs}"


# ---- other models: tests/data/perplexity_reference_<name>.json, recorded with
# `tests/recorders/record_perplexity_reference.py -m MODEL --out ...`; run when the model file is in pyllama's cache.
OTHER_REFERENCES = sorted(DATA.glob("perplexity_reference_*.json"))


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("ref_path", OTHER_REFERENCES, ids=[p.stem[len("perplexity_reference_"):]
                                                             for p in OTHER_REFERENCES])
def test_other_model_agrees_with_llama_cpp(ref_path):
    from pyllama.models import cache_dir

    with open(ref_path) as fh:
        ref = json.load(fh)
    model = Path(cache_dir()) / ref["model"]["file"]
    if not model.is_file():
        pytest.skip(f"{model} is not in pyllama's cache")
    if sha256_file(model) != ref["model"]["sha256"]:
        pytest.skip(f"{model} is not the file the reference was recorded on")
    cmd = [sys.executable, "-m", "pyllama.perplexity", "-m", str(model), "-f", str(TEXT), "-c", str(ref["n_ctx"]),
           "-b", str(ref["n_batch"]), "-t", str(ref["n_threads"]), "--chunks", str(ref["chunks"])]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=1800, cwd=ROOT)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}"
    m = FINAL_LINE.match([line for line in res.stdout.splitlines() if line.strip()][-1])
    assert m, res.stdout[-500:]
    ppl = float(m.group(1))
    assert abs(ppl / ref["ppl"] - 1) < 0.01, f"pyllama PPL {ppl} vs llama.cpp {ref['ppl']} ({ref['command']})"
