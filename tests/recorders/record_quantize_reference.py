"""Record which type llama-quantize gives each tensor of the tiny models in tests/test_quantize.py.

    python tests/recorders/record_quantize_reference.py [--llama-quantize PATH]

For every file type pyllama.quantize offers, runs ``llama-quantize --dry-run`` on tiny random
models (written by tests/support/tiny_models.py, deterministic) and stores the per-tensor types in
tests/data/quantize_types_llamacpp.json. tests/test_quantize.py compares pyllama.quantize's
choices with these. llama-quantize default: the lead's build in
~/.cache/pyllama/llama.cpp-0.3.36/build-noamx/bin (see bench/build_llamacpp.sh; the
llama-quantize target is built with `cmake --build ... --target llama-quantize`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # tests/
sys.path.insert(0, str(HERE))

from support.llamacpp import llamacpp_binary  # noqa: E402
from support.tiny_models import TinySpec, write_tiny_gguf  # noqa: E402

OUT = HERE / "data" / "quantize_types_llamacpp.json"

# the models: K-quant-sized rows with grouped-query attention (n_gqa = 4) and a separate output
# matrix; rows of 64 (every K-quant falls back) with a tied output; 32 layers for the n/16 rules
SPECS = {
    "k256_gqa4_untied": TinySpec(dim=256, hidden_dim=256, n_layers=16, n_heads=8, n_kv_heads=2, tied=False,
                                 wtype="F16", seed=1),
    "r64_tied": TinySpec(dim=64, hidden_dim=96, n_layers=4, n_heads=4, n_kv_heads=4, tied=True, wtype="F16",
                         seed=2),
    "k256_l32_mha": TinySpec(dim=256, hidden_dim=512, n_layers=32, n_heads=4, n_kv_heads=4, tied=True,
                             wtype="F16", context_length=32, seed=3),
}
FILE_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
              "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL"]
LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+-.*type =\s+(\w+),.*?(?:\((\w+)\))?\s*$")


def dry_run(binary: str, model: Path, ftype: str) -> dict:
    r = subprocess.run([binary, "--dry-run", str(model), ftype], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"llama-quantize failed on {model} {ftype}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    types = {}
    for line in (r.stdout + r.stderr).splitlines():
        m = LINE.match(line.strip())
        if m:
            name, src, dst = m.groups()
            types[name] = (dst or src).upper()
    if not types:
        raise RuntimeError(f"no tensor lines in llama-quantize's output for {model} {ftype}")
    return types


# --pure: every 2-D weight in the file type's base type; the error of llama.cpp's quantizers
PURE_TYPES = {"Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0", "Q2_K": "Q2_K",
              "Q3_K_S": "Q3_K", "Q4_K_S": "Q4_K", "Q5_K_S": "Q5_K", "Q6_K": "Q6_K", "IQ4_NL": "IQ4_NL"}
ERROR_MODEL = "k256_gqa4_untied"
ERROR_LAYERS = ("blk.0.", "blk.9.")  # with output.weight: the tensors whose errors are kept


def pure_errors(binary: str, model: Path, tmp: Path) -> dict:
    """Per base type, per 2-D weight that `llama-quantize --pure` quantized to it (output.weight
    and the layers ERROR_LAYERS): the sum of squared errors (dequantized with the gguf
    package) and the sum of squared values."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize

    src = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64) for t in gguf.GGUFReader(model).tensors}
    out = {}
    for ftype, base in PURE_TYPES.items():
        dst = tmp / f"pure.{ftype}.gguf"
        r = subprocess.run([binary, "--pure", str(model), str(dst), ftype], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"llama-quantize --pure {ftype} failed:\n{r.stderr[-2000:]}")
        per_tensor = {}
        for t in gguf.GGUFReader(dst).tensors:
            if t.tensor_type.name != base or not (t.name == "output.weight" or t.name.startswith(ERROR_LAYERS)):
                continue
            x = src[t.name]
            y = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(x.shape)
            per_tensor[t.name] = [float(((y - x) ** 2).sum()), float((x ** 2).sum())]
        out[base] = per_tensor
        dst.unlink()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-quantize", default=os.environ.get("LLAMA_QUANTIZE") or llamacpp_binary("llama-quantize"))
    args = ap.parse_args()
    if not Path(args.llama_quantize).exists():
        print(f"llama-quantize not found at {args.llama_quantize}", file=sys.stderr)
        return 1
    # per model: the tensor names (sorted) and, per file type, their types in that order
    out = {"_recorded_with": f"{args.llama_quantize} --dry-run", "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for key, spec in SPECS.items():
            path = write_tiny_gguf(Path(tmp) / f"{key}.gguf", spec)
            runs = {ft: dry_run(args.llama_quantize, path, ft) for ft in FILE_TYPES}
            names = sorted(runs[FILE_TYPES[0]])
            out["models"][key] = {"tensors": names, "types": {ft: " ".join(t[n] for n in names) for ft, t in runs.items()}}
            print(f"{key}: {len(FILE_TYPES)} file types", file=sys.stderr)
            if key == ERROR_MODEL:
                out["pure_errors"] = {"model": key, "types": pure_errors(args.llama_quantize, path, Path(tmp))}
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
