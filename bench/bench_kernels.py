"""Matrix-vector kernels: GB/s of weights streamed, and the ratio to a plain stream-read.

    pytest bench/bench_kernels.py --benchmark-only -s

Each weight type gets a matrix of about 96 MiB (larger than most CPUs' L3, so on them
it comes from memory), multiplied by one vector through pl_matvec with
PYLLAMA_BENCH_THREADS threads (default 2). The reference is a read of the same
bytes by numpy (an integer sum, split over the same number of threads), the best
that plain loads reach here. Decode reads every weight once per token, so
"ratio to stream" is the share of memory bandwidth a decode step can use.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import THREADS, report

core = pytest.importorskip("pyllama._core", reason="the C core is not built")
ffi, lib = core.ffi, core.lib

TYPES = {"Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q8_0": (8, 32, 34), "F16": (1, 1, 2), "BF16": (30, 1, 2),
         "F32": (0, 1, 4)}
COLS = 4096
TARGET_BYTES = 96 << 20


def make_matrix(name):
    t, bs, bb = TYPES[name]
    row_bytes = COLS // bs * bb
    rows = TARGET_BYTES // row_bytes
    rng = np.random.default_rng(0)
    if name in ("F16", "F32", "BF16"):
        w = rng.standard_normal((rows, COLS), dtype=np.float32)
        w = w.astype(np.float16) if name == "F16" else (w.view(np.uint32) >> 16).astype(np.uint16) if name == "BF16" else w
        return t, rows, np.ascontiguousarray(w).view(np.uint8).reshape(-1)
    raw = rng.integers(0, 256, rows * row_bytes, dtype=np.uint8)
    blocks = raw.reshape(-1, bb)
    blocks[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # sane scales
    if name == "Q4_1":
        blocks[:, 2:4] = np.frombuffer(np.float16(-0.05).tobytes(), np.uint8)
    return t, rows, raw


def stream_read_seconds(buf: np.ndarray, n_threads: int, reps: int = 5) -> float:
    parts = np.array_split(buf[: buf.size // 8 * 8].view(np.uint64), n_threads)
    with ThreadPoolExecutor(n_threads) as ex:
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            list(ex.map(np.add.reduce, parts))
            best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("name", list(TYPES))
def test_matvec(benchmark, name):
    t, rows, raw = make_matrix(name)
    x = np.random.default_rng(1).standard_normal(COLS, dtype=np.float32)
    y = np.empty(rows, dtype=np.float32)
    wp, xp, yp = ffi.from_buffer(raw), ffi.cast("float *", ffi.from_buffer(x)), ffi.cast("float *", ffi.from_buffer(y))

    def run():
        assert lib.pl_matvec(t, wp, xp, yp, rows, COLS, THREADS) == 0

    run()
    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)
    best = benchmark.stats.stats.min
    stream = stream_read_seconds(raw, THREADS)
    gbs, sgbs = raw.nbytes / best / 1e9, raw.nbytes / stream / 1e9
    benchmark.extra_info.update({"GB/s": round(gbs, 2), "stream GB/s": round(sgbs, 2),
                                 "ratio_to_stream": round(gbs / sgbs, 3), "threads": THREADS})
    report(f"matvec {name:5s} {raw.nbytes / 2**20:6.1f} MiB  {gbs:6.2f} GB/s  stream {sgbs:6.2f} GB/s  "
           f"ratio {gbs / sgbs:5.2f}  ({THREADS} threads, best of 20)")
