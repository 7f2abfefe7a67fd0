"""Quantize a GGUF model: ``python -m pyllama.quantize IN.gguf OUT.gguf TYPE``.

    python -m pyllama.quantize IN.gguf OUT.gguf Q4_K_M [-t THREADS] [--allow-requantize]
    python -m pyllama.quantize --dry-run IN.gguf Q4_K_M

TYPE is one of llama.cpp's file types; the rules each tensor's type follows, and the work, are
in :mod:`pyllama.quantize`. ``--dry-run`` prints each tensor's planned type and the file size.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ModelError
from ..gguf import ggml_type_name
from ..quantize import FILE_TYPES, QuantizeResult, parse_file_type, quantize


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def print_plan(result: QuantizeResult, n_elements: int, stream=None) -> None:
    stream = stream or sys.stdout
    for p in result.plans:
        change = f"{ggml_type_name(p.src_type):>6s} -> {ggml_type_name(p.dst_type):<6s}" \
            if p.src_type != p.dst_type else f"{ggml_type_name(p.src_type):>6s} (kept)  "
        print(f"{p.name:40s} {str(list(p.shape)):20s} {change} {_mib(p.dst_bytes):>12s}", file=stream)
    bpw = lambda b: 8.0 * b / max(n_elements, 1)  # noqa: E731
    print(f"tensor data: {_mib(result.src_size)} ({bpw(result.src_size):.2f} BPW) -> {_mib(result.dst_size)} "
          f"({bpw(result.dst_size):.2f} BPW)", file=stream)
    print(f"output file size: {result.file_size} bytes ({_mib(result.file_size)})", file=stream)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyllama.quantize",
                                 description="Quantize a GGUF model with llama.cpp's per-tensor type choices.")
    ap.add_argument("paths", nargs="+", metavar="IN OUT TYPE",
                    help="source GGUF, output GGUF (omitted with --dry-run) and file type: " + ", ".join(FILE_TYPES))
    ap.add_argument("-t", "--threads", type=int, default=None, help="threads (default: all CPUs)")
    ap.add_argument("--allow-requantize", action="store_true",
                    help="accept a quantized source (dequantized first; lower quality than from F16/F32)")
    ap.add_argument("--dry-run", action="store_true", help="print each tensor's type and the file size; write nothing")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    args = ap.parse_args(argv)
    if args.dry_run and len(args.paths) == 2:
        src, dst, ftype = args.paths[0], None, args.paths[1]
    elif len(args.paths) == 3:
        src, dst, ftype = args.paths
    else:
        ap.error("expected IN OUT TYPE (or IN TYPE with --dry-run)")
    try:
        parse_file_type(ftype)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"-t must be at least 1 (got {args.threads})")
        result = quantize(src, dst, ftype, n_threads=args.threads, allow_requantize=args.allow_requantize,
                          dry_run=args.dry_run, progress=not args.quiet)
    except (ModelError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n_elements = 0
    for p in result.plans:
        k = 1
        for d in p.shape:
            k *= d
        n_elements += k
    if args.dry_run:
        print_plan(result, n_elements)
    else:
        print(f"wrote {dst}: {_mib(result.src_size)} -> {_mib(result.dst_size)} of tensor data "
              f"({8.0 * result.dst_size / max(n_elements, 1):.2f} BPW), {result.file_size} bytes", file=sys.stderr)
    return 0
