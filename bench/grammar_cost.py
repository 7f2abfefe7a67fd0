"""What a JSON-schema constraint adds to a decode step, side by side in one process.

    python bench/grammar_cost.py [-m MODEL] [-n 96] [-t 2] [--rounds 3]

Targets (issue 17): < 10% on the default model, < 5% on Qwen2.5-Coder-0.5B.

Each round decodes n greedy tokens of the same prompt three times: free, under a JSON
schema that keeps the model writing (an array of at least 60 short strings) with the
mask computed every step ("mask"), and under the same schema as generation runs it,
where llguidance first checks the model's own token and the mask is computed only when
the grammar rejects it ("lazy"). It times whole steps (sample + forward pass) from
Llama.last_timings, and the CPU time the process spent on them (all its threads: on a
machine others load, wall time grows with their load, CPU time much less). The runs
alternate so that load on the machine falls on all alike; the medians are reported, with
the time spent inside llguidance (mask, token checks and bookkeeping) and how many steps
computed a mask.

Then, since a few percent of a step drown in a loaded machine's noise, the per-step work
a constraint adds is timed on its own: the logits of the constrained run are recorded
once, and replayed step by step through the free sampler and through each constrained
path (CPU time of the sampling + grammar calls only, in this thread, the sampler's passes
kept on it too so that no idle OpenMP thread's spinning is counted; median over
--rounds * 3 replays).
"""
import argparse
import statistics
import time

import numpy as np

from pyllama import Llama
from pyllama._core import lib
from pyllama.grammar import GrammarConstraint, LlamaGrammar
from pyllama.sampling import Sampler, SamplingParams

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
        if n == 1:
            cpu0 = time.process_time()
        if n == a.n + 1:
            break
    cpu = (time.process_time() - cpu0) / a.n  # the a.n steps between the first token and the last
    gen.close()
    t = llm.last_timings  # gen_s / sample_s cover the steps after the first token
    steps = t["gen_tokens"]
    masks = constraint.n_masks if mode != "free" else 0
    return (t["gen_s"] + t["sample_s"]) / steps, cpu, Timed.spent / max(n, 1), masks / max(n, 1)


MODES = ("free", "mask", "lazy")
for mode in MODES:  # warm-up: page cache, llguidance's first masks
    run(mode)
step = {m: [] for m in MODES}
cpu = {m: [] for m in MODES}
inside = {m: [] for m in MODES}
share = {m: [] for m in MODES}
for r in range(a.rounds):
    for mode in MODES:
        s, c, ll, k = run(mode)
        step[mode].append(s)
        cpu[mode].append(c)
        inside[mode].append(ll)
        share[mode].append(k)
    print(f"round {r}: " + ", ".join(f"{m} {step[m][-1] * 1e3:.2f} ms/step (CPU {cpu[m][-1] * 1e3:.2f})"
                                     for m in MODES), flush=True)
med = {m: statistics.median(step[m]) for m in MODES}
med_cpu = {m: statistics.median(cpu[m]) for m in MODES}
f, fc = med["free"], med_cpu["free"]
print(f"{llm.model_path}: {a.threads} threads, {a.n} tokens, median of {a.rounds}: "
      f"free {f * 1e3:.2f} ms/step (CPU {fc * 1e3:.2f} ms/step)")
for m in ("mask", "lazy"):
    ll = statistics.median(inside[m])
    print(f"  JSON schema, {m}: {med[m] * 1e3:.2f} ms/step: {(med[m] / f - 1) * 100:+.1f}%, "
          f"CPU {med_cpu[m] * 1e3:.2f} ms/step: {(med_cpu[m] / fc - 1) * 100:+.1f}% "
          f"(in llguidance {ll * 1e3:.3f} ms/step = {ll / f * 100:.1f}% of a free step's wall time; "
          f"mask computed at {statistics.median(share[m]) * 100:.0f}% of steps)")


def record():
    """The greedy constrained run's tokens, and the logits each was chosen from."""
    llm.reset()
    tokens = []
    gen = llm.generate(prompt, temp=0.0, grammar=GrammarConstraint(llm.tokenizer, grammar,
                                                                  end_ids=llm.tokenizer.eot_ids))
    for token in gen:
        tokens.append(token)
        if len(tokens) == a.n:
            break
    gen.close()
    llm.reset()
    llm.eval(prompt)
    rows = []
    for token in tokens:
        rows.append(llm.logits.copy())
        llm.eval([token])
    return tokens, rows


def replay(mode, tokens, rows):
    """CPU seconds per step of choosing each recorded token (the free sampler: from the same logits)."""
    sampler = Sampler(SamplingParams(temperature=0.0))
    constraint = None if mode == "free" else GrammarConstraint(llm.tokenizer, grammar, end_ids=llm.tokenizer.eot_ids,
                                                               lazy=mode == "lazy")
    logits = np.empty_like(rows[0])  # decode hands the sampler one array, rewritten each step
    history = list(prompt)
    spent = 0.0
    for token, row in zip(tokens, rows):
        logits[:] = row
        t0 = time.thread_time()
        got = sampler.sample(logits, history) if constraint is None else constraint.choose(sampler, logits, history)
        spent += time.thread_time() - t0
        if constraint is not None and got != token:
            raise SystemExit(f"{mode}: token {got} where the recorded run chose {token}")
        history.append(token)
    return spent / len(tokens)


tokens, rows = record()
lib.pl_set_sample_threads(1)
times = {m: [] for m in MODES}
for _ in range(3 * a.rounds):  # alternating, as above
    for mode in MODES:
        times[mode].append(replay(mode, tokens, rows))
per_step = {m: statistics.median(times[m]) for m in MODES}
extra = {m: (per_step[m] - per_step["free"]) / fc * 100 for m in ("mask", "lazy")}
print(f"  replayed, CPU per step: free sampling {per_step['free'] * 1e3:.3f} ms, "
      f"mask every step {per_step['mask'] * 1e3:.3f} ms, lazy {per_step['lazy'] * 1e3:.3f} ms: "
      f"the constraint adds {extra['mask']:.1f}% / {extra['lazy']:.1f}% of a free step's CPU time")
