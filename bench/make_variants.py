"""Requantize a GGUF model (default: the default model) to Q4_0, Q8_0, F16 and F32 for benchmarks.

    python bench/make_variants.py [--model PATH] [--types Q4_0,Q8_0,F16,F32] [--out DIR]

Writes <stem>.<TYPE>.gguf into DIR (default: $PYLLAMA_CACHE/variants or
~/.cache/pyllama/variants; never the repository) and prints the paths, one per line.
Existing files are reused. Uses only the `gguf` package: its dequantizers, its numpy
quantizers and GGUFWriter. The layout mirrors what llama.cpp's quantizer produced
for the files in issue 5's table: 1-D tensors (norms) stay F32; 2-D weights become
the target type, except that a quantized token embedding keeps Q8_0 for the 4-bit
targets (which gives the file sizes in that table: Q4_0 92 MB, Q8_0 145 MB,
F16 271 MB, F32 540 MB).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "BF16": 32}


def cache_dir() -> Path:
    base = os.environ.get("PYLLAMA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pyllama")
    return Path(base) / "variants"


def default_model() -> str:
    from pyllama.models import default_model_path

    return default_model_path()


def _field_value(field):
    import gguf

    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data], vtype, sub
        return [field.parts[i].tolist()[0] for i in field.data], vtype, sub
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="surrogateescape"), vtype, None
    return field.parts[field.data[0]].tolist()[0], vtype, None


def target_type(name: str, n_dims: int, src_type, target: str):
    import gguf

    Q = gguf.GGMLQuantizationType
    if n_dims < 2:
        return Q.F32
    if name == "token_embd.weight" and target in ("Q4_0", "Q4_1") and src_type not in (Q.F32, Q.F16, Q.BF16):
        return Q.Q8_0
    return getattr(Q, target)


def make_variant(src: str, target: str, out: Path) -> Path:
    import gguf
    from gguf import quants

    stem = Path(src).name
    for suffix in (".gguf",):
        stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
    for t in FILE_TYPES:  # SmolLM2-135M-Instruct.Q4_1 -> SmolLM2-135M-Instruct
        stem = stem[: -len(t) - 1] if stem.endswith("." + t) else stem
    dst = out / f"{stem}.{target}.gguf"
    if dst.exists():
        return dst
    out.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(src)
    arch = _field_value(reader.fields["general.architecture"])[0]
    tmp = dst.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        val, vtype, sub = _field_value(field)
        if name == "general.file_type":
            val = FILE_TYPES[target]
        writer.add_key_value(name, val, vtype, sub)
    if "general.file_type" not in reader.fields:
        writer.add_file_type(FILE_TYPES[target])
    for t in reader.tensors:
        shape = [int(v) for v in t.shape]  # GGML order, ne[0] first
        dst_type = target_type(t.name, len(shape), t.tensor_type, target)
        if dst_type == t.tensor_type:
            data = np.array(t.data)
        else:
            f = quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
            f = f.reshape(list(reversed(shape)))
            if dst_type == gguf.GGMLQuantizationType.F32:
                data = f
            elif dst_type == gguf.GGMLQuantizationType.F16:
                data = f.astype(np.float16)
            else:
                data = quants.quantize(f, dst_type)
        writer.add_tensor(t.name, data, raw_dtype=dst_type)
        print(f"  {t.name}: {t.tensor_type.name} -> {dst_type.name}", file=sys.stderr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    # as for a download: out of the page cache, so the first load reads it back in 2 MB folios
    # (RESULTS.md, "Mapped or read into memory") instead of the 4 KB pages the writes left
    from pyllama.models import _drop_page_cache

    with open(tmp, "rb+") as f:
        _drop_page_cache(f.fileno(), str(tmp))
    tmp.rename(dst)
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="source GGUF (default: the default model)")
    p.add_argument("--types", default="Q4_0,Q8_0,F16,F32", help="comma list of target types")
    p.add_argument("--out", default=None, help="output directory (default: the cache)")
    args = p.parse_args(argv)
    src = args.model or default_model()
    out = Path(args.out) if args.out else cache_dir()
    for target in args.types.split(","):
        target = target.strip().upper()
        if target not in FILE_TYPES:
            p.error(f"unsupported type {target} (choose from {', '.join(FILE_TYPES)})")
        print(f"make_variants: {target} ...", file=sys.stderr)
        print(make_variant(src, target, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
