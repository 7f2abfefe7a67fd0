"""Shared fixtures for pyllama's tests.

- `default_model_path`: the real default model (SmolLM2-135M-Instruct Q4_1).
  PYLLAMA_TEST_MODEL=/path/to/file.gguf overrides it; otherwise the model is
  pyllama.models.default_model_path(), which fetches it into the cache on first
  use (PYLLAMA_TEST_NO_FETCH=1: use the cache only). Tests using it skip with
  the reason when it is unavailable (no network, fetch failed).
- `tiny_model_factory`: writes tiny random GGUF models (tests/support/tiny_models.py)
  into a session temp dir, one file per distinct spec; `tiny_path`: the default one's path.
- markers: `slow` (real-model tests), `subprocess` (tests that spawn interpreters),
  `perf` (where memory lives: page cache, huge pages, resident set; they run by default
  and time nothing -- speed is measured in bench/; `-m "not perf"` leaves them out).

Layout: test_*.py are the tests; support/ holds the independent references and test inputs
they import (`from support import reference`); recorders/ the scripts that recorded other
engines' outputs into data/; fuzz/ the atheris harnesses; c/ the C-level tests and fuzzers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # so test files can `from support import reference`
    sys.path.insert(0, str(TESTS_DIR))

from support import tiny_models  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: uses the real default model (seconds, not milliseconds)")
    config.addinivalue_line("markers", "subprocess: loads files in child interpreters to catch crashes")
    config.addinivalue_line("markers", "perf: checks where memory lives (page cache, huge pages, resident "
                            "set); no timings")


def _find_default_model() -> tuple[str | None, str]:
    env = os.environ.get("PYLLAMA_TEST_MODEL")
    if env:
        if os.path.isfile(env):
            return env, ""
        return None, f"PYLLAMA_TEST_MODEL={env} does not exist"
    try:
        from pyllama import models
    except Exception as e:  # pragma: no cover - depends on the checkout state
        return None, f"pyllama.models is not importable ({e})"
    fetch = os.environ.get("PYLLAMA_TEST_NO_FETCH") != "1"
    try:
        path = models.default_model_path(fetch_if_missing=fetch)
    except Exception as e:
        return None, f"default model unavailable: {e}"
    if path is None:
        return None, ("default model not in the pyllama cache and PYLLAMA_TEST_NO_FETCH=1 "
                      "(set PYLLAMA_TEST_MODEL=path to use a local copy)")
    return path, ""


@pytest.fixture(scope="session")
def default_model_path() -> str:
    path, why = _find_default_model()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """make(spec=None, **overrides) -> Path of a tiny GGUF (cached per spec within the session)."""
    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict[str, Path] = {}

    def make(spec: tiny_models.TinySpec | None = None, **overrides) -> Path:
        import dataclasses

        spec = dataclasses.replace(spec or tiny_models.TinySpec(), **overrides)
        key = repr(spec)
        if key not in cache:
            cache[key] = tiny_models.write_tiny_gguf(root / f"tiny_{len(cache)}.gguf", spec)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_path(tiny_model_factory) -> str:
    """The default tiny model (TinySpec()), as the path string Llama(model_path=...) takes."""
    return str(tiny_model_factory())
