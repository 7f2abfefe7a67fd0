"""What the tests of the layouts the loader regroups weights into share (test_kquant_repack.py's
Q4_KR / Q6_KR, test_panels.py's Q4_0P / Q4_1P / Q8_0P): a product through pl_matmul, the check of
one layout on every kernel set against a float64 reference, and a model's logits with and without
the regrouping."""
from __future__ import annotations

import numpy as np

from .isas import available_isas


def c_matmul(type_id: int, raw: np.ndarray, x: np.ndarray, rows: int, cols: int, n_threads: int) -> np.ndarray:
    """y[t] = W x[t] through pl_matmul, W `rows` rows of type `type_id` in `raw`; NaN where unwritten."""
    from pyllama._core import ffi, lib

    n_tok = x.shape[0]
    y = np.full((n_tok, rows), np.nan, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    rc = lib.pl_matmul(type_id, ffi.from_buffer(raw), ffi.cast("float *", ffi.from_buffer(x)),
                       ffi.cast("float *", ffi.from_buffer(y)), rows, cols, n_tok, n_threads)
    assert rc == 0, ffi.string(lib.pl_last_error()).decode()
    return y


def assert_matches_on_every_path(type_id: int, raw: np.ndarray, x: np.ndarray, rows: int, cols: int,
                                 n_threads: int, want: np.ndarray, bound: np.ndarray, label: str) -> None:
    """Every kernel set this CPU has gives `want` within `bound` (elementwise), every output written."""
    from pyllama._core import lib

    for name, isa in available_isas(lib):
        assert lib.pl_set_isa(isa) == isa
        got = c_matmul(type_id, raw, x, rows, cols, n_threads).astype(np.float64)
        assert np.all(np.isfinite(got)), f"{name}: unwritten or non-finite outputs"
        err = np.abs(got - want)
        assert np.all(err <= bound), f"{name} {label}: worst err/bound {np.max(err / bound):.3g}"


def logits_with_and_without_regrouping(monkeypatch, path: str, tokens: list[int]) -> tuple[dict, dict]:
    """The file's logits with PYLLAMA_REPACK "0" and "1": (prompt batch: every position's logits from
    one eval, i.e. the tiles; token by token: each eval's logits, i.e. the one-token rows)."""
    from pyllama import Llama

    batch, rows = {}, {}
    for flag in ("0", "1"):
        monkeypatch.setenv("PYLLAMA_REPACK", flag)
        llm = Llama(model_path=path, n_ctx=64, n_threads=2, verbose=False)
        llm.eval(tokens, logits_all=True)
        batch[flag] = np.array(llm.eval_logits)
        llm.close()
        llm = Llama(model_path=path, n_ctx=64, n_threads=2, verbose=False)
        out = []
        for t in tokens:
            llm.eval([t])
            out.append(llm.logits.copy())
        rows[flag] = np.array(out)
        llm.close()
    return batch, rows
