"""Shared driver of the atheris fuzz harnesses in this folder.

Each harness module defines ``test_one_input(data: bytes)`` (raises only on a finding:
a crash, an exception type the code under test must not raise, a broken invariant)
and ``seeds()`` (inputs that reach deep: valid files, real templates). Run one with
``python tests/fuzz/fuzz_NAME.py -max_total_time=60`` (any libFuzzer flags): its
seeds are written to a fresh corpus folder first, so the repository stays clean.
tests/test_fuzz_harnesses.py runs the same functions without atheris on the seeds and
on seeded random mutations of them.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def scratch_path(name: str) -> str:
    """A per-process file path for harnesses whose code under test reads a file."""
    d = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return os.path.join(d, f"pyllama-fuzz-{os.getpid()}-{name}")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few random byte edits (flip, insert, delete, duplicate a chunk): for the runs
    without atheris."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        elif op == 2 and b:
            del b[rng.randrange(len(b))]
        elif op == 3 and b:
            i = rng.randrange(len(b))
            j = min(len(b), i + rng.randint(1, 64))
            b[i:i] = b[i:j]
        elif op == 4 and b:
            b[rng.randrange(len(b))] = rng.choice(b"\x00\xff{}%<>|\n ")
    return bytes(b)


def instrumented(fuzzing: bool):
    """Context for the harness's imports: when fuzzing, atheris instruments the modules
    imported in it (pyllama and the libraries that parse for it) for coverage; else nothing.
    Instrumenting only these keeps start-up in seconds (all of numpy takes minutes)."""
    if not fuzzing:
        return contextlib.nullcontext()
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed (pip install atheris)")
    return atheris.instrument_imports(include=["pyllama", "jinja2", "markupsafe", "regex"])


def main(test_one_input, seeds) -> None:
    import atheris

    corpus = tempfile.mkdtemp(prefix="pyllama-fuzz-corpus-")
    for i, s in enumerate(seeds()):
        with open(os.path.join(corpus, f"seed{i:03d}"), "wb") as f:
            f.write(s)
    argv = [a for a in sys.argv]
    argv.append(corpus)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
