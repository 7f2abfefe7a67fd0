#!/usr/bin/env python3
"""Record llama.cpp's greedy continuations of Gemma 3 270M, for tests/test_gemma_llamacpp.py.

    python tests/recorders/record_gemma_reference.py [--llama-server PATH] [-m MODEL]

Writes tests/data/reference_greedy_gemma-3-270m.json. For each fixed prompt it stores the
prompt's token ids (llama.cpp's tokenizer, BOS added as the file asks), the greedy
continuation (N_NEW tokens, argmax at every step) and at every step the TOP most likely
tokens with their log-probabilities: the difference of two log-probabilities is the
difference of their logits, so the test can tell a real mismatch from a near-tie.

llama.cpp is its `llama-server` (no Python binding needed), started here on a free local
port and asked through its /tokenize and /completion endpoints: `"samplers": ["temperature"]`
with temperature 0 keeps only the largest logit (llama.cpp's temperature sampler at
temperature <= 0), `"n_probs"` returns the top tokens' probabilities from a softmax of the raw
logits (get_token_probabilities in tools/server/server-common.cpp), `"cache_prompt": false`
evaluates each prompt afresh. The binary is the one bench/build_llamacpp.sh builds from the
llama.cpp source in the llama-cpp-python 0.3.36 sdist.

The teacher-forced side of the Gemma test reads tests/data/perplexity_reference_gemma-3-270m-window.json,
made by tests/recorders/record_perplexity_reference.py -m gemma-3-270m-q4_k_m -c 1024 --chunks 3 --top-logits
--out tests/data/perplexity_reference_gemma-3-270m-window.json.
Nothing here imports pyllama's engine (only its catalog, to find the model file).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # tests/
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from support.llamacpp import llamacpp_binary  # noqa: E402

OUT = HERE / "data" / "reference_greedy_gemma-3-270m.json"
MODEL = "gemma-3-270m-q4_k_m"
N_NEW = 32
TOP = 5
N_CTX = 512

# A base model: plain text openings (one with Gemma's turn markers, parsed as special tokens).
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, there was a little",
    "The three primary colors are",
    "<start_of_turn>user\nWhat is the boiling point of water?<end_of_turn>\n<start_of_turn>model\n",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("llama-server did not become ready")


def version_info(exe: Path) -> list[str]:
    res = subprocess.run([str(exe), "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return [line.strip() for line in res.stdout.splitlines() if line.startswith(("version", "built"))]


def record_prompt(port: int, text: str) -> dict:
    ids = post(port, "/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]
    res = post(port, "/completion", {"prompt": ids, "n_predict": N_NEW, "samplers": ["temperature"],
                                     "temperature": 0.0, "n_probs": TOP, "cache_prompt": False,
                                     "ignore_eos": True, "return_tokens": True})
    steps = res["completion_probabilities"]
    tokens = [int(t) for t in res["tokens"]]
    if len(tokens) != N_NEW or len(steps) != N_NEW:
        raise SystemExit(f"{text!r}: got {len(tokens)} tokens and {len(steps)} steps, wanted {N_NEW}")
    top = []
    for step, (tok, probs) in enumerate(zip(tokens, steps)):
        pairs = [[int(p["id"]), float(p["logprob"])] for p in probs["top_logprobs"]]
        if tok != pairs[0][0] and not math.isclose(pairs[0][1], dict(pairs).get(tok, -math.inf), abs_tol=1e-6):
            raise SystemExit(f"{text!r} step {step}: llama.cpp chose {tok}, its top token is {pairs[0]}")
        top.append(pairs)
    return {"prompt": ids, "tokens": tokens, "top_logprob": top}


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))  # this checkout's pyllama: the catalog and the file hash
    from pyllama.models import cached_path, sha256_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-server", default=llamacpp_binary("llama-server"))
    ap.add_argument("-m", "--model", help=f"the model file (default: pyllama's cached {MODEL})")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.model:
        model = args.model
    else:
        model = str(cached_path(MODEL))
    exe = Path(args.llama_server)
    port = free_port()
    cmd = [str(exe), "-m", model, "-c", str(N_CTX), "-t", str(args.threads), "-np", "1", "--port", str(port),
           "--host", "127.0.0.1"]
    print("running: " + " ".join(cmd), file=sys.stderr)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        runs = []
        for text in PROMPTS:
            print(f"  {text!r}", file=sys.stderr)
            runs.append(record_prompt(port, text))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    data = {
        "what": f"llama.cpp's greedy continuations of {MODEL}: the reference for tests/test_gemma_llamacpp.py",
        "recorded_by": "tests/recorders/record_gemma_reference.py",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "llama_cpp": {"source": "vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist (PyPI)",
                      "binary": "llama-server (bench/build_llamacpp.sh)", "version": version_info(exe),
                      "command": " ".join(["llama-server", "-m", os.path.basename(model)] + cmd[3:-4]),
                      "request": {"samplers": ["temperature"], "temperature": 0.0, "n_probs": TOP,
                                  "cache_prompt": False, "ignore_eos": True, "n_predict": N_NEW}},
        "model": {"name": MODEL, "file": os.path.basename(model), "sha256": sha256_file(model)},
        "n_ctx": N_CTX,
        "n_new": N_NEW,
        "prompts_text": PROMPTS,
        "runs": runs,
    }
    with open(args.out, "w") as fh:
        fh.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                                      for k, v in data.items()) + "\n}\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
