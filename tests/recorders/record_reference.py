"""Record the default model's greedy continuations with independent engines.

    python tests/recorders/record_reference.py [MODEL.gguf] [--engines llama_cpp,transformers]

Writes tests/data/reference_greedy.json, read by test_forward.py. For each
fixed prompt (token ids, stored in the file) and each engine it stores the
greedy continuation (argmax at every step, N_NEW tokens) and the top-5
(token id, logit) pairs at every step, so the test can tell a real mismatch
from a near-tie where two engines may legitimately pick different tokens.

Engines (each optional; whichever is installed is recorded):
- llama_cpp: llama-cpp-python (llama.cpp) loading the GGUF. Like pyllama it
  computes quantized dot products on 8-bit-rounded activations.
- transformers: Hugging Face transformers + CPU torch loading the same GGUF
  (gguf_file=...), which dequantizes all weights to float32 and computes in
  float32 (no activation rounding).
Nothing here imports pyllama.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent  # tests/
OUT = HERE / "data" / "reference_greedy.json"
N_NEW = 32
TOP = 5

# Prompts as text; the token ids recorded in the JSON (from llama.cpp's tokenizer,
# special tokens parsed) are what the tests feed, so no tokenizer is under test here.
PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n",
    "Once upon a time, there was a little",
]


def top_k(logits: np.ndarray, k: int = TOP) -> list[list]:
    idx = np.argsort(-logits, kind="stable")[:k]
    return [[int(i), float(logits[i])] for i in idx]


def tokenize_prompts(model_path: str) -> list[list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, n_ctx=64, vocab_only=True, verbose=False)
    return [llm.tokenize(p.encode(), add_bos=False, special=True) for p in PROMPTS]


def record_llama_cpp(model_path: str, prompts: list[list[int]]) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    # logits_all=True: llama-cpp-python 0.3.x fills .scores only in that mode
    llm = Llama(model_path=model_path, n_ctx=256, n_threads=2, n_batch=256, logits_all=True, verbose=False)
    runs = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        out, tops = [], []
        for _ in range(N_NEW):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            tok = int(np.argmax(logits))
            out.append(tok)
            tops.append(top_k(logits))
            llm.eval([tok])
        runs.append({"prompt": ids, "tokens": out, "top5": tops})
    return {"engine": "llama-cpp-python", "version": llama_cpp.__version__, "runs": runs}


def record_transformers(model_path: str, prompts: list[list[int]]) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    p = Path(model_path)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    model.eval()
    runs = []
    with torch.no_grad():
        for ids in prompts:
            out, tops = [], []
            seq = torch.tensor([ids], dtype=torch.long)
            past = None
            step_in = seq
            for _ in range(N_NEW):
                res = model(input_ids=step_in, past_key_values=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[0, -1].to(torch.float32).numpy()
                tok = int(np.argmax(logits))
                out.append(tok)
                tops.append(top_k(logits))
                step_in = torch.tensor([[tok]], dtype=torch.long)
            runs.append({"prompt": ids, "tokens": out, "top5": tops})
    return {"engine": "transformers", "version": f"transformers {transformers.__version__}, torch {torch.__version__}",
            "dtype": "float32", "runs": runs}


def main(argv=None) -> int:
    from pyllama.models import sha256_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=os.environ.get("PYLLAMA_TEST_MODEL"),
                    help="the default model GGUF (SmolLM2-135M-Instruct.Q4_1.gguf)")
    ap.add_argument("--engines", default="llama_cpp,transformers")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if not args.model:
        ap.error("pass the model path (or set PYLLAMA_TEST_MODEL)")
    prompts = tokenize_prompts(args.model)
    data = {
        "model": {"file": os.path.basename(args.model), "sha256": sha256_file(args.model)},
        "n_new": N_NEW,
        "prompts_text": PROMPTS,
        "prompts": prompts,
        "engines": {},
    }
    recorders = {"llama_cpp": record_llama_cpp, "transformers": record_transformers}
    for name in args.engines.split(","):
        print(f"recording {name} ...", file=sys.stderr)
        try:
            data["engines"][name] = recorders[name](args.model, prompts)
        except ImportError as e:
            print(f"  skipped: {e}", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
