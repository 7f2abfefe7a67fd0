"""What a JSON-schema constraint adds to a decode step, side by side in one process.

    python bench/grammar_cost.py [-m MODEL] [-n 96] [-t 2] [--rounds 3]

Targets (issue 17): < 10% on the default model, < 5% on Qwen2.5-Coder-0.5B.

Each round decodes n greedy tokens of the same prompt twice, once free and once under a
JSON schema that keeps the model writing (an array of at least 60 short strings), and
times whole steps (mask + sample + forward pass) from Llama.last_timings. The two runs
alternate so that load on the machine falls on both alike; the medians are reported,
and the constrained run's time split into its parts (mask and token bookkeeping in
llguidance, the rest).
"""
import argparse
import statistics
import time

from pyllama import Llama
from pyllama.grammar import GrammarConstraint, LlamaGrammar

SCHEMA = {"type": "object", "properties": {"names": {
    "type": "array", "minItems": 60, "items": {"type": "string", "maxLength": 24}}},
    "required": ["names"], "additionalProperties": False}

p = argparse.ArgumentParser()
p.add_argument("-m", "--model", default=None)
p.add_argument("-n", type=int, default=96)
p.add_argument("-t", "--threads", type=int, default=2)
p.add_argument("--rounds", type=int, default=3)
a = p.parse_args()

llm = Llama(a.model, n_ctx=1024, n_threads=a.threads)
prompt = llm.tokenize(b"A JSON object listing the names of sixty famous scientists: ")
grammar = LlamaGrammar.from_json_schema(SCHEMA)


class Timed(GrammarConstraint):
    spent = 0.0

    def fill_mask(self):
        t0 = time.perf_counter()
        m = super().fill_mask()
        Timed.spent += time.perf_counter() - t0
        return m

    def accept(self, token):
        t0 = time.perf_counter()
        super().accept(token)
        Timed.spent += time.perf_counter() - t0


def run(constrained: bool):
    llm.reset()
    kw = {}
    if constrained:
        kw["grammar"] = Timed(llm.tokenizer, grammar, end_ids=llm.tokenizer.eot_ids)
    Timed.spent = 0.0
    n = 0
    gen = llm.generate(prompt, temp=0.0, **kw)
    for _ in gen:
        n += 1
        if n == a.n + 1:
            break
    gen.close()
    t = llm.last_timings  # gen_s / sample_s cover the steps after the first token
    steps = t["gen_tokens"]
    return (t["gen_s"] + t["sample_s"]) / steps, Timed.spent / max(n, 1), steps


run(False), run(True)  # warm-up: page cache, llguidance's first masks
free, bound, mask = [], [], []
for r in range(a.rounds):
    f, _, n1 = run(False)
    b, m, n2 = run(True)
    free.append(f)
    bound.append(b)
    mask.append(m)
    print(f"round {r}: free {f * 1e3:.2f} ms/step, JSON schema {b * 1e3:.2f} ms/step "
          f"(llguidance {m * 1e3:.3f} ms), {n1}/{n2} steps", flush=True)
f, b, m = statistics.median(free), statistics.median(bound), statistics.median(mask)
print(f"{llm.model_path}: {a.threads} threads, {a.n} tokens, median of {a.rounds}: free {f * 1e3:.2f} ms/step, "
      f"with JSON schema {b * 1e3:.2f} ms/step: +{(b / f - 1) * 100:.1f}% "
      f"(llguidance mask + accept {m * 1e3:.3f} ms/step = {m / f * 100:.1f}%)")
