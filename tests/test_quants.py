"""Dequantizers and matrix kernels of the C core against the `gguf` package.

- pl_dequantize must equal gguf.quants.dequantize bit for bit on random blocks
  (F16 and BF16 exhaustively over all 65,536 bit patterns).
- pl_matvec on the scalar path is checked against float64 numpy on the
  dequantized weights. For float weight types the only error is float32
  rounding. For quantized weight types the kernel first rounds the activation
  vector to 8 bits per 32-value block (x ~= d*q, d = max|x|/127), which moves
  each x_i by at most d/2; so |y_r - exact_r| <= sum_blocks d_b/2 * sum_{i in b} |W_ri|
  plus float rounding. The test asserts exactly that bound, and separately a
  tight match with numpy applied to the 8-bit-rounded activations
  (reference.quantize_activations_q8).
- pl_matmul equals pl_matvec token by token; the thread count does not change results.
"""

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as QT

from support.isas import in_both_read_orders
from support.reference import quantize_activations_q8

core = pytest.importorskip("pyllama._core", reason="the C core (pyllama._core) is not built")
ffi, lib = core.ffi, core.lib

TYPES = {"F32": QT.F32, "F16": QT.F16, "BF16": QT.BF16, "Q8_0": QT.Q8_0, "Q4_0": QT.Q4_0, "Q4_1": QT.Q4_1,
         "Q5_0": QT.Q5_0, "Q5_1": QT.Q5_1, "IQ4_NL": QT.IQ4_NL, "Q2_K": QT.Q2_K, "Q3_K": QT.Q3_K,
         "Q4_K": QT.Q4_K, "Q5_K": QT.Q5_K, "Q6_K": QT.Q6_K, "IQ4_XS": QT.IQ4_XS}
QUANT = set(TYPES) - {"F32", "F16", "BF16"}
# (values, bytes) per block, from ggml's block layouts
BLOCK = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20),
         "Q5_0": (32, 22), "Q5_1": (32, 24), "IQ4_NL": (32, 18), "Q2_K": (256, 84), "Q3_K": (256, 110),
         "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210), "IQ4_XS": (256, 136)}
# Byte offsets of each block's fp16 fields: (scale d, minimum scale or None). Everything else
# in a block (quants, packed sub-block scales, high bits) is any byte pattern.
FP16_FIELDS = {"Q8_0": (0, None), "Q4_0": (0, None), "Q4_1": (0, 2), "Q5_0": (0, None), "Q5_1": (0, 2),
               "IQ4_NL": (0, None), "Q2_K": (80, 82), "Q3_K": (108, None), "Q4_K": (0, 2), "Q5_K": (0, 2),
               "Q6_K": (208, None), "IQ4_XS": (0, None)}
GGUF_QUANTIZES = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}  # types the gguf package can also encode


@pytest.fixture(autouse=True)
def scalar_isa():
    lib.pl_set_isa(lib.PL_ISA_SCALAR)
    yield
    lib.pl_set_isa(lib.PL_ISA_AUTO)


def random_fp16(rng, n, lo=-8.0, hi=8.0):
    """Finite fp16 values spread over many exponents, including subnormals and zero."""
    mant = rng.uniform(1, 2, n) * rng.choice([-1, 1], n)
    exp = rng.integers(-26, 4, n).astype(np.float64)
    v = (mant * 2.0 ** exp).astype(np.float16)
    v[rng.random(n) < 0.02] = 0
    return v


def random_blocks(name, n_blocks, rng) -> bytes:
    """Random (but finite) encoded data of n_blocks blocks: random scales, random quant bytes."""
    if name == "F32":
        return rng.standard_normal(n_blocks).astype(np.float32).tobytes()
    if name in ("F16", "BF16"):
        bits = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        exp_mask = 0x7C00 if name == "F16" else 0x7F80
        bits = bits[(bits & exp_mask) != exp_mask]  # drop inf/nan (tested separately)
        bits = np.resize(bits, n_blocks)
        return bits.tobytes()
    if name not in ("Q8_0", "Q4_0", "Q4_1"):
        blk, nbytes = BLOCK[name]
        raw = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
        for off in FP16_FIELDS[name]:
            if off is not None:
                raw[:, off:off + 2] = random_fp16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        return raw.tobytes()
    d = random_fp16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if name == "Q8_0":
        qs = rng.integers(0, 256, (n_blocks, 32), dtype=np.uint8)
        return np.concatenate([d, qs], axis=1).tobytes()
    if name == "Q4_0":
        qs = rng.integers(0, 256, (n_blocks, 16), dtype=np.uint8)
        return np.concatenate([d, qs], axis=1).tobytes()
    if name == "Q4_1":
        m = random_fp16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        qs = rng.integers(0, 256, (n_blocks, 16), dtype=np.uint8)
        return np.concatenate([d, m, qs], axis=1).tobytes()
    raise AssertionError(name)


def gguf_dequant(name, raw: bytes, n: int) -> np.ndarray:
    """The independent reference: gguf.quants.dequantize on the same bytes."""
    qt = TYPES[name]
    arr = np.frombuffer(raw, dtype=np.uint8)
    if name == "F32":
        return arr.view(np.float32).copy()
    if name == "F16":
        return arr.view(np.float16).astype(np.float32)
    blk, nbytes = BLOCK[name]
    return gguf.quants.dequantize(arr.reshape(n // blk, nbytes), qt).reshape(-1).astype(np.float32)


def c_dequant(name, raw: bytes, n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.float32)
    src = ffi.from_buffer(raw)
    rc = lib.pl_dequantize(int(TYPES[name]), src, ffi.cast("float *", ffi.from_buffer(out)), n)
    assert rc == 0, ffi.string(lib.pl_last_error()).decode()
    return out


@pytest.mark.parametrize("name", list(TYPES))
def test_block_sizes(name):
    blk, nbytes = BLOCK[name]
    assert lib.pl_type_block_size(int(TYPES[name])) == blk
    assert lib.pl_type_block_bytes(int(TYPES[name])) == nbytes
    assert gguf.GGML_QUANT_SIZES[TYPES[name]] == (blk, nbytes)


@pytest.mark.parametrize("name", list(TYPES))
def test_dequantize_bit_exact_random_blocks(name):
    rng = np.random.default_rng(1234 + list(TYPES).index(name))
    blk, _ = BLOCK[name]
    n = 256 * 125  # 1000 blocks of 32, 125 of 256 for the quant types
    raw = random_blocks(name, n // blk, rng)
    ours = c_dequant(name, raw, n)
    ref = gguf_dequant(name, raw, n)
    bad = np.nonzero(ours.view(np.uint32) != ref.view(np.uint32))[0]
    assert bad.size == 0, (
        f"{name}: {bad.size} of {n} values differ; first at {bad[0]}: ours {ours[bad[0]]!r} "
        f"gguf {ref[bad[0]]!r}")


@pytest.mark.parametrize("name", ["F16", "BF16"])
def test_dequantize_every_16bit_pattern(name):
    """All 65,536 values, inf and NaN included (compared as bits; NaN payloads are kept by both)."""
    raw = np.arange(1 << 16, dtype=np.uint16).tobytes()
    ours = c_dequant(name, raw, 1 << 16)
    ref = gguf_dequant(name, raw, 1 << 16)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(ours), nan)
    bad = np.nonzero((ours.view(np.uint32) != ref.view(np.uint32)) & ~nan)[0]
    assert bad.size == 0, f"{name}: pattern {bad[0]:#06x}: ours {ours[bad[0]]!r} gguf {ref[bad[0]]!r}"


@pytest.mark.parametrize("name", sorted(GGUF_QUANTIZES))
def test_dequantize_roundtrip_of_gguf_quantizer(name):
    """Data quantized by the gguf package itself (realistic scales) decodes identically."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 256)).astype(np.float32)
    q = gguf.quants.quantize(x, TYPES[name])
    ours = c_dequant(name, q.tobytes(), x.size)
    ref = gguf.quants.dequantize(q, TYPES[name]).reshape(-1)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


def encode_matrix(name, w: np.ndarray) -> bytes:
    """w in the type: the gguf package's quantizer where it has one, else random blocks of
    the same shape with sane scales (the gguf package cannot encode K-quants or IQ4)."""
    if name == "F32":
        return w.astype(np.float32).tobytes()
    if name == "F16":
        return w.astype(np.float16).tobytes()
    if name in GGUF_QUANTIZES or name == "BF16":
        return gguf.quants.quantize(w.astype(np.float32), TYPES[name]).tobytes()
    return sane_blocks(name, w.size // BLOCK[name][0], np.random.default_rng(w.size))


def sane_blocks(name, n_blocks, rng) -> bytes:
    """Random quants and sub-block scales; scales in the range real files have (positive d,
    a smaller dmin, so values straddle zero as trained weights do)."""
    blk, nbytes = BLOCK[name]
    raw = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
    d_off, m_off = FP16_FIELDS[name]
    raw[:, d_off:d_off + 2] = rng.uniform(2e-4, 4e-3, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
    if m_off is not None:
        raw[:, m_off:m_off + 2] = rng.uniform(1e-4, 2e-3, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.tobytes()


def magnitude_matrix(name, raw: bytes, rows, cols) -> np.ndarray:
    """|d*sc*q| + |dmin*m| per weight (|w| for types without minimums): what float rounding
    in a kernel is relative to, since d*sc*q and dmin*m are summed separately and may cancel."""
    if name not in FP16_FIELDS or FP16_FIELDS[name][1] is None:
        return np.abs(dequant_matrix(name, raw, rows, cols))
    blk, nbytes = BLOCK[name]
    d_off, m_off = FP16_FIELDS[name]
    parts = []
    for off in (d_off, m_off):  # zero one fp16 field to see the other's term alone
        a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, nbytes).copy()
        a[:, off:off + 2] = 0
        parts.append(np.abs(dequant_matrix(name, a.tobytes(), rows, cols)))
    return parts[0] + parts[1]


def dequant_matrix(name, raw: bytes, rows, cols) -> np.ndarray:
    return gguf_dequant(name, raw, rows * cols).reshape(rows, cols).astype(np.float64)


def c_matvec(name, raw, x, rows, cols, n_threads=1):
    y = np.empty(rows, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    rc = lib.pl_matvec(int(TYPES[name]), ffi.from_buffer(raw), ffi.cast("float *", ffi.from_buffer(x)),
                       ffi.cast("float *", ffi.from_buffer(y)), rows, cols, n_threads)
    assert rc == 0, ffi.string(lib.pl_last_error()).decode()
    return y


def c_matmul(name, raw, X, rows, cols, n_threads=1):
    n_tok = X.shape[0]
    Y = np.empty((n_tok, rows), dtype=np.float32)
    X = np.ascontiguousarray(X, dtype=np.float32)
    rc = lib.pl_matmul(int(TYPES[name]), ffi.from_buffer(raw), ffi.cast("float *", ffi.from_buffer(X)),
                       ffi.cast("float *", ffi.from_buffer(Y)), rows, cols, n_tok, n_threads)
    assert rc == 0, ffi.string(lib.pl_last_error()).decode()
    return Y


SHAPES = [(1, 32), (7, 64), (67, 96), (130, 512)]
SHAPES_K = [(1, 256), (7, 512), (67, 768), (130, 1536)]  # types with 256-value blocks


@pytest.mark.parametrize("isa", ["scalar", "best"])
@pytest.mark.parametrize("shape", range(len(SHAPES)))
@pytest.mark.parametrize("name", list(TYPES))
def test_matvec_vs_float64(name, shape, isa):
    """The scalar path, and the best path this CPU has (same bounds: only summation order differs)."""
    rows, cols = (SHAPES_K if BLOCK[name][0] == 256 else SHAPES)[shape]
    if isa == "best":
        if lib.pl_cpu_isa() == lib.PL_ISA_SCALAR:
            pytest.skip("this CPU has no faster kernel path")
        lib.pl_set_isa(lib.pl_cpu_isa())
    rng = np.random.default_rng(rows * 1000 + cols)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    raw = encode_matrix(name, w)
    wd = dequant_matrix(name, raw, rows, cols)
    x = (rng.standard_normal(cols) * rng.uniform(0.1, 10, cols)).astype(np.float32)
    y = c_matvec(name, raw, x, rows, cols).astype(np.float64)
    exact = wd @ x.astype(np.float64)
    # float32 accumulation: a few ulps of the sum of |terms| (generous: 4 * cols * eps32)
    wmag = magnitude_matrix(name, raw, rows, cols)
    fp_bound = 4 * cols * 2.0 ** -24 * (wmag @ np.abs(x.astype(np.float64))) + 1e-30
    if name in QUANT:
        d = np.abs(x.reshape(-1, 32)).max(axis=1) / 127.0          # activation block scales
        act_bound = (np.abs(wd).reshape(rows, -1, 32).sum(axis=2) * (d / 2)).sum(axis=1)
        bound = act_bound * (1 + 1e-3) + fp_bound
        assert np.all(np.abs(y - exact) <= bound), (
            f"{name}: max excess {np.max(np.abs(y - exact) - bound)} over the 8-bit activation bound")
        # tight: numpy with the activations rounded the documented way
        xq = quantize_activations_q8(x)
        exact_q = wd @ xq
        fp_q = 4 * cols * 2.0 ** -24 * (wmag @ np.abs(xq)) + 1e-30
        err = np.abs(y - exact_q)
        assert np.all(err <= fp_q), f"{name}: vs q8-activation numpy, worst err/bound {np.max(err / fp_q):.3g}"
    else:
        err = np.abs(y - exact)
        assert np.all(err <= fp_bound), f"{name}: worst err/bound {np.max(err / fp_bound):.3g}"


@pytest.mark.parametrize("cols", [96, 896, 2048, 2080, 4864])  # 2080: one quad past the whole-row stream
@pytest.mark.parametrize("name", ["Q5_0", "Q5_1", "IQ4_NL"])
def test_amd_and_other_read_orders_match_numpy_and_each_other(name, cols):
    """AVX-512 decode reads these rows one at a time on AMD CPUs (up to 2048 values) and 16 side
    by side elsewhere (pl_set_amd_reads). Whichever this machine picks, both orders are checked
    here against numpy, and must give the same bits: the tile computes a batch that way."""
    if lib.pl_cpu_isa() != lib.PL_ISA_AVX512:
        pytest.skip("the two read orders are AVX-512 kernels")
    lib.pl_set_isa(lib.PL_ISA_AVX512)  # this file's tests start on the scalar set
    rng = np.random.default_rng(cols)
    rows = 37  # two panels of 16 and one of 5
    raw = encode_matrix(name, rng.standard_normal((rows, cols)).astype(np.float32))
    x = (rng.standard_normal(cols) * rng.uniform(0.1, 10, cols)).astype(np.float32)
    xq = quantize_activations_q8(x)
    want = dequant_matrix(name, raw, rows, cols) @ xq
    bound = 4 * cols * 2.0 ** -24 * (magnitude_matrix(name, raw, rows, cols) @ np.abs(xq)) + 1e-30
    out = in_both_read_orders(lib, lambda: [c_matvec(name, raw, x, rows, cols, t) for t in (1, 2)])
    for y in out[1] + out[0]:
        err = np.abs(y - want)
        assert np.all(err <= bound), f"{name}: worst err/bound {np.max(err / bound):.3g}"
    for a, b in zip(out[1], out[0]):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("name", list(TYPES))
def test_matmul_equals_matvec_per_token(name):
    rng = np.random.default_rng(99)
    rows, cols, n_tok = 45, 2 * BLOCK[name][0] if BLOCK[name][0] > 32 else 128, 9
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    raw = encode_matrix(name, w)
    X = rng.standard_normal((n_tok, cols)).astype(np.float32)
    Y = c_matmul(name, raw, X, rows, cols)
    for t in range(n_tok):
        y = c_matvec(name, raw, X[t], rows, cols)
        assert np.array_equal(Y[t], y), f"{name}: token {t}: max diff {np.max(np.abs(Y[t] - y))}"


@pytest.mark.parametrize("name", ["F32", "Q4_1", "Q4_K", "Q6_K"])
def test_threads_do_not_change_results(name):
    rng = np.random.default_rng(5)
    rows, cols = 101, 256
    raw = encode_matrix(name, rng.standard_normal((rows, cols)).astype(np.float32))
    x = rng.standard_normal(cols).astype(np.float32)
    y1 = c_matvec(name, raw, x, rows, cols, n_threads=1)
    y2 = c_matvec(name, raw, x, rows, cols, n_threads=2)
    assert np.array_equal(y1, y2)
    X = rng.standard_normal((5, cols)).astype(np.float32)
    assert np.array_equal(c_matmul(name, raw, X, rows, cols, 1), c_matmul(name, raw, X, rows, cols, 2))


def test_unsupported_type_is_an_error_not_a_crash():
    raw = bytes(66 * 4)
    out = np.empty(256, dtype=np.float32)
    rc = lib.pl_dequantize(16, ffi.from_buffer(raw), ffi.cast("float *", ffi.from_buffer(out)), 256)  # IQ2_XXS
    assert rc != 0
    assert "IQ2_XXS" in ffi.string(lib.pl_last_error()).decode()


@pytest.mark.parametrize("name", ["Q4_K", "IQ4_XS", "Q5_0"])
def test_partial_block_is_an_error(name):
    """A length that is not a whole number of the type's blocks is refused."""
    blk = BLOCK[name][0]
    raw = bytes(BLOCK[name][1] * 2)
    out = np.empty(2 * blk, dtype=np.float32)
    rc = lib.pl_dequantize(int(TYPES[name]), ffi.from_buffer(raw), ffi.cast("float *", ffi.from_buffer(out)),
                           blk + 8)
    assert rc != 0 and name in ffi.string(lib.pl_last_error()).decode()
    cols = blk + (32 if blk > 32 else 8)  # a whole number of activation blocks, but not of weight blocks
    x = np.zeros(cols, dtype=np.float32)
    y = np.empty(1, dtype=np.float32)
    rc = lib.pl_matvec(int(TYPES[name]), ffi.from_buffer(raw), ffi.cast("float *", ffi.from_buffer(x)),
                       ffi.cast("float *", ffi.from_buffer(y)), 1, cols, 1)
    assert rc != 0 and "multiple of" in ffi.string(lib.pl_last_error()).decode()
