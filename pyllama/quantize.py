"""Quantize a GGUF model as llama-quantize does (the command: pyllama/cli/quantize.py).

TYPE names a llama.cpp file type: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L,
Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, IQ4_NL. Each tensor's type follows llama-quantize's rules
(llama.cpp's src/llama-quant.cpp, read and re-implemented here): 1-D tensors, norms and a few
small tables keep their type; the output matrix (or, when it is tied, the token embedding)
becomes Q6_K; the _S/_M/_L mixes give attn_v and ffn_down more bits in chosen layers; a row
length that is not a multiple of a type's block falls back to a 32-value type (or F16).
The file keeps the source's metadata with ``general.file_type`` set to llama.cpp's number for
TYPE and ``general.quantization_version`` = 2.

The source may be F32, F16 or BF16. A quantized source is refused unless
``--allow-requantize`` (its tensors are dequantized first, as llama-quantize does; quality is
lower than quantizing from the original floats). The quantization itself runs in C
(csrc/quantize.c) on ``-t`` threads.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import ModelError, c_error
from .gguf import (GGML_BLOCK_SIZES, GGMLType, GGUFFile, GGUFValue, ValueType, _as_tuple, _encode_str,
                   _encode_value, _infer_type, ggml_type_name, read_gguf, tensor_nbytes, write_gguf)

T = GGMLType

# llama.cpp's file types (LLAMA_FTYPE_MOSTLY_*): number and the type most tensors get
FILE_TYPES: dict[str, tuple[int, int]] = {
    "Q4_0": (2, T.Q4_0),
    "Q4_1": (3, T.Q4_1),
    "Q8_0": (7, T.Q8_0),
    "Q5_0": (8, T.Q5_0),
    "Q5_1": (9, T.Q5_1),
    "Q2_K": (10, T.Q2_K),
    "Q3_K_S": (11, T.Q3_K),
    "Q3_K_M": (12, T.Q3_K),
    "Q3_K_L": (13, T.Q3_K),
    "Q4_K_S": (14, T.Q4_K),
    "Q4_K_M": (15, T.Q4_K),
    "Q5_K_S": (16, T.Q5_K),
    "Q5_K_M": (17, T.Q5_K),
    "Q6_K": (18, T.Q6_K),
    "IQ4_NL": (25, T.IQ4_NL),
}
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION
FLOAT_TYPES = (T.F32, T.F16, T.BF16)

# a K-quant that a row length cannot hold falls back to a 32-value type (llama.cpp's table)
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
             T.IQ4_XS: T.IQ4_NL}

# substrings of 2-D weight names that llama-quantize never quantizes (gating, tiny tables, convolutions)
_KEEP = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
         "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
         "indexer.q_proj.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
         "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
         "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
         "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
         "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
         "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight")
_KEEP_EXACT = ("position_embd.weight", "token_types.weight")


def _block(t: int) -> int:
    return GGML_BLOCK_SIZES[t][0]


def parse_file_type(name: str) -> str:
    key = name.strip().upper()
    if key not in FILE_TYPES:
        raise ValueError(f"unknown quantization type {name!r}: choose one of {', '.join(FILE_TYPES)}")
    return key


def allows_quantization(name: str, n_dims: int) -> bool:
    """Whether llama-quantize would change this tensor's type at all."""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if name in _KEEP_EXACT:
        return False
    return not any(k in name for k in _KEEP)


def category(name: str) -> str:
    """llama.cpp's broad tensor category (first match wins, as there)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                      ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                      ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                      ("ffn_down", "ffn_down")):
        if part in name:
            return cat
    return "other"


_ATTN_V_LIKE = ("attn_v", "attn_qkv", "attn_kv_b")


def _layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def llama_order(names: list[str]) -> list[str]:
    """The order llama-quantize visits tensors in (its counters depend on it): by layer
    number (tensors outside blk.N first), then by name."""
    return sorted(names, key=lambda n: (_layer_of(n), n))


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass
class ModelShape:
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0


def _first_int(v, default: int) -> int:
    if v is None:
        return default
    if isinstance(v, np.ndarray):  # per-layer arrays: llama.cpp's n_gqa() looks at layer 0
        return int(v[0]) if v.size else default
    return int(v)


def model_shape(meta: dict, tensor_names: list[str]) -> ModelShape:
    arch = str(meta.get("general.architecture", ""))
    n_layer = _first_int(meta.get(f"{arch}.block_count"), 0)
    if n_layer <= 0:
        n_layer = 1 + max((_layer_of(n) for n in tensor_names), default=-1)
    n_head = _first_int(meta.get(f"{arch}.attention.head_count"), 0)
    n_head_kv = _first_int(meta.get(f"{arch}.attention.head_count_kv"), n_head)
    n_expert = _first_int(meta.get(f"{arch}.expert_count"), 0)
    return ModelShape(arch, n_layer, n_head, n_head_kv, n_expert)


class _Counters:
    def __init__(self, n_attn_v: int, n_layer: int):
        self.n_attn_v, self.i_attn_v = n_attn_v, 0
        self.n_ffn_down, self.i_ffn_down = n_layer, 0


def _mix_type(ftype: str, t: int, name: str, cat: str, ne0: int, shape: ModelShape, tied: bool,
              c: _Counters) -> int:
    """llama_tensor_get_type_impl for the file types above: the type of one quantizable tensor
    before the block-size fallback. Advances the attn_v / ffn_down counters as llama.cpp does."""
    falcon = shape.arch == "falcon"
    if cat == "output" or (tied and cat == "token_embd"):
        if falcon or ne0 % _block(t):
            return T.Q8_0
        return t if t == T.Q8_0 else T.Q6_K
    if cat == "token_embd":
        return t
    if cat in _ATTN_V_LIKE:
        i, n = c.i_attn_v, c.n_attn_v
        c.i_attn_v += 1
        if ftype == "Q2_K":
            t = T.Q4_K if shape.n_gqa >= 4 else T.Q3_K
        elif ftype == "Q3_K_M":
            t = T.Q5_K if i < 2 else T.Q4_K
        elif ftype == "Q3_K_L":
            t = T.Q5_K
        elif ftype == "IQ4_NL" and shape.n_gqa >= 4:
            t = T.Q5_K
        elif ftype in ("Q4_K_M", "Q5_K_M") and more_bits(i, n):
            t = T.Q6_K
        elif ftype == "Q4_K_S" and i < 4:
            t = T.Q5_K
        if shape.n_expert == 8:
            t = T.Q8_0
        return t
    if cat == "attn_k":
        return T.Q8_0 if shape.n_expert == 8 else t
    if cat == "ffn_down":
        i, n = c.i_ffn_down, c.n_ffn_down
        c.i_ffn_down += 1
        if shape.n_expert > 1:  # expert tensors need not come in layer order: read the layer from the name
            i = _layer_of(name)
            if not 0 <= i < n:
                raise ModelError(f"tensor {name!r}: cannot tell its layer (0..{n - 1})")
        if ftype == "Q2_K":
            return T.Q3_K
        if ftype == "Q3_K_M":
            return T.Q5_K if i < n // 16 else (T.Q4_K if not falcon or more_bits(i, n) else T.Q3_K)
        if ftype == "Q3_K_L":
            return T.Q4_K if falcon else T.Q5_K
        if ftype == "Q4_K_M":
            if falcon:
                return T.Q6_K if i < n // 16 else (T.Q5_K if more_bits(i, n) else T.Q4_K)
            return T.Q6_K if more_bits(i, n) else t
        if i < n // 8 and ftype == "IQ4_NL":
            return T.Q5_K
        if ftype == "Q5_K_M" and more_bits(i, n):
            return T.Q6_K
        if ftype == "Q4_K_S" and not falcon and i < n // 8:
            return T.Q5_K
        return t
    if cat == "attn_output":
        if not falcon:
            if shape.n_expert == 8:
                if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M"):
                    return T.Q5_K
            elif ftype == "Q2_K":
                return T.Q3_K
            elif ftype == "Q3_K_M":
                return T.Q4_K
            elif ftype == "Q3_K_L":
                return T.Q5_K
        elif ftype == "Q3_K_L":
            return T.Q4_K
    return t


def _fallback(t: int, ne0: int) -> int:
    if ne0 % _block(t) == 0:
        return t
    t = _FALLBACK.get(t, t)
    return t if ne0 % _block(t) == 0 else T.F16


@dataclass
class Plan:
    """What happens to one tensor."""
    name: str
    shape: tuple
    src_type: int
    dst_type: int
    src_bytes: int
    dst_bytes: int


def plan_types(g: GGUFFile, ftype: str) -> list[Plan]:
    """The type each tensor of `g` gets for file type `ftype`, in the file's tensor order."""
    ftype = parse_file_type(ftype)
    default = FILE_TYPES[ftype][1]
    names = [t.name for t in g.tensors]
    shape = model_shape(g.metadata, names)
    cats = {n: category(n) for n in names}
    tied = "output" not in cats.values()
    counters = _Counters(sum(c in _ATTN_V_LIKE for c in cats.values()), shape.n_layer)
    by_name = {t.name: t for t in g.tensors}
    chosen = {}
    for n in llama_order(names):
        t = by_name[n]
        if not allows_quantization(n, len(t.shape)):
            chosen[n] = t.type
            continue
        new = _mix_type(ftype, default, n, cats[n], t.shape[0], shape, tied, counters)
        chosen[n] = _fallback(new, t.shape[0])
    return [Plan(t.name, t.shape, t.type, chosen[t.name], t.nbytes, tensor_nbytes(chosen[t.name], t.shape))
            for t in g.tensors]


def output_metadata(g: GGUFFile, ftype: str) -> dict:
    meta = g.typed_metadata()
    meta["general.quantization_version"] = GGUFValue(QUANTIZATION_VERSION, ValueType.UINT32)
    meta["general.file_type"] = GGUFValue(FILE_TYPES[ftype][0], ValueType.UINT32)
    for k in ("split.no", "split.count", "split.tensors.count"):
        meta.pop(k, None)
    return meta


def file_size(meta: dict, plans: list[Plan], alignment: int) -> int:
    """Bytes of the GGUF file write_gguf produces for this metadata and these tensors."""
    head = [b"GGUF", struct.pack("<IQQ", 3, len(plans), len(meta))]
    for key, v in meta.items():
        t = _infer_type(v)
        head.append(_encode_str(key))
        head.append(struct.pack("<I", _as_tuple(t)[0]))
        _encode_value(v, t, head)
    for p in plans:
        head.append(_encode_str(p.name))
        head.append(struct.pack(f"<I{len(p.shape)}QIQ", len(p.shape), *p.shape, 0, 0))
    n = sum(len(b) for b in head)
    n += -n % alignment
    return n + sum(-(-p.dst_bytes // alignment) * alignment for p in plans)


def _check_sources(plans: list[Plan], allow_requantize: bool, lib) -> None:
    for p in plans:
        if p.src_type == p.dst_type:
            continue
        if p.src_type not in FLOAT_TYPES and not allow_requantize:
            raise ModelError(f"tensor {p.name!r} is already quantized ({ggml_type_name(p.src_type)}): requantizing "
                             "loses quality; quantize from the F32/F16/BF16 original, or pass "
                             "--allow-requantize to dequantize and quantize again")
        if lib is not None and not lib.pl_type_block_size(p.src_type) > 0:
            raise ModelError(f"tensor {p.name!r}: pyllama cannot read its type {ggml_type_name(p.src_type)}")


def _convert(g: GGUFFile, p: Plan, n_threads: int):
    """The bytes of tensor `p` in its new type (a view of the source when the type is unchanged)."""
    src = g.tensor_bytes(g.tensor(p.name))
    if p.src_type == p.dst_type:
        return src
    from ._core import ffi, lib

    ne0 = p.shape[0]
    n_rows = p.src_bytes // tensor_nbytes(p.src_type, (ne0,))
    if p.dst_type == T.F16:  # the fallback for a row too short for any block type
        from .convert import dequantize

        return dequantize(src, p.src_type, name=f"tensor {p.name!r}").astype(np.float16)
    out = np.empty(p.dst_bytes, np.uint8)
    if lib.pl_quantize_rows(p.src_type, ffi.from_buffer(src), p.dst_type, ffi.from_buffer(out), n_rows, ne0,
                            n_threads) != 0:
        raise ModelError(f"tensor {p.name!r}: {c_error()}")
    return out


@dataclass
class QuantizeResult:
    plans: list
    src_size: int  # bytes of tensor data in the source
    dst_size: int  # bytes of tensor data in the output
    file_size: int  # bytes of the whole output file


def quantize(in_path, out_path: Optional[str], ftype: str, n_threads: Optional[int] = None,
             allow_requantize: bool = False, dry_run: bool = False, progress: bool = True) -> QuantizeResult:
    """Quantize the GGUF model at `in_path` into `out_path` (llama.cpp file type `ftype`, e.g. "Q4_K_M").

    dry_run: only plan (no output written; `out_path` may be None). Raises ValueError for an
    unknown type or thread count, ModelError for an unreadable source or one that is already
    quantized (without allow_requantize).
    """
    ftype = parse_file_type(ftype)
    if n_threads is None:
        n_threads = os.cpu_count() or 1
    if n_threads < 1:
        raise ValueError(f"threads must be at least 1 (got {n_threads})")
    if not dry_run and not out_path:
        raise ValueError("an output path is needed unless dry_run")
    g = read_gguf(in_path)
    try:
        plans = plan_types(g, ftype)
        lib = None
        if not dry_run:
            from ._core import lib
        _check_sources(plans, allow_requantize, lib)
        meta = output_metadata(g, ftype)
        result = QuantizeResult(plans, sum(p.src_bytes for p in plans), sum(p.dst_bytes for p in plans),
                                file_size(meta, plans, g.alignment))
        if dry_run:
            return result
        from .cli.progress import Progress

        bar = Progress("quantizing", result.src_size, enabled=progress)
        n = len(plans)

        def data_of(i: int, p: Plan):
            def make():
                bar.label = f"quantizing [{i + 1:{len(str(n))}d}/{n}] {p.name:<32.32s}"  # fixed width: redrawn in place
                data = _convert(g, p, n_threads)
                bar.update(p.src_bytes)
                return data
            return make

        tensors = [(p.name, p.dst_type, p.shape, data_of(i, p)) for i, p in enumerate(plans)]
        write_gguf(out_path, meta, tensors, alignment=g.alignment)
        bar.label = f"quantized {n} tensors"
        bar.close()
        return result
    finally:
        g.close()


if __name__ == "__main__":  # python -m pyllama.quantize: the command is pyllama/cli/quantize.py
    from .cli import run
    from .cli.quantize import main

    run(main)
