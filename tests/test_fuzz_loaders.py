"""Fuzz the C model loaders and the first forward passes (tests/c/fuzz_model.c, libFuzzer under
ASan and UBSan) for a few seconds from small valid files of every weight type and format.

A corrupt file must be refused with a message, never read out of bounds, crash, hang, or make
the loader allocate without bound; a file the loader accepts must evaluate. Earlier runs of
this harness found the undefined conversion of NaN activations, tensors sharing data and the
quadratic tensor lookup (fixed with tests of their own); a run here that finds something
leaves the offending input in $TMPDIR/pyllama-ctest-fuzz/ and fails.
Skips where clang cannot build libFuzzer targets (CI installs clang).
"""
from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
from pathlib import Path

import pytest

from support import tiny_models

SCRIPT = Path(__file__).resolve().parent / "c" / "run_fuzz_model.sh"
SECONDS_EACH = int(os.environ.get("PYLLAMA_FUZZ_SECONDS", "10"))

SMALL = tiny_models.TinySpec(dim=32, hidden_dim=32, n_heads=2, n_kv_heads=1, n_layers=1, context_length=16)
GGUF_SEEDS = {
    "f32": {},
    "f16-qwen2": dict(arch="qwen2", wtype="F16"),
    "bf16": dict(wtype="BF16", tied=False),
    "q8_0": dict(wtype="Q8_0", n_layers=2),
    "q4_0-llama3": dict(wtype="Q4_0", rope_scaling="llama3", rope_scale_factor=4.0, rope_freqs=True),
    "q4_1-untied": dict(wtype="Q4_1", tied=False, alignment=64),
    "q5_0": dict(wtype="Q5_0"),
    "q5_1-iq4_nl": dict(wtype="Q5_1", tied=False, type_overrides={"blk.0.ffn_down.weight": "IQ4_NL"}),
    # 256-value super-blocks need rows of 256: every K-quant and IQ4_XS in one model (315 KB, hence
    # run_fuzz_model.sh's -max_len of 400000)
    "kquants-qwen2": dict(arch="qwen2", dim=256, hidden_dim=256, n_heads=2, n_kv_heads=1, wtype="Q4_K", tied=False,
                          type_overrides={"output.weight": "Q6_K", "blk.0.ffn_down.weight": "Q5_K",
                                          "blk.0.attn_v.weight": "Q3_K", "blk.0.attn_q.weight": "Q2_K",
                                          "blk.0.attn_k.weight": "IQ4_XS"}),
}


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"),
                    reason="the harness uses memfd and the x86 kernel files")
def test_fuzz_model_loaders(tmp_path):
    gguf_dir, l2c_dir = tmp_path / "gguf", tmp_path / "l2c"
    gguf_dir.mkdir()
    l2c_dir.mkdir()
    for name, changes in GGUF_SEEDS.items():
        tiny_models.write_tiny_gguf(gguf_dir / f"{name}.gguf", dataclasses.replace(SMALL, **changes))
    for tied in (False, True):
        spec = dataclasses.replace(SMALL, tied=tied)
        tiny_models.write_llama2c_v0(l2c_dir / f"v0-{tied}.bin", spec)
        tiny_models.write_llama2c_v1(l2c_dir / f"v1-{tied}.bin", spec)
    proc = subprocess.run(["sh", str(SCRIPT), str(SECONDS_EACH), str(gguf_dir), str(l2c_dir), "-seed=1"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0 and "fuzz: ok" in proc.stdout, (proc.stdout + proc.stderr)[-6000:]
