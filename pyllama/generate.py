"""Plain text completion in the spirit of llama2.c's ``run``:

    python -m pyllama.generate -m MODEL -p "Once upon a time" -n 256 -t 1.0 --top-p 0.9 --seed 42

The prompt and its continuation go to stdout as they are produced; the speed
achieved goes to stderr at the end. Sampling is temperature + top-p only
(llama2.c's), unless --top-k / --min-p / --repeat-penalty are given.
"""
from __future__ import annotations

import argparse
import sys
import time

from .chat import ArgumentParser, add_model_args, check_positive, dim, load_model


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="python -m pyllama.generate",
                                 description="Continue a prompt with a model (llama2.c run style).")
    add_model_args(ap, n_ctx_default=512)
    ap.add_argument("-p", "-i", "--prompt", default="", help="prompt text (-i is an alias, as in llama2.c)")
    ap.add_argument("-n", "--steps", type=int, default=256,
                    help="tokens to generate (0: until the context is full; default 256)")
    ap.add_argument("-t", "--temp", type=float, default=1.0, help="temperature (0: greedy; default 1.0)")
    ap.add_argument("--top-p", type=float, default=0.9, help="top-p (default 0.9; 1: off)")
    ap.add_argument("--top-k", type=int, default=0, help="top-k (default 0: off)")
    ap.add_argument("--min-p", type=float, default=0.0, help="min-p (default 0: off)")
    ap.add_argument("--repeat-penalty", type=float, default=1.0, help="repeat penalty (default 1: off)")
    ap.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-text tokens")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--grammar", default=None, metavar="GRAMMAR",
                   help="constrain the output with a grammar (GBNF as llama.cpp's, or Lark)")
    g.add_argument("--grammar-file", default=None, metavar="FNAME", help="read the grammar from a file")
    g.add_argument("-j", "--json-schema", default=None, metavar="SCHEMA",
                   help="constrain the output to JSON valid under this JSON schema (its text, e.g. '{}')")
    return ap


def load_grammar(ap, args):
    """The LlamaGrammar the options ask for, or None; a bad one is a usage error."""
    from .grammar import LlamaGrammar

    try:
        if args.grammar is not None:
            return LlamaGrammar.from_string(args.grammar)
        if args.grammar_file is not None:
            return LlamaGrammar.from_file(args.grammar_file)
        if args.json_schema is not None:
            return LlamaGrammar.from_json_schema(args.json_schema)
    except ValueError as e:
        ap.error(str(e).replace("\n", " "))
    return None


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    check_positive(ap, "--steps", args.steps, allow_zero=True)
    check_positive(ap, "--ctx-size", args.ctx_size, allow_zero=True)
    check_positive(ap, "--threads", args.threads)
    if args.temp < 0:
        ap.error(f"--temp must be >= 0 (got {args.temp})")
    if not 0.0 <= args.top_p <= 1.0:
        ap.error(f"--top-p must be in [0, 1] (got {args.top_p})")

    grammar = load_grammar(ap, args)
    llm = load_model(args)
    from .errors import PyllamaError

    tok = llm.tokenizer
    try:
        if args.prompt:
            prompt = tok.tokenize(args.prompt, add_bos=None, special=False)
        else:
            prompt = []
        if not prompt:
            if tok.bos_id is None:
                print("error: empty prompt and the model has no BOS token: pass -p TEXT", file=sys.stderr)
                return 1
            prompt = [tok.bos_id]
        steps = args.steps or (llm.n_ctx() - len(prompt))
        end_ids = set() if args.ignore_eos and grammar is None else set(tok.eot_ids or ()) | (
            {tok.eos_id} if tok.eos_id is not None else set())

        out = sys.stdout
        out.write(args.prompt)
        out.flush()
        decoder = tok.stream(prev_ids=prompt)
        n = 0
        t_start = time.perf_counter()
        t_first = None
        gen = llm.generate(prompt, temp=args.temp, top_p=args.top_p, top_k=args.top_k,
                           min_p=args.min_p, repeat_penalty=args.repeat_penalty, grammar=grammar)
        try:
            for token in gen:
                if t_first is None:
                    t_first = time.perf_counter()
                if token in end_ids:
                    break
                n += 1
                out.write(decoder.push(token))
                out.flush()
                if n >= steps:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            gen.close()
        t_end = time.perf_counter()
        out.write(decoder.flush() + "\n")
        out.flush()
    except PyllamaError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    prompt_s = (t_first or t_end) - t_start
    gen_s = t_end - (t_first or t_end)
    # The first token comes with the prompt; the rate counts the ones after it (as llama2.c does).
    rate = (n - 1) / gen_s if n > 1 and gen_s > 0 else 0.0
    sys.stderr.write(dim(f"achieved tok/s: {rate:.2f} ({n} tokens; prompt {len(prompt)} tokens in "
                         f"{prompt_s:.2f} s)", sys.stderr) + "\n")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(130)
