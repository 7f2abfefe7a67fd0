"""What a JSON-schema constraint adds to a decode step, side by side in one process.

    python bench/grammar_cost.py [-m MODEL] [-n 96] [-t 2] [--rounds 3]

Targets (issue 17): < 10% on the default model, < 5% on Qwen2.5-Coder-0.5B.

Each round decodes n greedy tokens of the same prompt three times: free, under a JSON
schema that keeps the model writing (an array of at least 60 short strings) with the
mask computed every step ("mask"), and under the same schema as generation runs it,
where llguidance first checks the model's own token and the mask is computed only when
the grammar rejects it ("lazy"). It times whole steps (sample + forward pass) from
Llama.last_timings. The runs alternate so that load on the machine falls on all alike;
the medians are reported, with the time spent inside llguidance (mask, token checks and
bookkeeping) and how many steps computed a mask.
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

    def try_accept(self, token):
        t0 = time.perf_counter()
        taken = super().try_accept(token)
        Timed.spent += time.perf_counter() - t0
        return taken


def run(mode: str):
    llm.reset()
    kw = {}
    if mode != "free":
        kw["grammar"] = constraint = Timed(llm.tokenizer, grammar, end_ids=llm.tokenizer.eot_ids, lazy=mode == "lazy")
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
    masks = constraint.n_masks if mode != "free" else 0
    return (t["gen_s"] + t["sample_s"]) / steps, Timed.spent / max(n, 1), masks / max(n, 1)


MODES = ("free", "mask", "lazy")
for mode in MODES:  # warm-up: page cache, llguidance's first masks
    run(mode)
step = {m: [] for m in MODES}
inside = {m: [] for m in MODES}
share = {m: [] for m in MODES}
for r in range(a.rounds):
    for mode in MODES:
        s, ll, k = run(mode)
        step[mode].append(s)
        inside[mode].append(ll)
        share[mode].append(k)
    print(f"round {r}: " + ", ".join(f"{m} {step[m][-1] * 1e3:.2f} ms/step" for m in MODES), flush=True)
med = {m: statistics.median(step[m]) for m in MODES}
f = med["free"]
print(f"{llm.model_path}: {a.threads} threads, {a.n} tokens, median of {a.rounds}: free {f * 1e3:.2f} ms/step")
for m in ("mask", "lazy"):
    ll = statistics.median(inside[m])
    print(f"  JSON schema, {m}: {med[m] * 1e3:.2f} ms/step: +{(med[m] / f - 1) * 100:.1f}% "
          f"(in llguidance {ll * 1e3:.3f} ms/step = {ll / f * 100:.1f}%; "
          f"mask computed at {statistics.median(share[m]) * 100:.0f}% of steps)")
