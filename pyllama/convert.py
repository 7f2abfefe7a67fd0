"""Convert between GGUF and llama2.c checkpoints (the command: pyllama/cli/convert.py).

A GGUF input becomes a llama2.c checkpoint (default: the legacy v0 format); a llama2.c
input becomes a GGUF file with float32 tensors (and a vocabulary when ``--tokenizer`` names
a llama2.c ``tokenizer.bin``).

llama2.c formats (all little-endian, weights row-major (out_features, in_features)):

* v0 (legacy, run.c): header of 7 int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads,
  vocab_size (negative when the classifier is NOT shared with the token embedding), seq_len.
  Then fp32: token_embedding (vocab, dim), rms_att (n_layers, dim), wq, wk, wv, wo (each for
  all layers), rms_ffn, w1, w2, w3, rms_final (dim), freq_cis_real and freq_cis_imag
  (seq_len * head_size/2 each, ignored by run.c) and wcls (vocab, dim) if not shared.
* v1: uint32 magic 0x616b3432 ("ak42"), int32 version 1, the 7 int32 (vocab_size
  positive), uint8 shared_classifier, zero padding to 256 bytes; then fp32: rms_att (all
  layers), rms_ffn, rms_final, token_embedding, wq, wk, wv, wo, w1, w2, w3, [wcls].
* v2 (runq.c): like v1 with version 2 and an int32 group_size right after the flag byte;
  then fp32 rms_att, rms_ffn, rms_final; then for each of token_embedding, wq[0..L), wk..,
  wv.., wo.., w1.., w2.., w3.., [wcls]: its int8 values followed by its fp32 scales, one per
  group of group_size consecutive values (symmetric Q8_0: x = q * scale, q in [-127, 127]).

Rotary embeddings: run.c rotates adjacent pairs (x[2i], x[2i+1]) of each head.  llama.cpp's
converter already stores the q/k weights of `llama` GGUF files in that adjacent-pair
layout (it permutes the Hugging Face "half-split" rows when it writes them), so tensors
are copied between the two formats WITHOUT any permutation.  Architectures that use the
half-split ("neox") rotation are refused rather than silently changed.

llama2.c files record neither the rope base (run.c: 10000), the RMSNorm epsilon (1e-5) nor
BOS/EOS ids (1/2); converting to llama2.c prints the GGUF's values, and converting back takes
them as options.

Shapes: GGUF lists dimensions in GGML order, ne[0] first = the contiguous row length
(in_features), so a GGUF tensor of shape (in, out) is exactly llama2.c's row-major
(out, in) matrix: the bytes are in the same order.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from ._bpe import BYTE_TO_CHAR
from .cli.progress import Progress, log
from .errors import ModelError, c_error
from .gguf import GGMLType, GGUFValue, ValueType, ggml_type_name, read_gguf, write_gguf

LLAMA2C_MAGIC = 0x616B3432  # "ak42"
LLAMA2C_HEADER_SIZE = 256

# ----------------------------------------------------------------------------------------
# dequantization of GGUF tensor data (the C core's dequantizers)


def dequantize(raw: np.ndarray, ggml_type: int, shape=None, name: str = "tensor") -> np.ndarray:
    """Dequantize the raw bytes of a GGUF tensor to float32 (csrc/quants.c: every type this
    build reads; ModelError naming the tensor for any other).

    `shape` is in GGML order (ne[0] first); the result has the numpy (row-major) shape
    reversed(shape), or is flat when `shape` is None.
    """
    from ._core import ffi, lib

    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    block = lib.pl_type_block_size(ggml_type) if 0 <= ggml_type < 1 << 16 else -1
    if block <= 0:
        raise ModelError(f"{name}: tensor type {ggml_type_name(ggml_type)} cannot be read by this build "
                         "of pyllama, so it cannot be converted")
    block_bytes = lib.pl_type_block_bytes(ggml_type)
    if raw.size % block_bytes:
        raise ModelError(f"{name}: {raw.size} bytes is not a whole number of {block_bytes}-byte "
                         f"{ggml_type_name(ggml_type)} blocks")
    out = np.empty(raw.size // block_bytes * block, np.float32)
    if lib.pl_dequantize(ggml_type, ffi.from_buffer(raw), ffi.from_buffer("float[]", out), out.size) != 0:
        raise ModelError(f"{name}: {c_error('cannot dequantize')}")
    if shape is not None:
        want = math.prod(shape)
        if out.size != want:
            raise ModelError(f"{name}: {out.size} values but shape {tuple(shape)} needs {want}")
        out = out.reshape(tuple(reversed(tuple(shape))))
    return out


def quantize_q8_groups(w: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """llama2.c v2 quantization: symmetric int8 per group of `group_size` consecutive values.

    Returns (int8 values, float32 scales, max abs error).  scale = max|w| / 127 per group and
    q = round(w / scale) (round half to even); an all-zero group gets scale 0 and q 0.
    """
    w = np.ascontiguousarray(w, dtype=np.float32).reshape(-1, group_size)
    scale = (np.abs(w).max(axis=1) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale == 0, np.float32(1.0), scale)
    q = np.rint(w / safe[:, None]).astype(np.int8)
    err = float(np.abs(q.astype(np.float32) * scale[:, None] - w).max()) if w.size else 0.0
    return q.reshape(-1), scale, err


# ----------------------------------------------------------------------------------------
# llama2.c model description


@dataclass
class Llama2cConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int  # always positive here
    seq_len: int
    shared_classifier: bool
    version: int = 0
    group_size: int = 0  # version 2 only

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size

    def validate(self, what: str) -> None:
        for f in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"):
            v = getattr(self, f)
            if v <= 0 or v > 1 << 24:
                raise ModelError(f"{what}: header field {f} = {v} is out of range")
        if self.dim % self.n_heads:
            raise ModelError(f"{what}: dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ModelError(f"{what}: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_size % 2:
            raise ModelError(f"{what}: head size {self.head_size} is odd (rotary embeddings need pairs)")
        if self.version == 2 and (self.group_size <= 0 or self.dim % self.group_size
                                  or self.hidden_dim % self.group_size):
            raise ModelError(f"{what}: group_size {self.group_size} does not divide dim {self.dim} "
                             f"and hidden_dim {self.hidden_dim}")


# The per-layer matrices in llama2.c order, with their GGUF names and (out, in) shapes.
def _layer_matrices(c: Llama2cConfig):
    return [
        ("wq", "attn_q", (c.dim, c.dim)),
        ("wk", "attn_k", (c.kv_dim, c.dim)),
        ("wv", "attn_v", (c.kv_dim, c.dim)),
        ("wo", "attn_output", (c.dim, c.dim)),
        ("w1", "ffn_gate", (c.hidden_dim, c.dim)),
        ("w2", "ffn_down", (c.dim, c.hidden_dim)),
        ("w3", "ffn_up", (c.hidden_dim, c.dim)),
    ]


def _layout(c: Llama2cConfig):
    """The tensors of a llama2.c file in file order: list of (gguf_name, numpy shape, kind).

    kind: "f32" (plain float32), "q8" (v2 quantized: int8 then scales) or "freq" (v0 rope tables).
    """
    L = range(c.n_layers)
    norms_att = [(f"blk.{i}.attn_norm.weight", (c.dim,), "f32") for i in L]
    norms_ffn = [(f"blk.{i}.ffn_norm.weight", (c.dim,), "f32") for i in L]
    final = [("output_norm.weight", (c.dim,), "f32")]
    emb = ("token_embd.weight", (c.vocab_size, c.dim))
    mats = [(f"blk.{i}.{g}.weight", shape) for _, g, shape in _layer_matrices(c) for i in L]
    cls = [] if c.shared_classifier else [("output.weight", (c.vocab_size, c.dim))]
    if c.version == 0:
        half = c.seq_len * c.head_size // 2
        order = [(emb[0], emb[1], "f32")] + norms_att
        per = {key: [(f"blk.{i}.{g}.weight", s, "f32") for i in L] for key, g, s in _layer_matrices(c)}
        for key in ("wq", "wk", "wv", "wo"):
            order += per[key]
        order += norms_ffn
        for key in ("w1", "w2", "w3"):
            order += per[key]
        order += final
        order += [("freq_cis_real", (half,), "freq"), ("freq_cis_imag", (half,), "freq")]
        order += [(n, s, "f32") for n, s in cls]
        return order
    kind = "q8" if c.version == 2 else "f32"
    return norms_att + norms_ffn + final + [(n, s, kind) for n, s in [emb] + mats + cls]


# ----------------------------------------------------------------------------------------
# GGUF -> llama2.c


_REPRESENTABLE = {"token_embd.weight", "output_norm.weight", "output.weight"}
_LAYER_TENSORS = {"attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down",
                  "ffn_up"}


def _meta(md: dict, key: str, path: str, default=None):
    if key in md:
        return md[key]
    if default is not None:
        return default
    raise ModelError(f"{path}: metadata key {key!r} is missing")


def config_from_gguf(g, seq_len: int | None = None) -> Llama2cConfig:
    """The llama2.c configuration of GGUF file `g`; ModelError when llama2.c cannot represent it."""
    md, path = g.metadata, g.path
    arch = md.get("general.architecture")
    if arch != "llama":
        raise ModelError(f"{path}: architecture {arch!r} cannot be converted to llama2.c format (only 'llama': "
                         f"llama2.c has no attention biases, rotates adjacent pairs and has no other layers)")
    names = {t.name: t for t in g.tensors}
    if "token_embd.weight" not in names:
        raise ModelError(f"{path}: tensor 'token_embd.weight' is missing")
    emb = names["token_embd.weight"]
    if len(emb.shape) != 2:
        raise ModelError(f"{path}: tensor 'token_embd.weight' has shape {emb.shape}, expected 2 dimensions")
    dim = int(_meta(md, "llama.embedding_length", path))
    n_heads = int(_meta(md, "llama.attention.head_count", path))
    c = Llama2cConfig(
        dim=dim,
        hidden_dim=int(_meta(md, "llama.feed_forward_length", path)),
        n_layers=int(_meta(md, "llama.block_count", path)),
        n_heads=n_heads,
        n_kv_heads=int(_meta(md, "llama.attention.head_count_kv", path, n_heads)),
        vocab_size=int(emb.shape[1]),
        seq_len=int(seq_len if seq_len else _meta(md, "llama.context_length", path)),
        shared_classifier="output.weight" not in names,
    )
    c.validate(path)
    if emb.shape[0] != dim:
        raise ModelError(f"{path}: tensor 'token_embd.weight' has shape {emb.shape}, expected ({dim}, vocab)")
    head = dim // n_heads
    for key in ("llama.rope.dimension_count", "llama.attention.key_length", "llama.attention.value_length"):
        if key in md and int(md[key]) != head:
            raise ModelError(f"{path}: {key} = {md[key]} but llama2.c needs dim / n_heads = {head}")
    if md.get("llama.rope.scaling.type", "none") not in ("none", "") or "rope_freqs.weight" in names:
        raise ModelError(f"{path}: rope scaling (llama.rope.scaling.type / rope_freqs.weight) "
                         f"cannot be represented in llama2.c format")
    if int(md.get("llama.expert_count", 0)) > 0:
        raise ModelError(f"{path}: mixture-of-experts models cannot be converted to llama2.c format")
    for t in g.tensors:
        parts = t.name.split(".")
        ok = t.name in _REPRESENTABLE or (
            len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < c.n_layers
            and parts[2] in _LAYER_TENSORS and parts[3] == "weight")
        if not ok:
            raise ModelError(f"{path}: tensor {t.name!r} has no place in the llama2.c format")
    for name, shape, kind in _layout(c):
        if kind == "freq":
            continue
        if name not in names:
            raise ModelError(f"{path}: tensor {name!r} is missing")
        want = tuple(reversed(shape))
        if names[name].shape != want:
            raise ModelError(f"{path}: tensor {name!r} has shape {names[name].shape}, expected {want} "
                             f"from the metadata")
    return c


def _freq_tables(c: Llama2cConfig, base: float):
    """run.c v0 rope tables (cos, sin) of shape (seq_len, head_size/2); run.c skips them."""
    hs = c.head_size
    inv = 1.0 / (base ** (np.arange(0, hs, 2, dtype=np.float64) / hs))
    ang = np.outer(np.arange(c.seq_len, dtype=np.float64), inv)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def gguf_to_llama2c(in_path, out_path, version: int = 0, group_size: int = 64, seq_len: int | None = None,
                    progress: bool = True) -> Llama2cConfig:
    """Convert a `llama` GGUF file to a llama2.c checkpoint (version 0, 1 or 2)."""
    if version not in (0, 1, 2):
        raise ValueError(f"llama2.c version must be 0, 1 or 2, not {version}")
    g = read_gguf(in_path)
    try:
        c = config_from_gguf(g, seq_len)
        c.version = version
        if version == 2:
            while c.dim % group_size or c.hidden_dim % group_size:
                group_size //= 2  # as llama2.c's export.py does
            c.group_size = group_size
        md = g.metadata
        base = float(md.get("llama.rope.freq_base", 10000.0))
        by_name = {t.name: t for t in g.tensors}
        layout = _layout(c)
        bar = Progress(f"writing {os.path.basename(os.fspath(out_path))}", len(layout), unit="tensors",
                       enabled=progress)
        tmp = os.fspath(out_path) + ".tmp"
        max_err = 0.0
        try:
            with open(tmp, "wb") as f:
                if version == 0:
                    vocab = c.vocab_size if c.shared_classifier else -c.vocab_size
                    f.write(struct.pack("<7i", c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                                        vocab, c.seq_len))
                else:
                    hdr = struct.pack("<Ii7iB", LLAMA2C_MAGIC, version, c.dim, c.hidden_dim, c.n_layers,
                                      c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len, int(c.shared_classifier))
                    if version == 2:
                        hdr += struct.pack("<i", c.group_size)
                    f.write(hdr + b"\0" * (LLAMA2C_HEADER_SIZE - len(hdr)))
                cos = sin = None
                for name, shape, kind in layout:
                    if kind == "freq":
                        if cos is None:
                            cos, sin = _freq_tables(c, base)
                        f.write((cos if name == "freq_cis_real" else sin).tobytes())
                    else:
                        t = by_name[name]
                        w = dequantize(g.tensor_bytes(t), t.type, t.shape, name)
                        if kind == "q8":
                            q, s, err = quantize_q8_groups(w, c.group_size)
                            max_err = max(max_err, err)
                            f.write(q.tobytes())
                            f.write(s.astype("<f4").tobytes())
                        else:
                            f.write(w.astype("<f4").tobytes())
                    bar.update(1)
            os.replace(tmp, out_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        bar.close()
        if version == 2:
            log(f"quantized to Q8_0 with group size {c.group_size}; max abs error {max_err:.3g}")
        notes = []
        if base != 10000.0:
            notes.append(f"rope base {base:g} (run.c assumes 10000)")
        eps = md.get("llama.attention.layer_norm_rms_epsilon")
        if eps is not None and abs(float(eps) - 1e-5) > 1e-12:
            notes.append(f"RMSNorm epsilon {float(eps):g} (run.c assumes 1e-5)")
        for key, default in (("tokenizer.ggml.bos_token_id", 1), ("tokenizer.ggml.eos_token_id", 2)):
            if key in md and int(md[key]) != default:
                notes.append(f"{key.split('.')[-1].replace('_token_id', '').upper()} id {int(md[key])} "
                             f"(run.c assumes {default})")
        if notes:
            log("note: llama2.c files do not record " + "; ".join(notes) + " - pass them when loading")
        return c
    finally:
        g.close()


# ----------------------------------------------------------------------------------------
# reading llama2.c checkpoints


def read_llama2c(path) -> tuple[Llama2cConfig, dict]:
    """Read a llama2.c checkpoint with the C core's reader (csrc/llama2c.c, ``pl_read_llama2c``):
    (config, {gguf tensor name: float32 numpy array (out, in)}).

    fp32 tensors are read-only views of a memory map of the file; v2's int8 groups come
    dequantized with their fp32 scales (copies).
    """
    import mmap

    from ._core import ffi, lib

    path = os.fspath(path)
    fmt = ffi.new("pl_llama2c_format *")
    model = lib.pl_read_llama2c(path.encode(), fmt)
    if model == ffi.NULL:
        raise ModelError(f"{path}: {c_error('cannot read the llama2.c checkpoint')}")
    try:
        cfg = ffi.new("pl_config *")
        lib.pl_model_config(model, cfg)
        c = Llama2cConfig(dim=cfg.dim, hidden_dim=cfg.hidden_dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                          n_kv_heads=cfg.n_kv_heads, vocab_size=cfg.n_vocab, seq_len=cfg.n_ctx_train,
                          shared_classifier=bool(fmt.shared_classifier), version=fmt.version,
                          group_size=fmt.group_size)
        with open(path, "rb") as f:
            file_map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        base = int(ffi.cast("uintptr_t", lib.pl_model_file_data(model)))
        info = ffi.new("pl_tensor_info *")
        out = {}
        for i in range(lib.pl_model_n_tensors(model)):
            lib.pl_model_tensor(model, i, info)
            n = math.prod(info.ne[d] for d in range(info.n_dims))
            offset = int(ffi.cast("uintptr_t", info.data)) - base
            if 0 <= offset and offset + info.nbytes <= len(file_map):
                w = np.frombuffer(file_map, dtype="<f4", count=n, offset=offset)
            else:  # converted by the reader: on the C heap, freed with the model
                w = np.frombuffer(ffi.buffer(info.data, info.nbytes), dtype="<f4", count=n).copy()
            shape = tuple(info.ne[d] for d in reversed(range(info.n_dims)))
            out[ffi.string(info.name).decode()] = w.reshape(shape)
        return c, out
    finally:
        lib.pl_model_free(model)


# ----------------------------------------------------------------------------------------
# tokenizers


def tokenizer_bin_from_gguf(metadata: dict) -> tuple[list, list, int]:
    """(token bytes, scores, max_token_length) for a llama2.c tokenizer.bin, from GGUF metadata.

    SentencePiece vocabularies (`llama`) follow llama2.c's tokenizer.py: '▁' becomes ' ' and
    BOS/EOS become '\\n<s>\\n'-style.  Byte-level BPE vocabularies (`gpt2`) store each token's
    raw bytes (the byte-level mapping undone; control tokens keep their text) and get scores
    from the merge ranks (-(rank + 1); single bytes 0; tokens made by no merge -1e9), so greedy
    highest-score merging follows the merge order.
    """
    model = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelError("the GGUF file has no vocabulary (tokenizer.ggml.tokens)")
    n = len(tokens)
    types = metadata.get("tokenizer.ggml.token_type")
    types = np.ones(n, dtype=np.int32) if types is None else np.asarray(types)
    out, scores = [], []
    if model == "llama":
        sc = metadata.get("tokenizer.ggml.scores")
        sc = np.zeros(n, dtype=np.float32) if sc is None else np.asarray(sc, dtype=np.float32)
        bos, eos = metadata.get("tokenizer.ggml.bos_token_id"), metadata.get("tokenizer.ggml.eos_token_id")
        for i, t in enumerate(tokens):
            if i == bos or i == eos:
                t = f"\n{t}\n"
            out.append(t.replace("\u2581", " ").encode("utf-8", "surrogateescape"))
        scores = [float(s) for s in sc]
    elif model == "gpt2":
        dec = {ch: b for b, ch in enumerate(BYTE_TO_CHAR)}  # GPT-2's printable char -> its byte
        merges = metadata.get("tokenizer.ggml.merges") or []
        rank = {}
        for r, m in enumerate(merges):
            a, _, b = m.partition(" ")
            rank.setdefault(a + b, r)
        for i, t in enumerate(tokens):
            if types[i] in (3, 4) or any(ch not in dec for ch in t):  # control / user-defined text
                out.append(t.encode("utf-8", "surrogateescape"))
            else:
                out.append(bytes(dec[ch] for ch in t))
            r = rank.get(t)
            scores.append(-float(r + 1) if r is not None else (0.0 if len(out[-1]) == 1 else -1e9))
    else:
        raise ModelError(f"tokenizer model {model!r} cannot be exported to tokenizer.bin (supported: llama, gpt2)")
    return out, scores, max((len(b) for b in out), default=0)


def write_tokenizer_bin(path, tokens: list, scores: list, max_len: int | None = None) -> None:
    if max_len is None:
        max_len = max((len(b) for b in tokens), default=0)
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max_len))
        for b, s in zip(tokens, scores):
            f.write(struct.pack("<fi", s, len(b)))
            f.write(b)


def gguf_vocab_from_tokenizer_bin(tokens: list, scores, bos_id: int = 1, eos_id: int = 2) -> dict:
    """GGUF tokenizer metadata from llama2.c tokenizer.bin entries.

    A SentencePiece vocabulary (llama2.c's own: it has the byte tokens <0x00>..<0xFF>) becomes
    a `llama` vocabulary, exactly.  Otherwise the entries are taken as a byte-level BPE vocabulary
    as written by :func:`tokenizer_bin_from_gguf`, and become a `gpt2` vocabulary whose merges are
    rebuilt from the scores (merge rank = -score - 1): each merged token is split into two tokens
    that exist before its rank.  That split is ambiguous (and several merges yielding one token
    collapse to one), so the result approximates the original merges: when the original GGUF is
    at hand, copy its vocabulary instead (``llama2c_to_gguf(..., vocab_from=GGUF)``).
    """
    if b"<0x00>" in tokens:
        return _spm_vocab_from_tokenizer_bin(tokens, scores, bos_id, eos_id)
    return _bpe_vocab_from_tokenizer_bin(tokens, scores, bos_id, eos_id)


def _spm_vocab_from_tokenizer_bin(tokens, scores, bos_id, eos_id) -> dict:
    texts, types = [], []
    for i, b in enumerate(tokens):
        t = b.decode("utf-8", "surrogateescape")
        if i in (bos_id, eos_id) and t.startswith("\n") and t.endswith("\n") and len(t) > 2:
            t = t[1:-1]  # tokenizer.py wraps BOS/EOS in newlines
        t = t.replace(" ", "\u2581")
        texts.append(t)
        if i in (bos_id, eos_id):
            types.append(3)  # CONTROL
        elif t == "<unk>":
            types.append(2)  # UNKNOWN
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(6)  # BYTE
        else:
            types.append(1)  # NORMAL
    md = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": GGUFValue(texts, (ValueType.ARRAY, ValueType.STRING)),
        "tokenizer.ggml.scores": np.asarray(scores, dtype=np.float32),
        "tokenizer.ggml.token_type": np.asarray(types, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": GGUFValue(bos_id, ValueType.UINT32),
        "tokenizer.ggml.eos_token_id": GGUFValue(eos_id, ValueType.UINT32),
    }
    if "<unk>" in texts:
        md["tokenizer.ggml.unknown_token_id"] = GGUFValue(texts.index("<unk>"), ValueType.UINT32)
    return md


def _bpe_vocab_from_tokenizer_bin(tokens, scores, bos_id, eos_id) -> dict:
    enc = BYTE_TO_CHAR
    scores = np.asarray(scores, dtype=np.float64)
    texts, types, ranked = [], [], []
    for i, (b, s) in enumerate(zip(tokens, scores)):
        if len(b) == 1 or (-1e8 < s <= -1 and s == int(s)):
            texts.append(texts_of(b, enc))
            types.append(1)  # NORMAL
            if len(b) > 1:
                ranked.append((int(-s - 1), b))
        else:  # made by no merge: an added/control token, kept as text
            texts.append(b.decode("utf-8", "surrogateescape"))
            types.append(3)  # CONTROL
    ranked.sort()
    # rebuild merges in rank order: split each merged token into two earlier tokens; of
    # several possible splits take the one whose newer half is oldest (on SmolLM2's
    # vocabulary this reproduces 92% of the merges exactly)
    made = {b: -1 for b in tokens if len(b) == 1}
    merges = []
    for r, b in ranked:
        splits = [(max(made[b[:k]], made[b[k:]]), k) for k in range(1, len(b)) if b[:k] in made and b[k:] in made]
        if splits:
            k = min(splits)[1]
            merges.append(texts_of(b[:k], enc) + " " + texts_of(b[k:], enc))
        made[b] = r
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": GGUFValue(texts, (ValueType.ARRAY, ValueType.STRING)),
        "tokenizer.ggml.token_type": np.asarray(types, dtype=np.int32),
        "tokenizer.ggml.merges": GGUFValue(merges, (ValueType.ARRAY, ValueType.STRING)),
        "tokenizer.ggml.bos_token_id": GGUFValue(bos_id, ValueType.UINT32),
        "tokenizer.ggml.eos_token_id": GGUFValue(eos_id, ValueType.UINT32),
    }


def texts_of(b: bytes, enc) -> str:
    """Bytes as GPT-2's printable characters (``enc[byte]``)."""
    return "".join(enc[x] for x in b)


# ----------------------------------------------------------------------------------------
# llama2.c -> GGUF


def llama2c_to_gguf(in_path, out_path, tokenizer_path=None, rope_base: float = 10000.0, norm_eps: float = 1e-5,
                    bos_id: int = 1, eos_id: int = 2, name: str | None = None, progress: bool = True,
                    vocab_from=None) -> Llama2cConfig:
    """Convert a llama2.c checkpoint (v0, v1 or v2) to a GGUF file with float32 tensors.

    The vocabulary comes from `tokenizer_path` (a llama2.c tokenizer.bin), or is copied exactly
    (every ``tokenizer.*`` key) from the GGUF file `vocab_from`; bos_id/eos_id apply to the
    former and when neither is given.
    """
    if tokenizer_path is not None and vocab_from is not None:
        raise ValueError("give tokenizer_path or vocab_from, not both")
    c, weights = read_llama2c(in_path)
    md = {
        "general.architecture": "llama",
        "general.name": name or os.path.splitext(os.path.basename(os.fspath(in_path)))[0],
        "general.file_type": GGUFValue(0, ValueType.UINT32),  # all F32
        "llama.context_length": GGUFValue(c.seq_len, ValueType.UINT32),
        "llama.embedding_length": GGUFValue(c.dim, ValueType.UINT32),
        "llama.block_count": GGUFValue(c.n_layers, ValueType.UINT32),
        "llama.feed_forward_length": GGUFValue(c.hidden_dim, ValueType.UINT32),
        "llama.attention.head_count": GGUFValue(c.n_heads, ValueType.UINT32),
        "llama.attention.head_count_kv": GGUFValue(c.n_kv_heads, ValueType.UINT32),
        "llama.rope.dimension_count": GGUFValue(c.head_size, ValueType.UINT32),
        "llama.rope.freq_base": GGUFValue(rope_base, ValueType.FLOAT32),
        "llama.attention.layer_norm_rms_epsilon": GGUFValue(norm_eps, ValueType.FLOAT32),
        "llama.vocab_size": GGUFValue(c.vocab_size, ValueType.UINT32),
    }
    if vocab_from is not None:
        g = read_gguf(vocab_from)
        g.close()
        typed = g.typed_metadata()
        tok = {k: v for k, v in typed.items() if k.startswith("tokenizer.")}
        n = len(g.metadata.get("tokenizer.ggml.tokens", ()))
        if n and n != c.vocab_size:
            raise ModelError(f"{vocab_from}: vocabulary has {n} tokens but the checkpoint has vocab_size {c.vocab_size}")
        md.update(tok)
    elif tokenizer_path is not None:
        from .vocab.from_llama2c import read_tokenizer_bin

        toks, scores, _ = read_tokenizer_bin(tokenizer_path, c.vocab_size)
        md.update(gguf_vocab_from_tokenizer_bin(toks, scores, bos_id, eos_id))
    else:
        md["tokenizer.ggml.bos_token_id"] = GGUFValue(bos_id, ValueType.UINT32)
        md["tokenizer.ggml.eos_token_id"] = GGUFValue(eos_id, ValueType.UINT32)
    # GGUF's customary tensor order: embeddings, then block by block, then the output
    names = ["token_embd.weight"]
    for i in range(c.n_layers):
        names += [f"blk.{i}.attn_norm.weight"] + [f"blk.{i}.{g}.weight" for _, g, _ in _layer_matrices(c)[:4]]
        names += [f"blk.{i}.ffn_norm.weight"] + [f"blk.{i}.{g}.weight" for _, g, _ in _layer_matrices(c)[4:]]
    names += ["output_norm.weight"] + ([] if c.shared_classifier else ["output.weight"])
    tensors = []
    for n in names:
        w = weights[n]
        tensors.append((n, GGMLType.F32, tuple(reversed(w.shape)),
                        (lambda w=w: np.ascontiguousarray(w, dtype="<f4"))))
    bar = Progress(f"writing {os.path.basename(os.fspath(out_path))}", len(tensors), unit="tensors",
                   enabled=progress)
    write_gguf(out_path, md, tensors, progress=lambda i, n, name: bar.update(1))
    bar.close()
    return c


if __name__ == "__main__":  # python -m pyllama.convert: the command is pyllama/cli/convert.py
    from .cli import run
    from .cli.convert import main

    run(main)
