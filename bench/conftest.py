"""Shared helpers for the pytest-benchmark suites in bench/ (run: pytest bench/ --benchmark-only -s).

Models: the default model plus, when present, the requantized variants that
bench/make_variants.py writes to the cache (run it once to benchmark every type).
Model: PYLLAMA_BENCH_MODEL overrides the default model.
Threads: PYLLAMA_BENCH_THREADS (default 2, the setting of the project's targets).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

THREADS = int(os.environ.get("PYLLAMA_BENCH_THREADS", "2"))
_REPORT: list[str] = []


def default_model() -> str | None:
    env = os.environ.get("PYLLAMA_BENCH_MODEL")
    if env:
        return env
    try:
        from pyllama.models import default_model_path

        path = default_model_path()
    except Exception:  # offline and not cached
        return None
    return path if os.path.exists(path) else None


def model_variants() -> list[tuple[str, str]]:
    """(type, path) for the default model and the cached variants that exist."""
    out = []
    base = default_model()
    if base:
        out.append(("Q4_1", base))
    try:
        from make_variants import cache_dir
    except ImportError:
        return out
    for t in ("Q4_0", "Q8_0", "F16", "F32"):
        for p in sorted(cache_dir().glob(f"*.{t}.gguf")):
            out.append((t, str(p)))
            break
    return out


def report(line: str) -> None:
    """Collect a line for the summary printed after the session (use -s to see it)."""
    _REPORT.append(line)


@pytest.fixture(scope="session", autouse=True)
def _print_report():
    yield
    if _REPORT:
        print("\n" + "\n".join(_REPORT))
