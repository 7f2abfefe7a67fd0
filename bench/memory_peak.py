"""Peak resident memory of one engine on the default model (run each engine in its own process).

    python bench/memory_peak.py pyllama|llama_cpp [-m MODEL] [--n-ctx 512] [--n-batch 512] [--text FILE]

Evaluates a 300-token prompt, then 16 greedy tokens, and prints ru_maxrss in MiB.
With --text, the job a user runs instead: the text of FILE tokenized and completed
by 16 greedy tokens through create_completion (the C++ counterpart is
`llama-completion -m MODEL -c 512 -n 16 -t 2 --temp 0 -no-cnv -f FILE` under
`/usr/bin/time -v`). llama_cpp needs `pip install llama-cpp-python` (not a
dependency of pyllama).
"""
import argparse
import resource

p = argparse.ArgumentParser()
p.add_argument("engine", choices=["pyllama", "llama_cpp"])
p.add_argument("-m", "--model", help="GGUF file (default: the default model)")
p.add_argument("--n-ctx", type=int, default=512)
p.add_argument("--n-batch", type=int, default=512)
p.add_argument("--text", help="complete the text of this file instead of evaluating token ids")
a = p.parse_args()

from pyllama.models import default_model_path  # noqa: E402

path = a.model or default_model_path()
prompt = list(range(100, 400))
if a.engine == "pyllama":
    from pyllama import Llama

    llm = Llama(model_path=path, n_ctx=a.n_ctx, n_batch=a.n_batch, n_threads=2)
    last_logits = lambda: llm.logits  # noqa: E731
else:
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=a.n_ctx, n_batch=a.n_batch, n_threads=2, verbose=False)
    last_logits = lambda: llm.scores[llm.n_tokens - 1]  # noqa: E731
if a.text:  # the same call in both engines
    llm.create_completion(open(a.text, encoding="utf-8").read(), max_tokens=16, temperature=0)
else:
    llm.eval(prompt)
    for _ in range(16):
        llm.eval([int(last_logits().argmax())])
print(f"{a.engine}: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")
