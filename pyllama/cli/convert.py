"""Convert between GGUF and llama2.c checkpoints.

    python -m pyllama.convert IN OUT [--format llama2c-v0|llama2c-v1|llama2c-v2|gguf]
                                     [--tokenizer-out tokenizer.bin] [--tokenizer tokenizer.bin]

A GGUF input becomes a llama2.c checkpoint (default: the legacy v0 format); a llama2.c input
becomes a GGUF file with float32 tensors. The formats and what converting keeps are described
in :mod:`pyllama.convert`, which does the work.
"""
from __future__ import annotations

import argparse
import sys

from ..convert import gguf_to_llama2c, llama2c_to_gguf, tokenizer_bin_from_gguf, write_tokenizer_bin
from ..errors import ModelError, TokenizerError
from .progress import log


def _is_gguf(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError as e:
        raise ModelError(f"cannot open {path}: {e.strerror or e}") from e


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyllama.convert",
                                 description="Convert GGUF <-> llama2.c checkpoints.")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--format", choices=["llama2c-v0", "llama2c-v1", "llama2c-v2", "gguf"],
                    help="output format (default: llama2c-v0 for a GGUF input, gguf otherwise)")
    ap.add_argument("--group-size", type=int, default=64, help="llama2c-v2 quantization group size (default 64)")
    ap.add_argument("--seq-len", type=int, help="llama2.c seq_len (default: the GGUF's context length)")
    ap.add_argument("--tokenizer-out", help="also write the GGUF vocabulary as a llama2.c tokenizer.bin")
    ap.add_argument("--tokenizer", help="llama2.c tokenizer.bin to embed when writing GGUF")
    ap.add_argument("--vocab-from", help="GGUF file whose tokenizer.* metadata to copy when writing GGUF")
    ap.add_argument("--rope-base", type=float, default=10000.0, help="rope base for GGUF output (run.c: 10000)")
    ap.add_argument("--norm-eps", type=float, default=1e-5, help="RMSNorm epsilon for GGUF output (run.c: 1e-5)")
    ap.add_argument("--bos-id", type=int, default=1)
    ap.add_argument("--eos-id", type=int, default=2)
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    args = ap.parse_args(argv)
    progress = not args.quiet
    try:
        src_gguf = _is_gguf(args.input)
        fmt = args.format or ("llama2c-v0" if src_gguf else "gguf")
        if fmt == "gguf":
            if src_gguf:
                ap.error("the input is already GGUF")
            if args.tokenizer and args.vocab_from:
                ap.error("give --tokenizer or --vocab-from, not both")
            c = llama2c_to_gguf(args.input, args.output, args.tokenizer, args.rope_base, args.norm_eps,
                                args.bos_id, args.eos_id, progress=progress, vocab_from=args.vocab_from)
            log(f"wrote {args.output} (GGUF, F32) from llama2.c v{c.version}")
        else:
            if not src_gguf:
                ap.error("llama2.c -> llama2.c conversion is not supported; the input must be GGUF")
            version = int(fmt[-1])
            c = gguf_to_llama2c(args.input, args.output, version, args.group_size, args.seq_len, progress)
            log(f"wrote {args.output} (llama2.c v{version}: dim {c.dim}, hidden {c.hidden_dim}, "
                f"{c.n_layers} layers, {c.n_heads}/{c.n_kv_heads} heads, vocab {c.vocab_size}, "
                f"seq_len {c.seq_len}, {'shared' if c.shared_classifier else 'separate'} classifier)")
        if args.tokenizer_out:
            if not src_gguf:
                ap.error("--tokenizer-out needs a GGUF input")
            from ..gguf import read_metadata

            toks, scores, mx = tokenizer_bin_from_gguf(read_metadata(args.input))
            write_tokenizer_bin(args.tokenizer_out, toks, scores, mx)
            log(f"wrote {args.tokenizer_out} ({len(toks)} tokens)")
    except (ModelError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
