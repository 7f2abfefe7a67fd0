"""Q4_0P, Q4_1P and Q8_0P, the 16-row panels the loader makes from Q4_0 / Q4_1 / Q8_0 matrices on
AVX-512 (csrc/quants.h), against numpy.

The matrices are random blocks (sane scales), regrouped here by a numpy transcription of the layout
quants.h documents (independent of csrc/quants.c's q_panel_repack), multiplied through pl_matmul as
the panel type on every instruction-set path this CPU has (the scalar reference and AVX2 read each
block back into the file's layout; AVX-512 reads the panels), and compared with the `gguf`
package's dequantization of the original blocks times the 8-bit-rounded activations in float64.
On AVX-512 the panels must also give each token exactly what the file layout's tile gives it in a
batch (the arithmetic is the tile's), whatever the number of tokens per call. The loader's own
regrouping is checked on the default model (slow): logits against PYLLAMA_REPACK=0.
"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package provides the reference dequantizer")
from gguf import GGMLQuantizationType as QT  # noqa: E402

from support.layouts import assert_matches_on_every_path, c_matmul, logits_with_and_without_regrouping  # noqa: E402
from support.reference import quantize_activations_q8  # noqa: E402

core = pytest.importorskip("pyllama._core", reason="the C core (pyllama._core) is not built")
lib = core.lib

# file type: (panel type id, block bytes, bytes of scales (and minimums) ahead of the quants)
PANELS = {"Q4_0": (35, 18, 2), "Q4_1": (36, 20, 4), "Q8_0": (37, 34, 2)}


@pytest.fixture(autouse=True)
def _restore_isa():
    yield
    lib.pl_set_isa(lib.PL_ISA_AUTO)


def random_blocks(kind, rng, rows, cols) -> np.ndarray:
    """rows x (cols / 32) random blocks (uint8): positive d, Q4_1 a negative m, any quant bytes."""
    _, bb, head = PANELS[kind]
    n = rows * cols // 32
    raw = rng.integers(0, 256, (n, bb), dtype=np.uint8)
    raw[:, 0:2] = rng.uniform(2e-4, 4e-3, n).astype(np.float16).view(np.uint8).reshape(-1, 2)
    if kind == "Q4_1":
        raw[:, 2:4] = rng.uniform(-3e-2, -1e-3, n).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, cols // 32, bb)


def to_panels(kind, blocks: np.ndarray) -> np.ndarray:
    """quants.h's panels: per 16 rows and block index, d of rows 0..15 (Q4_1: then m of rows 0..15),
    then quant byte 4h + j of row r at [h][r][j]."""
    _, bb, head = PANELS[kind]
    rows, nb, _ = blocks.shape
    assert rows % 16 == 0
    p = blocks.reshape(rows // 16, 16, nb, bb).transpose(0, 2, 1, 3)  # panel, block, row, byte
    parts = [p[..., k:k + 2].reshape(rows // 16, nb, 32) for k in range(0, head, 2)]
    words = (bb - head) // 4
    qs = p[..., head:].reshape(rows // 16, nb, 16, words, 4).transpose(0, 1, 3, 2, 4)  # h, row, j
    parts.append(qs.reshape(rows // 16, nb, 16 * (bb - head)))
    out = np.concatenate(parts, axis=2)
    assert out.shape[2] == 16 * bb
    return np.ascontiguousarray(out).reshape(-1)


def dequant(kind, blocks: np.ndarray) -> np.ndarray:
    rows = blocks.shape[0]
    w = gguf.quants.dequantize(blocks.reshape(rows, -1), getattr(QT, kind))
    return np.asarray(w, dtype=np.float64).reshape(rows, -1)


def magnitude(kind, blocks: np.ndarray) -> np.ndarray:
    """|d*q| + |m| per weight (else |w|): what the kernels' float rounding is relative to."""
    if kind != "Q4_1":
        return np.abs(dequant(kind, blocks))
    no_m, only_m = blocks.copy(), blocks.copy()
    no_m[..., 2:4] = 0
    only_m[..., 0:2] = 0
    return np.abs(dequant(kind, no_m)) + np.abs(dequant(kind, only_m))



# rows (a multiple of 16: whole panels), rows used (fewer: the last panel in part), cols, tokens, threads
SHAPES = [
    (16, 16, 32, 1, 1),  # a single block
    (16, 16, 576, 1, 1),
    (48, 48, 576, 1, 2),  # 6 groups of 8 on 2 threads: the shares meet inside a panel
    (32, 20, 256, 1, 1),  # the last panel in part
    (32, 32, 512, 2, 2),
    (48, 40, 320, 3, 2),
    (16, 16, 256, 7, 1),
    (64, 64, 1536, 8, 2),
    (32, 32, 608, 9, 1),  # more tokens than a pass takes: chunks unpacked once (19 blocks: a short last chunk)
    (48, 44, 512, 33, 2),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", list(PANELS))
def test_panels_match_numpy_on_every_path(kind, shape):
    rows, used, cols, n_tok, n_threads = shape
    rng = np.random.default_rng(rows * 7919 + cols + n_tok)
    blocks = random_blocks(kind, rng, rows, cols)
    raw = to_panels(kind, blocks)
    x = (rng.standard_normal((n_tok, cols)) * rng.uniform(0.1, 10, cols)).astype(np.float32)
    xq = quantize_activations_q8(x)
    want = xq @ dequant(kind, blocks)[:used].T
    bound = 4 * cols * 2.0 ** -24 * (np.abs(xq) @ magnitude(kind, blocks)[:used].T) + 1e-30
    assert_matches_on_every_path(PANELS[kind][0], raw, x, used, cols, n_threads, want, bound, str(shape))


@pytest.mark.parametrize("kind", list(PANELS))
def test_panels_give_each_token_the_file_layouts_tile_result_bitwise(kind):
    """AVX-512: a token's result from the panels, alone or with any number of others, equals the
    file layout's tile result for it in a batch, bit for bit (the same per-block float steps)."""
    if lib.pl_cpu_isa() != lib.PL_ISA_AVX512:
        pytest.skip("the panels are read directly only by the AVX-512 kernels")
    rng = np.random.default_rng(11)
    rows, cols, n_tok = 64, 1088, 20  # 34 blocks: the prompt path's chunks of 16 end short
    blocks = random_blocks(kind, rng, rows, cols)
    raw, panels = np.ascontiguousarray(blocks.reshape(-1)), to_panels(kind, blocks)
    x = rng.standard_normal((n_tok, cols)).astype(np.float32)
    tile = c_matmul(int(getattr(QT, kind)), raw, x, rows, cols, 2)  # the file layout's tile
    for k in (1, 2, 3, 4, 5, 6, 7, 8, 9, 20):
        got = c_matmul(PANELS[kind][0], panels, x[:k], rows, cols, 2)
        assert np.array_equal(got, tile[:k]), f"{k} tokens: max diff {np.max(np.abs(got - tile[:k]))}"
    one = np.concatenate([c_matmul(PANELS[kind][0], panels, x[t:t + 1], rows, cols, 1) for t in range(n_tok)])
    assert np.array_equal(one, tile)


@pytest.mark.slow
def test_loader_panels_keep_the_logits(monkeypatch, default_model_path):
    """The default model (Q4_1 layers, a tied Q8_0 embedding and output): a prompt's logits with
    the matrices in panels equal the file layout's tile results bit for bit; one-token decode
    (the tile's arithmetic now) equals the prompt batch bit for bit, and the file layout's decode
    rows within float summation order spread by the 8-bit rounding of each layer's input."""
    if lib.pl_cpu_isa() != lib.PL_ISA_AVX512:
        pytest.skip("the loader regroups into panels only on CPUs with AVX-512 VNNI")
    tokens = [1, 504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30, 10527, 2287, 253, 655]
    batch, rows = logits_with_and_without_regrouping(monkeypatch, default_model_path, tokens)
    assert np.array_equal(batch["1"], batch["0"])
    assert np.array_equal(rows["1"], batch["1"])
    spread = float(np.ptp(batch["0"]))
    np.testing.assert_allclose(rows["1"], rows["0"], rtol=0, atol=5e-2 * spread)
