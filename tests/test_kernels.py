"""The SIMD kernels against the scalar reference and an independent numpy reference.

(a) Through the extension: pl_matvec / pl_matmul for every weight type under each
    instruction-set path this CPU has, compared with PL_ISA_SCALAR and with a
    float64 numpy dot of the weights dequantized by the `gguf` package and the
    activation quantized to 8-bit blocks by numpy (same definition, written here).
(b) The standalone C harness (tests/c/test_kernels.c) for the x86 AVX2 kernels
    natively and for the NEON kernels under qemu-aarch64 (both with and without the
    dot-product extension). Skipped with the reason when a tool is missing.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from support.isas import available_isas

core = pytest.importorskip("pyllama._core", reason="the C core is not built (pip install -e .)")
ffi, lib = core.ffi, core.lib

ROOT = Path(__file__).resolve().parent.parent
QK = 32
TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8, "BF16": 30}


@pytest.fixture(autouse=True)
def _restore_isa():
    yield
    lib.pl_set_isa(lib.PL_ISA_AUTO)


def random_weights(rng: np.random.Generator, type_name: str, rows: int, cols: int) -> np.ndarray:
    """Raw bytes of a rows x cols matrix in the GGML layout of type_name."""
    nb = rows * cols // QK
    if type_name == "F32":
        return rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint8)
    if type_name == "F16":
        return rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    if type_name == "BF16":
        f = rng.standard_normal((rows, cols), dtype=np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    if type_name == "Q8_0":
        blk = np.zeros(nb, dtype=[("d", "<f2"), ("qs", "i1", 32)])
        blk["d"] = rng.uniform(0.001, 0.05, nb)
        blk["qs"] = rng.integers(-128, 128, (nb, 32))
    elif type_name == "Q4_0":
        blk = np.zeros(nb, dtype=[("d", "<f2"), ("qs", "u1", 16)])
        blk["d"] = rng.uniform(-0.1, 0.1, nb)
        blk["qs"] = rng.integers(0, 256, (nb, 16))
    else:  # Q4_1
        blk = np.zeros(nb, dtype=[("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)])
        blk["d"] = rng.uniform(0.001, 0.1, nb)
        blk["m"] = rng.uniform(-0.8, 0.2, nb)
        blk["qs"] = rng.integers(0, 256, (nb, 16))
    return blk.view(np.uint8)


def dequantize(type_name: str, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    if type_name == "BF16":  # not every gguf release has BF16 helpers: widen by hand
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(rows, cols)
    gq = pytest.importorskip("gguf.quants", reason="the gguf package provides the reference dequantizers")
    from gguf import GGMLQuantizationType

    qt = getattr(GGMLQuantizationType, type_name)
    return np.asarray(gq.dequantize(raw.reshape(rows, -1), qt), dtype=np.float32).reshape(rows, cols)


def quantize_act(x: np.ndarray) -> np.ndarray:
    """The 8-bit activation blocks as floats d*q: amax/127 scale, round half to even, in float32."""
    b = x.astype(np.float32).reshape(-1, QK)
    d = np.abs(b).max(axis=1) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.rint(b * inv[:, None])
    return (q * d[:, None]).reshape(x.shape)


def reference(type_name, raw, x, rows, cols):
    w = dequantize(type_name, raw, rows, cols).astype(np.float64)
    xa = quantize_act(x) if type_name in ("Q8_0", "Q4_0", "Q4_1") else x
    y = xa.astype(np.float64) @ w.T
    mag = np.abs(xa.astype(np.float64)) @ np.abs(w).T
    return y, mag


def run_matmul(type_id, raw, x, rows, cols, n_tok, n_threads):
    y = np.full((n_tok, rows), np.nan, dtype=np.float32)
    xc = np.ascontiguousarray(x, dtype=np.float32)
    wp = ffi.from_buffer(raw)
    if n_tok == 1:
        rc = lib.pl_matvec(type_id, wp, ffi.cast("float *", ffi.from_buffer(xc)),
                           ffi.cast("float *", ffi.from_buffer(y)), rows, cols, n_threads)
    else:
        rc = lib.pl_matmul(type_id, wp, ffi.cast("float *", ffi.from_buffer(xc)),
                           ffi.cast("float *", ffi.from_buffer(y)), rows, cols, n_tok, n_threads)
    assert rc == 0, ffi.string(lib.pl_last_error()).decode()
    return y


SHAPES = [  # rows, cols, tokens, threads
    (1, 32, 1, 1),
    (13, 96, 1, 2),
    (37, 288, 1, 2),
    (64, 576, 1, 1),
    (19, 160, 5, 2),
    (40, 608, 9, 2),
    (67, 1056, 33, 2),
]


@pytest.mark.parametrize("type_name", list(TYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_matches_scalar_and_numpy(type_name, shape):
    rows, cols, n_tok, n_threads = shape
    rng = np.random.default_rng(rows * 1000 + cols + n_tok)
    raw = random_weights(rng, type_name, rows, cols)
    x = rng.standard_normal((n_tok, cols), dtype=np.float32)
    x[:, 5] *= 50.0  # an outlier, as real activations have
    want, mag = reference(type_name, raw, x, rows, cols)
    tol = 3e-5 * mag + 1e-5
    results = {}
    for name, isa in available_isas(lib):
        assert lib.pl_set_isa(isa) == isa
        got = run_matmul(TYPES[type_name], raw, x, rows, cols, n_tok, n_threads)
        assert np.all(np.isfinite(got)), f"{name}: unwritten or non-finite outputs"
        err = np.abs(got.astype(np.float64) - want)
        assert np.all(err <= tol), (
            f"{name} {type_name} {shape}: worst error {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"
        )
        results[name] = got
    for name, got in results.items():
        np.testing.assert_allclose(got, results["scalar"], rtol=0, atol=float(tol.max()), err_msg=name)


def test_q4_0_outlier_against_near_zero_weights():
    """Weights at their zero point (q = 8) times a huge activation: no cancellation error."""
    rows, cols = 16, 256
    rng = np.random.default_rng(7)
    blk = np.zeros(rows * cols // QK, dtype=[("d", "<f2"), ("qs", "u1", 16)])
    blk["d"] = 0.05
    blk["qs"] = 0x88  # every value q = 8 -> weight 0
    blk["qs"][:, 3] = 0x89  # except one value 1*d per block
    raw = blk.view(np.uint8)
    x = rng.standard_normal((1, cols), dtype=np.float32)
    x[0, ::32] = 1e4
    want, mag = reference("Q4_0", raw, x, rows, cols)
    for name, isa in available_isas(lib):
        lib.pl_set_isa(isa)
        got = run_matmul(TYPES["Q4_0"], raw, x, rows, cols, 1, 1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def _run_script(script: str, *args: str):
    proc = subprocess.run(["sh", str(ROOT / "tests" / "c" / script), *args], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode == 77:
        pytest.skip((proc.stdout + proc.stderr).strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX2 harness is x86-64 only")
@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
def test_c_harness_avx2():
    out = _run_script("run_x86.sh")
    assert "match the scalar reference" in out


@pytest.mark.skipif(platform.system() != "Linux", reason="the NEON harness runs under qemu-user on Linux")
def test_c_harness_neon_under_qemu():
    if platform.machine() != "aarch64" and (shutil.which("aarch64-linux-gnu-gcc") is None
                                           or shutil.which("qemu-aarch64") is None):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("aarch64-linux-gnu-gcc / qemu-aarch64 missing and not installable here")
    out = _run_script("run_neon.sh")
    assert out.count("match the scalar reference") == 2, out
    assert "dot-product extension in use" in out and "not present" in out, out


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
def test_c_team_deals_every_row_once():
    """The forward pass's team deals each product's rows out as it goes (csrc/team.c): every unit
    exactly once, for 2-8 threads, with one thread held up at a step's start (it must lose work to
    the others), between steps that deal nothing."""
    out = _run_script("run_team.sh")
    assert "every unit dealt exactly once" in out, out


def _clang():
    for name in ("clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14"):
        if shutil.which(name):
            return name
    return None


@pytest.mark.skipif(_clang() is None, reason="no clang (macOS builds with Apple clang; .ci/run installs clang)")
@pytest.mark.parametrize("target", ["x86_64-linux-gnu", "aarch64-linux-gnu"])
def test_core_compiles_with_clang(target, tmp_path):
    """Every C file of the core builds with clang too (the compiler of macOS / Apple M-series users), for
    x86-64 and for AArch64, warning-free: GCC accepts things clang rejects (non-constant intrinsic
    immediates, feature names in __builtin_cpu_supports, intrinsics hidden behind target macros)."""
    root = Path(__file__).resolve().parent.parent
    omp = subprocess.run([_clang(), "-fopenmp", "-E", "-x", "c", "-", "-o", os.devnull], input="#include <omp.h>\n",
                         capture_output=True, text=True)
    if omp.returncode != 0:
        pytest.skip("clang has no omp.h (Debian: apt-get install libomp-dev)")
    for src in sorted((root / "csrc").glob("*.c")):
        proc = subprocess.run([_clang(), f"--target={target}", "-std=gnu11", "-O2", "-fopenmp", "-Wall", "-Werror",
                               "-Wno-unused-function", "-fsyntax-only", "-I", str(root / "csrc"), str(src)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{src.name} ({target}):\n{proc.stderr}"


def _forward_models(tiny_model_factory):
    """Float-weight tiny models for tests/c/forward_isa.c: the default shape (head size 16)
    and a head size of 160 (keys stored in several pieces, attention column tails)."""
    return [str(tiny_model_factory(wtype="F32")),
            str(tiny_model_factory(wtype="F16", dim=320, n_heads=2, n_kv_heads=1, hidden_dim=320))]


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
def test_c_forward_pass_best_isa_equals_scalar(tiny_model_factory):
    """The whole forward pass (prefill and decode, both cache types) on this CPU's kernel set vs the scalar one."""
    out = _run_script("run_forward.sh", *_forward_models(tiny_model_factory))
    assert out.count(" ok") == 8, out


@pytest.mark.skipif(platform.system() != "Linux", reason="the NEON forward pass runs under qemu-user on Linux")
def test_c_forward_pass_neon_under_qemu(tiny_model_factory):
    """The same on the NEON set, under qemu, with and without the dot-product extension."""
    if platform.machine() != "aarch64" and (shutil.which("aarch64-linux-gnu-gcc") is None
                                           or shutil.which("qemu-aarch64") is None):
        _run_script("run_neon.sh")  # installs the cross toolchain when it can, else skips
    out = _run_script("run_forward.sh", "--neon", *_forward_models(tiny_model_factory))
    assert out.count(" ok") == 16 and "isa 2 " in out, out


# ---------------------------------------------------------------- the speed tools, on a tiny model


def test_bench_cli_json_fields(tiny_model_factory, capsys):
    """`python -m pyllama.bench --json` emits llama-bench's fields, one record per test and thread count."""
    import json

    from pyllama.cli import bench

    path = str(tiny_model_factory())
    assert bench.main(["-m", path, "-p", "8", "-n", "4", "-t", "1,2", "-r", "2", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["n_threads"], r["n_prompt"], r["n_gen"]) for r in records] == [(1, 8, 0), (1, 0, 4), (2, 8, 0), (2, 0, 4)]
    for r in records:
        for field in ("model_filename", "model_type", "model_size", "model_n_params", "avg_ts", "stddev_ts"):
            assert field in r, field
        assert r["model_size"] > 0 and r["model_n_params"] > 0 and r["avg_ts"] > 0
        assert len(r["samples_ts"]) == 2


def test_bench_cli_table(tiny_model_factory, capsys):
    from pyllama.cli import bench

    path = str(tiny_model_factory())
    assert bench.main(["-m", path, "-p", "8", "-n", "0", "-r", "1", "-t", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| model") and "t/s" in lines[0]
    assert len(lines) == 3 and "pp8" in lines[2]


def test_bench_cli_mmap_column(tiny_model_factory, capsys):
    """-mmp 0,1 (llama-bench's flag): each model loaded both ways, with an mmap column and field."""
    import json

    from pyllama.cli import bench

    path = str(tiny_model_factory())
    assert bench.main(["-m", path, "-p", "0", "-n", "2", "-r", "1", "-t", "1", "-mmp", "0,1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "| mmap |" in lines[0] and len(lines) == 4
    assert [line.split("|")[6].strip() for line in lines[2:]] == ["0", "1"]
    assert bench.main(["-m", path, "-p", "0", "-n", "2", "-r", "1", "-t", "1", "-mmp", "0", "--json"]) == 0
    assert [r["use_mmap"] for r in json.loads(capsys.readouterr().out)] == [False]
    with pytest.raises(SystemExit):
        bench.main(["-m", path, "-mmp", "2"])


def test_perplexity_matches_a_direct_computation(tiny_model_factory):
    """pyllama.perplexity's windows and scoring, recomputed here from full-sequence logits."""
    from pyllama import Llama
    from pyllama.perplexity import perplexity

    llm = Llama(model_path=str(tiny_model_factory()), n_ctx=16, n_threads=1)
    rng = np.random.default_rng(3)
    tokens = [int(t) for t in rng.integers(0, llm.n_vocab(), 50)]
    ppl, err, running = perplexity(llm, tokens, 16, out=open(os.devnull, "w"))
    nll = []
    for c in range(len(tokens) // 16):  # 3 windows; score positions 8..14 predicting 9..15
        window = tokens[c * 16:(c + 1) * 16]
        if llm.tokenizer.add_bos and llm.token_bos() >= 0:
            window[0] = llm.token_bos()
        llm.reset()
        llm.eval(window, logits_all=True)
        for i in range(8, 15):
            row = llm.eval_logits[i].astype(np.float64)
            nll.append(np.log(np.exp(row - row.max()).sum()) + row.max() - row[window[i + 1]])
    nll = np.array(nll)
    assert len(running) == 3
    assert ppl == pytest.approx(np.exp(nll.mean()), rel=1e-9)
    assert err == pytest.approx(np.sqrt(nll.var() / (len(nll) - 1)) * np.exp(nll.mean()), rel=1e-6)
