"""Issue 5's "output unchanged by speed work" check on the default model.

    python bench/greedy_regression.py --save before.npz [--kwargs '{"type_k": "f32"}']
    python bench/greedy_regression.py --compare before.npz [--kwargs '{"type_k": "f32"}']

Runs 64 greedy tokens on each prompt of tests/data/reference_greedy.json and stores the
tokens and the logits of every step. --compare re-runs and reports, per prompt, the first
step where the token sequences part (and by how much the first run preferred its token
there: a near-tie smaller than the logit change explains the split), and the largest
logit difference (absolute, and relative to the logit spread of that step) over the
steps both runs share.
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "..", "tests", "data", "reference_greedy.json")


def run(kwargs: dict, n_new: int) -> list[dict]:
    from pyllama import Llama
    from pyllama.models import default_model_path

    llm = Llama(model_path=default_model_path(), n_ctx=256, **kwargs)
    out = []
    for prompt in json.load(open(REF))["prompts"]:
        llm.reset()
        llm.eval(prompt)
        toks, logits = [], []
        for _ in range(n_new):
            lg = np.array(llm.logits, dtype=np.float32)
            t = int(lg.argmax())
            toks.append(t)
            logits.append(lg)
            llm.eval([t])
        out.append({"prompt": prompt, "tokens": toks, "logits": np.stack(logits)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--save")
    g.add_argument("--compare")
    ap.add_argument("--kwargs", default="{}", help="extra Llama(...) arguments as JSON")
    ap.add_argument("-n", type=int, default=64)
    a = ap.parse_args()
    runs = run(json.loads(a.kwargs), a.n)
    if a.save:
        if not a.save.endswith(".npz"):
            a.save += ".npz"  # what numpy would append anyway: say the name the file gets
        np.savez_compressed(a.save, **{f"tokens{i}": np.array(r["tokens"]) for i, r in enumerate(runs)},
                            **{f"logits{i}": r["logits"] for i, r in enumerate(runs)})
        print(f"saved {len(runs)} prompts x {a.n} tokens to {a.save}")
        return 0
    old = np.load(a.compare)
    same = True
    for i, r in enumerate(runs):
        t_old, t_new = old[f"tokens{i}"].tolist(), r["tokens"]
        split = next((j for j, (x, y) in enumerate(zip(t_old, t_new)) if x != y), None)
        upto = split + 1 if split is not None else len(t_new)  # logits agree in context up to here
        d = np.abs(old[f"logits{i}"][:upto] - r["logits"][:upto])
        spread = old[f"logits{i}"][:upto].max(1) - old[f"logits{i}"][:upto].min(1)
        where = "same tokens"
        if split is not None:  # how close the old run was to choosing the new token there
            lo = old[f"logits{i}"][split]
            where = (f"tokens part at step {split} (before: {t_old[split]} by {lo[t_old[split]] - lo[t_new[split]]:.3f} "
                     f"logits over {t_new[split]})")
        print(f"prompt {i}: {where}; max |logit diff| {d.max():.4f} (mean {d.mean():.5f}, "
              f"{100 * (d.max(1) / spread).max():.2f}% of the spread)")
        same &= split is None
    print("all sequences identical" if same else "sequences differ (see above)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
