"""Tiny random Hugging Face models of each family, converted by llama.cpp's own converter.

For each family a small config with random weights (seeded, no download) is built with
`transformers`, its logits on a fixed token sequence are computed by transformers in
float32, and it is converted to an F32 GGUF by llama.cpp's convert_hf_to_gguf.py. The
test (tests/test_families.py) then compares pyllama's logits on the GGUF with those of
transformers: an independent implementation of the architecture and an independent
converter.

Run as a script (the test does, in a subprocess, because the converter needs its own
gguf-py first on sys.path):

    python tests/support/hf_tiny_models.py FAMILY OUT_DIR CONVERTER_DIR

writes OUT_DIR/FAMILY.gguf, OUT_DIR/FAMILY.tokens.npy and OUT_DIR/FAMILY.logits.npy.

The converter is used as it is except for the vocabulary: tokenizers are not what is
tested here, so the tiny byte-level BPE vocabulary of tests/support/tiny_models.py is written
instead of the converter's tokenizer step (which wants a real tokenizer's files). For
Mistral the converter writes `llama` and drops the sliding window (llama.cpp ignores
Mistral's window); the window is added to the file here so that pyllama's windowed
attention is checked against transformers'. `phi3-longrope` (LONGROPE below) is Phi-3 with
the 128k variants' rope scaling, run at two lengths.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FAMILIES = ("qwen3", "llama3", "mistral", "phi3", "gemma3")
N_VOCAB = 269  # tests/support/tiny_models.gpt2_vocab()
SEQ_LEN = 14   # longer than the windows below, so windowed layers drop positions

# Phi-3 with LongRoPE (the 128k variants' rope scaling), tested in both regimes on one model.
# transformers takes the long factors when a forward call's sequence is longer than the original
# context, llama.cpp (and pyllama) when the context size n_ctx is: the short run is SEQ_LEN tokens
# with n_ctx = LONGROPE_ORIG_CTX (short in both), the long run LONGROPE_LONG_LEN tokens with n_ctx
# LONGROPE_LONG_CTX (long in both). It is written as FAMILY.long.tokens.npy / .long.logits.npy
# beside the short run's files.
LONGROPE = "phi3-longrope"
LONGROPE_ORIG_CTX = 16
LONGROPE_LONG_LEN = 24
LONGROPE_LONG_CTX = 32
LONGROPE_SHORT_FACTORS = [1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 1.7, 2.0]
LONGROPE_LONG_FACTORS = [1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


def token_sequence(n=SEQ_LEN):
    import numpy as np
    return np.random.default_rng(7).integers(0, N_VOCAB, n)


def hf_config(family: str):
    import transformers as tf
    common = dict(vocab_size=N_VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "qwen3":
        return "Qwen3ForCausalLM", tf.Qwen3Config(**common, num_hidden_layers=2, head_dim=16,
                                                  tie_word_embeddings=False)
    if family == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
        return "LlamaForCausalLM", tf.LlamaConfig(**common, num_hidden_layers=2, tie_word_embeddings=True,
                                                  rope_parameters=rope)
    if family == "mistral":
        return "MistralForCausalLM", tf.MistralConfig(**common, num_hidden_layers=2, sliding_window=5,
                                                      tie_word_embeddings=False)
    if family == "phi3":
        return "Phi3ForCausalLM", tf.Phi3Config(**common, num_hidden_layers=2, original_max_position_embeddings=64,
                                                tie_word_embeddings=False)
    if family == LONGROPE:
        # max_position_embeddings / original = 4: attention factor sqrt(1 + ln 4 / ln 16) = 1.22
        rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": LONGROPE_SHORT_FACTORS,
                "long_factor": LONGROPE_LONG_FACTORS, "original_max_position_embeddings": LONGROPE_ORIG_CTX}
        return "Phi3ForCausalLM", tf.Phi3Config(**common, num_hidden_layers=2,
                                                original_max_position_embeddings=LONGROPE_ORIG_CTX,
                                                rope_parameters=rope, tie_word_embeddings=False)
    if family == "gemma3":
        # 7 layers: five windowed, a global one, a windowed one; query_pre_attn_scalar = head_dim as in
        # every Gemma 3 but 27B (llama.cpp scales queries by 1/sqrt(head_dim) for them)
        return "Gemma3ForCausalLM", tf.Gemma3TextConfig(**common, num_hidden_layers=7, head_dim=16,
                                                        query_pre_attn_scalar=16, sliding_window=4)
    raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES + (LONGROPE,))})")


def build_hf_model(family: str, model_dir: Path):
    """Random float32 weights; norms perturbed so that a misplaced norm weight shows."""
    import torch
    import transformers as tf
    arch, cfg = hf_config(family)
    cfg.architectures = [arch]
    torch.manual_seed(0)
    model = getattr(tf, arch)(cfg).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights (and any bias): away from their constant init
                p.copy_(torch.randn_like(p) * 0.3 + (0.0 if family == "gemma3" else 1.0))
            else:
                p.copy_(torch.randn_like(p) * (1.0 / p.shape[-1] ** 0.5))
    model.save_pretrained(model_dir, safe_serialization=True)
    # Gemma 3's converter reads the vocabulary size from tokenizer.json
    vocab = {f"t{i}": i for i in range(N_VOCAB)}
    (model_dir / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}, "added_tokens": []}))
    return model


def hf_logits(model, tokens):
    import torch
    with torch.no_grad():
        out = model(torch.tensor([list(tokens)], dtype=torch.long))
    return out.logits[0].to(torch.float64).numpy()


def convert(family: str, model_dir: Path, out_path: Path, converter_dir: Path):
    sys.path.insert(0, str(converter_dir / "gguf-py"))
    sys.path.insert(0, str(converter_dir))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gguf  # the converter's own gguf-py
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class
    import tiny_models

    hparams = ModelBase.load_hparams(model_dir, False)
    cls = get_model_class(get_model_architecture(hparams, ModelType.TEXT), mmproj=False)

    def tiny_vocab(self):
        for key, (value, vtype) in tiny_models.vocab_metadata("gpt2").items():
            if vtype == gguf.GGUFValueType.ARRAY:
                self.gguf_writer.add_array(key, value)
            else:
                self.gguf_writer.add_key_value(key, value, vtype)

    cls.set_vocab = tiny_vocab
    if family == "mistral":
        parent = cls.set_gguf_parameters

        def with_window(self):
            parent(self)
            self.gguf_writer.add_sliding_window(self.hparams["sliding_window"])

        cls.set_gguf_parameters = with_window
    import torch
    with torch.inference_mode():
        m = cls(model_dir, gguf.LlamaFileType.ALL_F32, out_path, eager=True, model_name=f"tiny-{family}")
        m.write()


def main(argv):
    import numpy as np
    family, out_dir, converter_dir = argv[1], Path(argv[2]), Path(argv[3])
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = out_dir / f"{family}-hf"
    model_dir.mkdir(exist_ok=True)
    model = build_hf_model(family, model_dir)
    tokens = token_sequence()
    np.save(out_dir / f"{family}.tokens.npy", tokens)
    np.save(out_dir / f"{family}.logits.npy", hf_logits(model, tokens))
    if family == LONGROPE:
        long_tokens = token_sequence(LONGROPE_LONG_LEN)
        np.save(out_dir / f"{family}.long.tokens.npy", long_tokens)
        np.save(out_dir / f"{family}.long.logits.npy", hf_logits(model, long_tokens))
    convert(family, model_dir, out_dir / f"{family}.gguf", converter_dir)


if __name__ == "__main__":
    main(sys.argv)
