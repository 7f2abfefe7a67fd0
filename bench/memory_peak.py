"""Peak resident memory of one engine on the default model (run each engine in its own process).

    python bench/memory_peak.py pyllama|llama_cpp [-m MODEL] [--n-ctx 512] [--n-batch 512] [--text [FILE]]
    python bench/memory_peak.py prompt > /tmp/prompt.txt     (the --text job's prompt, for llama-completion)

Evaluates a 300-token prompt, then 16 greedy tokens, and prints ru_maxrss in MiB.
With --text, the job a user runs instead: a text (FILE, else the built-in 257-token
prompt below) tokenized and completed by 16 greedy tokens through create_completion
(the C++ counterpart is `llama-completion -m MODEL -c 512 -n 16 -t 2 --temp 0 -no-cnv
-f /tmp/prompt.txt` under `/usr/bin/time -v`). llama_cpp needs `pip install
llama-cpp-python` (not a dependency of pyllama).
"""
import argparse
import resource

SENTENCE = ("The history of the small river town begins with a mill, a bridge and a market square where "
            "farmers sold grain, wool and apples every Thursday. ")
PROMPT = SENTENCE * 8 + SENTENCE[:115] + "\n"  # 1260 characters: 257 tokens of the default model

p = argparse.ArgumentParser()
p.add_argument("engine", choices=["pyllama", "llama_cpp", "prompt"])
p.add_argument("-m", "--model", help="GGUF file (default: the default model)")
p.add_argument("--n-ctx", type=int, default=512)
p.add_argument("--n-batch", type=int, default=512)
p.add_argument("--text", nargs="?", const="", help="complete a text (this file's, else the built-in prompt) "
               "instead of evaluating token ids")
a = p.parse_args()
if a.engine == "prompt":
    print(PROMPT, end="")
    raise SystemExit(0)

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
    text = open(a.text, encoding="utf-8").read() if a.text else PROMPT
    llm.create_completion(text, max_tokens=16, temperature=0)
else:
    llm.eval(prompt)
    for _ in range(16):
        llm.eval([int(last_logits().argmax())])
print(f"{a.engine}: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")
