"""Plain text completion in the spirit of llama2.c's ``run``:

    python -m pyllama.generate -m MODEL -p "Once upon a time" -n 256 --temp 1.0 --top-p 0.9 -s 42

The prompt and its continuation go to stdout as they are produced; the speed
achieved goes to stderr at the end. Sampling is temperature + top-p only
(llama2.c's), unless --top-k / --min-p / the penalties are given. The options are
llama.cpp's (pyllama/cli/options.py): -t threads, -f prompt file, -e escapes (on by
default), -r stop text, -n -1 for no length limit.
"""
from __future__ import annotations

import argparse
import sys
import time

from .loading import load_model
from .options import (ArgumentParser, add_conversation_arg, add_model_args, add_sampling_args, add_text_args,
                      check_conversation_arg, check_model_args, check_sampling_args, prompt_text, reverse_prompts,
                      sampling_kwargs)
from .progress import dim


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="python -m pyllama.generate",
                        description="Continue a prompt with a model (llama2.c run style).")
    add_model_args(ap, n_ctx_default=512)
    add_conversation_arg(ap, always=False)
    add_text_args(ap, prompt_help="prompt text (-i is an alias, as in llama2.c)")
    ap.add_argument("-i", dest="prompt", help=argparse.SUPPRESS)
    ap.add_argument("-n", "--n-predict", "--steps", dest="steps", type=int, default=256, metavar="N",
                    help="tokens to generate (default 256; -1: no limit, until end-of-text or Ctrl-C, "
                         "shifting the context when full; 0 or -2: until the context is full)")
    add_sampling_args(ap, temp=1.0, top_k=0, top_p=0.9, min_p=0.0, repeat_penalty=1.0)
    ap.add_argument("-r", "--reverse-prompt", action="append", default=[], metavar="TEXT",
                    help="stop where this text appears (repeatable; the text itself is printed)")
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
    from ..grammar import LlamaGrammar

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
    if args.steps < -2:
        ap.error(f"--n-predict must be >= -2 (got {args.steps})")
    check_model_args(ap, args)
    check_conversation_arg(ap, args)
    check_sampling_args(ap, args)
    args.prompt = prompt_text(ap, args)
    stops = reverse_prompts(args)

    grammar = load_grammar(ap, args)
    llm = load_model(args)
    from ..errors import PyllamaError

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
        if args.steps == -1:
            steps = float("inf")
        elif args.steps in (0, -2):
            steps = llm.n_ctx() - len(prompt)
        else:
            steps = args.steps
        end_ids = set() if args.ignore_eos and grammar is None else set(tok.eot_ids or ()) | (
            {tok.eos_id} if tok.eos_id is not None else set())

        out = sys.stdout
        out.write(args.prompt)
        out.flush()
        decoder = tok.stream(prev_ids=prompt)
        n = 0
        t_start = time.perf_counter()
        t_first = None
        sampling = sampling_kwargs(args)
        sampling["temp"] = sampling.pop("temperature")
        gen = llm.generate(prompt, grammar=grammar, **sampling)
        tail = ""  # the end of the output, as long as the longest stop text
        keep = max((len(r) for r in stops), default=0)
        try:
            for token in gen:
                if t_first is None:
                    t_first = time.perf_counter()
                if token in end_ids:
                    break
                n += 1
                piece = decoder.push(token)
                out.write(piece)
                out.flush()
                if stops:
                    tail += piece
                    if any(r in tail for r in stops):
                        break
                    tail = tail[-keep:]
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

