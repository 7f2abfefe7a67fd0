"""The atheris fuzz harnesses of tests/fuzz/, run without atheris: each on its seeds
and on seeded random mutations of them (a quick regression check of what CI fuzzes
for longer with atheris, see .ci/run and SECURITY.md)."""
from __future__ import annotations

import importlib
import os
import random
import sys

import pytest

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz")
sys.path.insert(0, FUZZ)

from _harness import mutate  # noqa: E402


@pytest.mark.parametrize("name, n", [("fuzz_chat_template", 150), ("fuzz_tokenizer_metadata", 300),
                                     ("fuzz_llama2c_tokenizer", 300)])
def test_harness_on_seeds_and_mutations(name, n):
    pytest.importorskip("gguf")
    mod = importlib.import_module(name)
    seeds = list(mod.seeds())
    assert seeds
    for s in seeds:
        mod.test_one_input(s)
    rng = random.Random(name)
    for _ in range(n):
        mod.test_one_input(mutate(rng.choice(seeds), rng))
