"""Tiny random Llama-family models, written with the `gguf` package's GGUFWriter.

Nothing here uses pyllama: the files are produced by the reference writer of
the GGUF format (the one llama.cpp's converters use), with metadata keys and
tensor names exactly as llama.cpp writes them, so a test that loads them with
pyllama checks our reader against an independent writer.

    spec = TinySpec(arch="qwen2", wtype="Q4_0", tied=False)
    path = write_tiny_gguf(tmp_path / "m.gguf", spec)

Also writers for llama2.c checkpoints (legacy "v0" and version 1 "ak42"),
written from the layout of Karpathy's export.py, used by the bad-file tests.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

# weight types our engine supports, by name
WEIGHT_TYPES = {
    "F32": QT.F32,
    "F16": QT.F16,
    "BF16": QT.BF16,
    "Q8_0": QT.Q8_0,
    "Q4_0": QT.Q4_0,
    "Q4_1": QT.Q4_1,
    "Q5_0": QT.Q5_0,
    "Q5_1": QT.Q5_1,
}
QUANT_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# Types the gguf package cannot encode (it only decodes them): written as random blocks whose
# values have about the array's spread (the weights' values are not kept; a test's reference
# reads what the file holds). Row lengths must be multiples of 256 (32 for IQ4_NL).
RANDOM_BLOCK_TYPES = {"IQ4_NL": QT.IQ4_NL, "Q2_K": QT.Q2_K, "Q3_K": QT.Q3_K, "Q4_K": QT.Q4_K, "Q5_K": QT.Q5_K,
                      "Q6_K": QT.Q6_K, "IQ4_XS": QT.IQ4_XS}
# (offset of the fp16 scale d, of the fp16 minimum scale or None, typical |q * sub-scale|)
_FP16_FIELDS = {QT.IQ4_NL: (0, None, 60), QT.Q2_K: (80, 82, 12),
                QT.Q3_K: (108, None, 32), QT.Q4_K: (0, 2, 240), QT.Q5_K: (0, 2, 500), QT.Q6_K: (208, None, 1000),
                QT.IQ4_XS: (0, None, 1000)}


@dataclasses.dataclass
class TinySpec:
    arch: str = "llama"          # "llama": adjacent-pair rope; "qwen2": neox rope + q/k/v biases
    dim: int = 64
    hidden_dim: int = 96
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2          # < n_heads: grouped-query attention
    context_length: int = 64
    rope_base: float = 10000.0
    rope_dim: int | None = None  # rope.dimension_count; None -> head_dim
    rope_scaling: str | None = None   # None, "linear" or "llama3" ({arch}.rope.scaling.type)
    rope_scale_factor: float = 1.0
    rope_low_freq_factor: float = 1.0     # llama3 only
    rope_high_freq_factor: float = 4.0    # llama3 only
    rope_orig_ctx: int = 16               # llama3 only: rope.scaling.original_context_length
    rope_freqs: bool = False     # write llama.cpp's rope_freqs.weight (per-frequency divisors), llama3-style
    norm_eps: float = 1e-5
    tied: bool = True            # no output.weight: output reuses token_embd
    wtype: str = "F32"           # type of every 2-D weight (token_embd included)
    type_overrides: dict = dataclasses.field(default_factory=dict)  # tensor name -> type name
    bias: bool | None = None     # q/k/v biases; None -> arch == "qwen2"
    vocab: str = "gpt2"          # tokenizer kind: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    alignment: int | None = None  # general.alignment (None: the default 32, key not written)
    seed: int = 0
    extra_metadata: dict = dataclasses.field(default_factory=dict)  # key -> (value, GGUFValueType)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def has_bias(self) -> bool:
        return self.arch == "qwen2" if self.bias is None else self.bias


# ---------------------------------------------------------------------------
# vocabularies


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out = {}
    extra = 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


GPT2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GPT2_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "l l", "e r", "Ġ s", "o n", "Ġ w"]


def gpt2_vocab() -> dict:
    """A byte-level BPE vocabulary like SmolLM2's: specials first, then 256 byte tokens, then merges."""
    b2u = _bytes_to_unicode()
    tokens = list(GPT2_SPECIALS)
    types = [3] * len(GPT2_SPECIALS)          # 3 = control
    for b in range(256):
        tokens.append(b2u[b])
        types.append(1)                        # 1 = normal
    for m in GPT2_MERGES:
        tokens.append(m.replace(" ", ""))
        types.append(1)
    return {
        "tokenizer.ggml.model": ("gpt2", gguf.GGUFValueType.STRING),
        "tokenizer.ggml.pre": ("smollm", gguf.GGUFValueType.STRING),
        "tokenizer.ggml.tokens": (tokens, gguf.GGUFValueType.ARRAY),
        "tokenizer.ggml.token_type": (types, gguf.GGUFValueType.ARRAY),
        "tokenizer.ggml.merges": (list(GPT2_MERGES), gguf.GGUFValueType.ARRAY),
        "tokenizer.ggml.bos_token_id": (1, gguf.GGUFValueType.UINT32),
        "tokenizer.ggml.eos_token_id": (2, gguf.GGUFValueType.UINT32),
        "tokenizer.ggml.unknown_token_id": (0, gguf.GGUFValueType.UINT32),
        "tokenizer.ggml.add_bos_token": (False, gguf.GGUFValueType.BOOL),
    }


SPM_PIECES = ["▁", "e", "t", "a", "o", "▁t", "▁a", "he", "▁the", "in", "er", "on"]


def llama_vocab() -> dict:
    """A SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte pieces, then a few pieces with scores."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_PIECES
    types = [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES)   # 2 unknown, 3 control, 6 byte, 1 normal
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(SPM_PIECES))]
    return {
        "tokenizer.ggml.model": ("llama", gguf.GGUFValueType.STRING),
        "tokenizer.ggml.tokens": (tokens, gguf.GGUFValueType.ARRAY),
        "tokenizer.ggml.scores": (scores, gguf.GGUFValueType.ARRAY),
        "tokenizer.ggml.token_type": (types, gguf.GGUFValueType.ARRAY),
        "tokenizer.ggml.bos_token_id": (1, gguf.GGUFValueType.UINT32),
        "tokenizer.ggml.eos_token_id": (2, gguf.GGUFValueType.UINT32),
        "tokenizer.ggml.unknown_token_id": (0, gguf.GGUFValueType.UINT32),
        "tokenizer.ggml.add_bos_token": (True, gguf.GGUFValueType.BOOL),
        "tokenizer.ggml.add_space_prefix": (True, gguf.GGUFValueType.BOOL),
    }


def vocab_metadata(kind: str) -> dict:
    if kind == "gpt2":
        return gpt2_vocab()
    if kind == "llama":
        return llama_vocab()
    raise ValueError(f"unknown vocab kind {kind!r}")


def n_vocab_of(kind: str) -> int:
    return len(vocab_metadata(kind)["tokenizer.ggml.tokens"][0])


# ---------------------------------------------------------------------------
# weights


def random_weights(spec: TinySpec) -> dict[str, np.ndarray]:
    """float32 weights in numpy (out, in) order, scaled so activations stay O(1) and attention is not flat."""
    rng = np.random.default_rng(spec.seed)
    d, hd, hid = spec.dim, spec.head_dim, spec.hidden_dim
    nv = n_vocab_of(spec.vocab)
    kv = spec.n_kv_heads * hd

    def mat(rows, cols, gain=1.0):
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    w = {"token_embd.weight": rng.standard_normal((nv, d)).astype(np.float32)}
    for i in range(spec.n_layers):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm(d)
        w[p + "attn_q.weight"] = mat(d, d, 2.0)
        w[p + "attn_k.weight"] = mat(kv, d, 2.0)
        w[p + "attn_v.weight"] = mat(kv, d)
        w[p + "attn_output.weight"] = mat(d, d)
        if spec.has_bias:
            w[p + "attn_q.bias"] = (0.3 * rng.standard_normal(d)).astype(np.float32)
            w[p + "attn_k.bias"] = (0.3 * rng.standard_normal(kv)).astype(np.float32)
            w[p + "attn_v.bias"] = (0.3 * rng.standard_normal(kv)).astype(np.float32)
        w[p + "ffn_norm.weight"] = norm(d)
        w[p + "ffn_gate.weight"] = mat(hid, d, 1.5)
        w[p + "ffn_up.weight"] = mat(hid, d, 1.5)
        w[p + "ffn_down.weight"] = mat(d, hid)
    w["output_norm.weight"] = norm(d)
    if spec.rope_freqs:
        # divisors between 1 and 8 rising with the wavelength, like llama3's rule produces
        n_rot = spec.rope_dim or hd
        w["rope_freqs.weight"] = np.linspace(1.0, 8.0, n_rot // 2).astype(np.float32)
    if not spec.tied:
        w["output.weight"] = mat(nv, d, 3.0)
    return w


def random_blocks(arr: np.ndarray, qt: QT) -> np.ndarray:
    """Valid blocks of type qt for an array of arr's shape: random quants, sub-block scales and
    high bits, fp16 scales sized so the values spread about as arr's do (a minimum scale
    sized to centre them). Deterministic in arr's bytes."""
    block, nbytes = gguf.GGML_QUANT_SIZES[qt]
    rows, cols = arr.shape
    if cols % block:
        raise ValueError(f"row length {cols} is not a multiple of {qt.name}'s {block}")
    rng = np.random.default_rng(int.from_bytes(arr.tobytes()[:64].ljust(8, b"\0")[:8], "little"))
    n = rows * cols // block
    raw = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    d_off, m_off, typical = _FP16_FIELDS[qt]
    spread = float(np.std(arr)) or 1.0
    raw[:, d_off:d_off + 2] = np.full(n, spread / typical, np.float16).view(np.uint8).reshape(n, 2)
    if m_off is not None:
        m = spread / (64 if qt in (QT.Q4_K, QT.Q5_K) else 8)
        raw[:, m_off:m_off + 2] = np.full(n, m, np.float16).view(np.uint8).reshape(n, 2)
    return raw.reshape(rows, cols // block * nbytes)


def encode_tensor(arr: np.ndarray, type_name: str) -> tuple[np.ndarray, QT]:
    """Encode a float32 (rows, cols) array in a GGML type with the gguf package's quantizers
    (random_blocks for the types it cannot encode)."""
    if type_name in RANDOM_BLOCK_TYPES:
        qt = RANDOM_BLOCK_TYPES[type_name]
        return random_blocks(arr.astype(np.float32), qt), qt
    qt = WEIGHT_TYPES[type_name]
    if qt == QT.F32:
        return arr.astype(np.float32), qt
    if qt == QT.F16:
        return arr.astype(np.float16), qt
    return gguf.quants.quantize(arr.astype(np.float32), qt), qt


def tensor_type_for(spec: TinySpec, name: str, arr: np.ndarray) -> str:
    if name in spec.type_overrides:
        return spec.type_overrides[name]
    if arr.ndim == 1:
        return "F32"  # norms and biases stay F32, as llama.cpp writes them
    return spec.wtype


def write_tiny_gguf(path, spec: TinySpec | None = None, weights: dict | None = None) -> Path:
    """Write a tiny model; returns the path. `weights` overrides random_weights(spec)."""
    spec = spec or TinySpec()
    path = Path(path)
    a = spec.arch
    w = weights if weights is not None else random_weights(spec)
    writer = gguf.GGUFWriter(str(path), a)
    if spec.alignment is not None:
        writer.add_custom_alignment(spec.alignment)
    writer.add_string("general.name", f"tiny-{a}-{spec.wtype}")
    writer.add_uint32(f"{a}.context_length", spec.context_length)
    writer.add_uint32(f"{a}.embedding_length", spec.dim)
    writer.add_uint32(f"{a}.feed_forward_length", spec.hidden_dim)
    writer.add_uint32(f"{a}.block_count", spec.n_layers)
    writer.add_uint32(f"{a}.attention.head_count", spec.n_heads)
    writer.add_uint32(f"{a}.attention.head_count_kv", spec.n_kv_heads)
    writer.add_float32(f"{a}.attention.layer_norm_rms_epsilon", spec.norm_eps)
    writer.add_float32(f"{a}.rope.freq_base", spec.rope_base)
    writer.add_uint32(f"{a}.rope.dimension_count", spec.rope_dim or spec.head_dim)
    writer.add_uint32(f"{a}.vocab_size", n_vocab_of(spec.vocab))
    if spec.rope_scaling is not None:
        writer.add_string(f"{a}.rope.scaling.type", spec.rope_scaling)
        writer.add_float32(f"{a}.rope.scaling.factor", spec.rope_scale_factor)
        if spec.rope_scaling == "llama3":
            writer.add_float32(f"{a}.rope.scaling.low_freq_factor", spec.rope_low_freq_factor)
            writer.add_float32(f"{a}.rope.scaling.high_freq_factor", spec.rope_high_freq_factor)
            writer.add_uint32(f"{a}.rope.scaling.original_context_length", spec.rope_orig_ctx)
    for key, (val, vtype) in {**vocab_metadata(spec.vocab), **spec.extra_metadata}.items():
        writer.add_key_value(key, val, vtype)
    for name, arr in w.items():
        data, qt = encode_tensor(arr, tensor_type_for(spec, name, arr))
        if qt in (QT.F32, QT.F16):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=qt)  # byte-shaped; the writer derives the shape
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---------------------------------------------------------------------------
# llama2.c checkpoints (layout of llama2.c's export.py; weights row-major (out, in)).
# run.c rotates adjacent pairs, like llama.cpp's `llama`, so the same weights
# written as GGUF (arch llama) and as llama2.c describe the same model.


def _llama2c_tensors(spec: TinySpec, w: dict) -> dict[str, np.ndarray]:
    L = spec.n_layers
    stack = lambda n: np.stack([w[f"blk.{i}.{n}.weight"] for i in range(L)]).astype(np.float32)  # noqa: E731
    return {
        "tok": w["token_embd.weight"].astype(np.float32),
        "rms_att": stack("attn_norm"), "rms_ffn": stack("ffn_norm"),
        "wq": stack("attn_q"), "wk": stack("attn_k"), "wv": stack("attn_v"), "wo": stack("attn_output"),
        "w1": stack("ffn_gate"), "w2": stack("ffn_down"), "w3": stack("ffn_up"),
        "rms_final": w["output_norm.weight"].astype(np.float32),
        "wcls": w.get("output.weight"),
    }


def _write_llama2c(path, header: bytes, t: dict, order: list) -> Path:
    """The header, the arrays in the version's order, then the classifier when it is not shared."""
    if t["wcls"] is not None:
        order = order + [t["wcls"].astype(np.float32)]
    with open(path, "wb") as fh:
        fh.write(header)
        for a in order:
            fh.write(np.ascontiguousarray(a).tobytes())
    return Path(path)


def write_llama2c_v0(path, spec: TinySpec | None = None, weights: dict | None = None) -> Path:
    """Legacy llama2.c checkpoint: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
    vocab_size (negative: separate classifier follows), seq_len), then fp32 weights."""
    spec = spec or TinySpec()
    t = _llama2c_tensors(spec, weights if weights is not None else random_weights(spec))
    n_vocab = t["tok"].shape[0]
    shared = t["wcls"] is None
    hd = spec.head_dim
    header = struct.pack("<7i", spec.dim, spec.hidden_dim, spec.n_layers, spec.n_heads, spec.n_kv_heads,
                         n_vocab if shared else -n_vocab, spec.context_length)
    freq = np.zeros((spec.context_length, hd // 2), np.float32)  # freq_cis_real/imag: unused by run.c
    return _write_llama2c(path, header, t, [t["tok"], t["rms_att"], t["wq"], t["wk"], t["wv"], t["wo"],
                                            t["rms_ffn"], t["w1"], t["w2"], t["w3"], t["rms_final"], freq, freq])


def write_llama2c_v1(path, spec: TinySpec | None = None, weights: dict | None = None) -> Path:
    """llama2.c version 1: uint32 magic 0x616b3432 ("ak42"), int32 version 1, 7 int32 params,
    uint8 shared-classifier flag, zero padding to 256 bytes; then fp32 norms
    (attention, ffn, final), embedding, wq, wk, wv, wo, w1, w2, w3, [classifier]."""
    spec = spec or TinySpec()
    t = _llama2c_tensors(spec, weights if weights is not None else random_weights(spec))
    n_vocab = t["tok"].shape[0]
    shared = t["wcls"] is None
    header = struct.pack("<Ii", 0x616B3432, 1)
    header += struct.pack("<7i", spec.dim, spec.hidden_dim, spec.n_layers, spec.n_heads, spec.n_kv_heads,
                          n_vocab, spec.context_length)
    header += struct.pack("<B", 1 if shared else 0)
    header += b"\0" * (256 - len(header))
    return _write_llama2c(path, header, t, [t["rms_att"], t["rms_ffn"], t["rms_final"], t["tok"], t["wq"],
                                            t["wk"], t["wv"], t["wo"], t["w1"], t["w2"], t["w3"]])
