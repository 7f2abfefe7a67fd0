"""An independent float64 numpy forward pass of the Llama architecture.

Written from the architecture description (Llama / Llama 2 / Qwen2 papers and
the GGUF conventions), not from pyllama's C code. It reads the GGUF with the
`gguf` package's GGUFReader and dequantizes every tensor with
gguf.quants.dequantize, so neither the file reader nor the dequantizers are ours.

Conventions:
- GGUF shapes are GGML order (ne0 = the input / contiguous dimension); the
  numpy view from GGUFReader is (out, in), so y = W @ x.
- RMSNorm: x / sqrt(mean(x^2) + eps) * w.
- RoPE: pair index i < n_rot/2 rotates by angle pos * base^(-2i/n_rot)
  (divided by the linear factor or the llama3 per-frequency factor).
  "normal" (llama.cpp's `llama`, llama2.c's run.c) pairs x[2i] with x[2i+1];
  "neox" (qwen2, gemma) pairs x[i] with x[i + n_rot/2].
- attention: softmax(q k^T / sqrt(head_dim)) with a causal mask; query head h
  reads key/value head h // (n_heads / n_kv_heads) (grouped-query attention).
- feed-forward: W_down (silu(W_gate x) * W_up x).
- output: W_out rmsnorm(x), W_out = token_embd when output.weight is absent.

Family options (from the published model descriptions and the GGUF conventions):
- qwen3, gemma3: each query and key head is RMS-normalized (attn_q_norm /
  attn_k_norm, over head_dim) before RoPE.
- gemma3: embeddings times sqrt(dim); GELU (tanh approximation) instead of SiLU
  in the gated FFN; the attention and FFN outputs are RMS-normalized
  (post_attention_norm, post_ffw_norm) before their residual add; GGUF stores
  Gemma's norm weights as 1 + w, so every norm is the plain formula above;
  sliding-window attention on every layer but each sixth
  ({arch}.attention.sliding_window_pattern), whose RoPE base is
  {arch}.rope.freq_base_swa (10000) and unscaled.
- a window of W (attention.sliding_window): query at position i sees keys
  j with i - W < j <= i.
- phi3: attn_qkv holds Q, K, V rows stacked; ffn_up holds gate rows, then up.
  LongRoPE (Phi-3 128k, Phi-3.5; Microsoft's LongRoPE paper, transformers'
  "longrope" rope type): rope_factors_long / rope_factors_short hold per-pair
  divisors of the rotary frequencies, the long set used when the context is
  longer than {arch}.rope.scaling.original_context_length (llama.cpp decides by
  the context size n_ctx, transformers by the sequence length: `forward` takes
  n_ctx); cos and sin are multiplied by {arch}.rope.scaling.attn_factor.

`act_quant=True` additionally models what llama.cpp-style engines do for
quantized weights: the input vector of every matrix product with a quantized
(Q8_0/Q4_0/Q4_1/Q5_x/IQ4_x/K-quant) weight is first rounded to 8-bit blocks of 32 values with one
float scale d = max|x|/127, q = round-half-even(x/d). This is the documented
behaviour of pyllama's kernels (csrc/kernels.h), reimplemented here in numpy,
and lets tests use a much tighter tolerance than the pure float64 comparison.
"""

from __future__ import annotations

import math

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

ROPE_NEOX_ARCHS = {"qwen2", "qwen2moe", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "stablelm", "gptneox", "falcon"}
QUANT_TYPES = {QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.IQ4_NL,
               QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_XS}


def _value(field):
    v = field.contents()
    return v


class ReferenceModel:
    """Weights are dequantized lazily (one layer at a time is enough for the forward pass)."""

    def __init__(self, path):
        self.reader = gguf.GGUFReader(str(path))
        self.metadata = {k: _value(f) for k, f in self.reader.fields.items() if not k.startswith("GGUF.")}
        self.tensors = {t.name: t for t in self.reader.tensors}
        md = self.metadata
        a = self.arch = md["general.architecture"]
        self.dim = int(md[f"{a}.embedding_length"])
        self.hidden_dim = int(md[f"{a}.feed_forward_length"])
        self.n_layers = int(md[f"{a}.block_count"])
        self.n_heads = int(md[f"{a}.attention.head_count"])
        self.n_kv_heads = int(md.get(f"{a}.attention.head_count_kv", self.n_heads))
        self.head_dim = self.dim // self.n_heads
        self.n_rot = int(md.get(f"{a}.rope.dimension_count", self.head_dim))
        self.eps = float(md[f"{a}.attention.layer_norm_rms_epsilon"])
        self.rope_base = float(md.get(f"{a}.rope.freq_base", 10000.0))
        self.rope_neox = a in ROPE_NEOX_ARCHS
        self.rope_scaling = md.get(f"{a}.rope.scaling.type", "none")
        self.rope_factor = float(md.get(f"{a}.rope.scaling.factor", 1.0))
        # llama3-style scaling as llama.cpp stores it: a per-frequency divisor tensor
        self.freq_factors = None
        if "rope_freqs.weight" in self.tensors:
            self.freq_factors = self.weight("rope_freqs.weight")
        elif self.rope_scaling == "llama3":
            self.freq_factors = llama3_freq_factors(
                self.n_rot, self.rope_base, self.rope_factor,
                float(md.get(f"{a}.rope.scaling.low_freq_factor", 1.0)),
                float(md.get(f"{a}.rope.scaling.high_freq_factor", 4.0)),
                float(md.get(f"{a}.rope.scaling.original_context_length", 8192)))
        # LongRoPE: two divisor sets, chosen by the context size (forward's n_ctx)
        self.long_factors = self.short_factors = None
        if "rope_factors_long.weight" in self.tensors and self.freq_factors is None:
            self.long_factors = self.weight("rope_factors_long.weight")
            self.short_factors = self.weight("rope_factors_short.weight")
        self.rope_orig_ctx = int(md.get(f"{a}.rope.scaling.original_context_length", md[f"{a}.context_length"]))
        self.rope_attn_factor = float(md.get(f"{a}.rope.scaling.attn_factor", 1.0))
        self.n_vocab = int(self.tensors["token_embd.weight"].shape[1])
        self.tied = "output.weight" not in self.tensors
        if f"{a}.attention.key_length" in md:
            self.head_dim = int(md[f"{a}.attention.key_length"])
            self.n_rot = int(md.get(f"{a}.rope.dimension_count", self.head_dim))
        self.gemma = a == "gemma3"
        self.window = int(md.get(f"{a}.attention.sliding_window", 0)) if a != "phi3" else 0
        self.swa_period = int(md.get(f"{a}.attention.sliding_window_pattern", 6 if self.gemma else 0))
        self.local_rope_base = float(md.get(f"{a}.rope.freq_base_swa", 10000.0)) if self.gemma else None

    def layer_window(self, layer) -> int:
        """0: the layer sees every earlier position."""
        if not self.window:
            return 0
        if self.swa_period and layer % self.swa_period == self.swa_period - 1:
            return 0
        return self.window

    def weight(self, name) -> np.ndarray:
        t = self.tensors[name]
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        return np.asarray(w, dtype=np.float64)

    def is_quant(self, name) -> bool:
        return self.tensors[name].tensor_type in QUANT_TYPES

    def has(self, name) -> bool:
        return name in self.tensors


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def llama3_freq_factors(n_rot, base, factor, low_freq_factor, high_freq_factor, orig_ctx):
    """Divisors of each rotary frequency under Llama 3.1's scaling rule (from its published description)."""
    freqs = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    wavelen = 2 * math.pi / freqs
    low_wavelen = orig_ctx / low_freq_factor    # longer than this: scale fully
    high_wavelen = orig_ctx / high_freq_factor  # shorter than this: keep
    out = np.ones_like(freqs)
    for i, wl in enumerate(wavelen):
        if wl < high_wavelen:
            out[i] = 1.0
        elif wl > low_wavelen:
            out[i] = factor
        else:
            smooth = (orig_ctx / wl - low_freq_factor) / (high_freq_factor - low_freq_factor)
            new_freq = (1 - smooth) * freqs[i] / factor + smooth * freqs[i]
            out[i] = freqs[i] / new_freq
    return out


def rope_angles(positions, n_rot, base, linear_factor=1.0, freq_factors=None):
    """(n_pos, n_rot/2) rotation angles."""
    inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if freq_factors is not None:
        inv = inv / np.asarray(freq_factors, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64) / linear_factor
    return pos[:, None] * inv[None, :]


def apply_rope(x, angles, n_rot, neox, mscale=1.0):
    """x: (n_pos, n_heads, head_dim). Rotates the first n_rot dims of every head (cos and sin
    times mscale: LongRoPE's attention factor)."""
    x = x.copy()
    c = mscale * np.cos(angles)[:, None, :]
    s = mscale * np.sin(angles)[:, None, :]
    if neox:
        half = n_rot // 2
        a = x[..., :half].copy()
        b = x[..., half:n_rot].copy()
        x[..., :half] = a * c - b * s
        x[..., half:n_rot] = a * s + b * c
    else:
        a = x[..., 0:n_rot:2].copy()
        b = x[..., 1:n_rot:2].copy()
        x[..., 0:n_rot:2] = a * c - b * s
        x[..., 1:n_rot:2] = a * s + b * c
    return x


def quantize_activations_q8(x):
    """Round each 32-block of the last axis to d*q, d = max|x|/127 (float32), q = round-half-even(x/d)."""
    x32 = np.asarray(x, dtype=np.float32)
    shape = x32.shape
    blocks = x32.reshape(-1, 32)
    d = (np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = np.rint(blocks * inv)  # np.rint rounds half to even
    return (q.astype(np.float64) * d.astype(np.float64)).reshape(shape)


def forward(model: ReferenceModel, tokens, act_quant=False, n_layers=None, kv_half=False, hidden=False, n_ctx=None):
    """Logits (len(tokens), n_vocab) in float64 for tokens at positions 0..n-1 (causal).

    n_ctx: the context size the engine was given (None: len(tokens)); it picks LongRoPE's
    factor set, long when n_ctx > the original training context.

    kv_half: keys (after RoPE) and values rounded to IEEE half, as an F16 KV cache
    stores them (numpy's float16 cast rounds to nearest even).
    hidden: return the output layer's input instead (rmsnorm of the last hidden
    state, (len(tokens), dim)): what embeddings pool."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    H, KV, hd = model.n_heads, model.n_kv_heads, model.head_dim
    group = H // KV

    def matmul(x, name, bias=None):
        w = model.weight(name)
        if act_quant and model.is_quant(name):
            x = quantize_activations_q8(x)
        y = x @ w.T
        if bias is not None and model.has(bias):
            y = y + model.weight(bias)
        return y

    def qkv(xn, p):
        if model.has(p + "attn_qkv.weight"):
            y = matmul(xn, p + "attn_qkv.weight")
            return y[:, :H * hd], y[:, H * hd:(H + KV) * hd], y[:, (H + KV) * hd:]
        return (matmul(xn, p + "attn_q.weight", p + "attn_q.bias"), matmul(xn, p + "attn_k.weight", p + "attn_k.bias"),
                matmul(xn, p + "attn_v.weight", p + "attn_v.bias"))

    def gate_up(xn, p):
        if not model.has(p + "ffn_gate.weight"):
            y = matmul(xn, p + "ffn_up.weight")
            return y[:, :model.hidden_dim], y[:, model.hidden_dim:]
        return matmul(xn, p + "ffn_gate.weight"), matmul(xn, p + "ffn_up.weight")

    def head_norm(x, name):
        return rmsnorm(x, model.weight(name), model.eps) if model.has(name) else x

    def post_norm(y, name):
        return rmsnorm(y, model.weight(name), model.eps) if model.has(name) else y

    emb = model.weight("token_embd.weight")
    x = emb[tokens].copy()
    if model.gemma:
        x *= math.sqrt(model.dim)
    linear = model.rope_factor if model.rope_scaling == "linear" else 1.0
    factors = model.freq_factors
    if model.long_factors is not None:
        factors = model.long_factors if (n if n_ctx is None else n_ctx) > model.rope_orig_ctx else model.short_factors
    angles = rope_angles(np.arange(n), model.n_rot, model.rope_base, linear, factors)
    if model.local_rope_base:
        local_angles = rope_angles(np.arange(n), model.n_rot, model.local_rope_base)
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    act = gelu_tanh if model.gemma else silu
    for layer in range(model.n_layers if n_layers is None else n_layers):
        p = f"blk.{layer}."
        window = model.layer_window(layer)
        layer_mask = mask
        if window:
            layer_mask = mask + np.tril(np.full((n, n), -np.inf), k=-window)
        layer_angles = local_angles if window and model.local_rope_base else angles
        xn = rmsnorm(x, model.weight(p + "attn_norm.weight"), model.eps)
        q, k, v = qkv(xn, p)
        q = head_norm(q.reshape(n, H, hd), p + "attn_q_norm.weight")
        k = head_norm(k.reshape(n, KV, hd), p + "attn_k_norm.weight")
        v = v.reshape(n, KV, hd)
        q = apply_rope(q, layer_angles, model.n_rot, model.rope_neox, model.rope_attn_factor)
        k = apply_rope(k, layer_angles, model.n_rot, model.rope_neox, model.rope_attn_factor)
        if kv_half:
            k = k.astype(np.float16).astype(np.float64)
            v = v.astype(np.float16).astype(np.float64)
        att_out = np.empty((n, H, hd))
        for h in range(H):
            kh = k[:, h // group, :]
            vh = v[:, h // group, :]
            scores = q[:, h, :] @ kh.T / math.sqrt(hd) + layer_mask
            scores -= scores.max(axis=1, keepdims=True)
            pr = np.exp(scores)
            pr /= pr.sum(axis=1, keepdims=True)
            att_out[:, h, :] = pr @ vh
        x = x + post_norm(matmul(att_out.reshape(n, H * hd), p + "attn_output.weight"), p + "post_attention_norm.weight")
        xn = rmsnorm(x, model.weight(p + "ffn_norm.weight"), model.eps)
        g, u = gate_up(xn, p)
        x = x + post_norm(matmul(act(g) * u, p + "ffn_down.weight"), p + "post_ffw_norm.weight")
    xn = rmsnorm(x, model.weight("output_norm.weight"), model.eps)
    if hidden:
        return xn
    out_name = "token_embd.weight" if model.tied else "output.weight"
    return matmul(xn, out_name)


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max |expected| (a scale-free error over a whole logit array)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
