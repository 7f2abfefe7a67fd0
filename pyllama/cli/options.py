"""Command-line options the tools share, spelled as llama.cpp spells them, and their checks.

``-t`` is threads everywhere (as in llama-cli, llama-perplexity and llama-bench), the
temperature is ``--temp``; ``-s/--seed``, ``-f FILE``, ``-e`` (escapes), ``-r``,
``--repeat-last-n``, ``--presence-penalty``, ``--frequency-penalty``,
``--rope-freq-base``, ``--mlock`` behave as in llama.cpp. Options that only mean
something on a GPU or for llama.cpp's own template engine (``-ngl``, ``-fa``,
``--jinja``) are accepted and ignored with a note on stderr, so command lines copied
from llama.cpp's documentation run.
"""
from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) on bad arguments; still exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_cache_type_args(ap: argparse.ArgumentParser) -> None:
    """llama.cpp's -ctk/-ctv: the KV cache's element types (Llama's type_k / type_v)."""
    ap.add_argument("-ctk", "--cache-type-k", choices=["f16", "f32"], default="f16",
                    help="KV cache type for keys (default f16, as llama.cpp)")
    ap.add_argument("-ctv", "--cache-type-v", choices=["f16", "f32"], default="f16",
                    help="KV cache type for values (default f16)")


def add_mmap_arg(ap: argparse.ArgumentParser) -> None:
    """llama.cpp's --no-mmap and --mlock (Llama's use_mmap and use_mlock)."""
    ap.add_argument("--no-mmap", dest="use_mmap", action="store_false",
                    help="read the model into memory (on huge pages where the kernel has them) instead of "
                         "mapping the file: a slower load, faster decode on some machines")
    ap.add_argument("--mlock", dest="use_mlock", action="store_true",
                    help="keep the model's weights in RAM (never swapped or evicted)")


def add_gpu_args(ap: argparse.ArgumentParser) -> None:
    """llama.cpp options with no meaning for a CPU engine: accepted, then ignored (see note_ignored)."""
    ap.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", dest="gpu_layers", default=None, metavar="N",
                    help="accepted for llama.cpp compatibility and ignored (pyllama runs on the CPU)")
    ap.add_argument("-fa", "--flash-attn", dest="flash_attn", nargs="?", const="on", default=None,
                    metavar="on|off|auto", help="accepted and ignored (attention is always one fused pass)")
    ap.add_argument("--jinja", action="store_true",
                    help="accepted and ignored (chat templates are always rendered with Jinja)")


def add_conversation_arg(ap: argparse.ArgumentParser, always: bool) -> None:
    """llama-cli's -cnv / -no-cnv, which each tool has a fixed answer to: accepted, a no-op when
    it matches (chat is always a conversation, generate never), an error otherwise."""
    ap.add_argument("-cnv", "--conversation", dest="conversation", action="store_true", default=None,
                    help=argparse.SUPPRESS)
    ap.add_argument("-no-cnv", "--no-conversation", dest="conversation", action="store_false",
                    help=argparse.SUPPRESS)
    ap.set_defaults(conversation_always=always)


def check_conversation_arg(ap: argparse.ArgumentParser, args) -> None:
    if args.conversation is not None and args.conversation != args.conversation_always:
        other = "pyllama.generate" if args.conversation_always else "pyllama.chat"
        ap.error(f"{'-no-cnv' if args.conversation_always else '-cnv'}: this tool "
                 f"{'is always' if args.conversation_always else 'is never'} a conversation; use {other}")


def note_ignored(args) -> None:
    """One line on stderr per llama.cpp option that was given but means nothing here."""
    notes = []
    if getattr(args, "gpu_layers", None) is not None:
        notes.append(f"-ngl {args.gpu_layers}: pyllama runs on the CPU")
    if getattr(args, "flash_attn", None) is not None:
        notes.append(f"-fa {args.flash_attn}: attention already runs as one fused pass")
    if getattr(args, "jinja", False):
        notes.append("--jinja: chat templates are always rendered with (sandboxed) Jinja")
    for n in notes:
        print(f"note: ignored {n}", file=sys.stderr)


def add_model_args(ap: argparse.ArgumentParser, n_ctx_default: int) -> None:
    ap.add_argument("-m", "--model", default=None,
                    help="GGUF file, llama2.c checkpoint or catalog name (default: the default model, "
                         "fetched on first use)")
    ap.add_argument("-c", "--ctx-size", type=int, default=n_ctx_default, metavar="N_CTX",
                    help=f"context length in tokens (default {n_ctx_default}; 0: the model's own)")
    ap.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                    help="CPU threads (default: all available)")
    ap.add_argument("-tb", "--threads-batch", type=int, default=None, metavar="N",
                    help="CPU threads for the prompt (default: --threads)")
    ap.add_argument("-b", "--batch-size", type=int, default=512, metavar="N",
                    help="most prompt tokens per forward pass (default 512)")
    ap.add_argument("-ub", "--ubatch-size", type=int, default=None, metavar="N",
                    help="llama.cpp's physical batch: a forward pass takes at most this many too")
    ap.add_argument("-s", "--seed", type=int, default=-1, metavar="N", help="sampling seed (-1: random)")
    ap.add_argument("--rope-freq-base", type=float, default=None, metavar="N",
                    help="RoPE base frequency (default: the model file's; a llama2.c checkpoint records "
                         "none and runs at 10000, as llama2.c's run.c does)")
    add_cache_type_args(ap)
    add_mmap_arg(ap)
    add_gpu_args(ap)
    ap.add_argument("--tokenizer", default=None, metavar="PATH",
                    help="tokenizer for llama2.c checkpoints (tokenizer.bin or .model)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print loading details to stderr")


def add_sampling_args(ap: argparse.ArgumentParser, temp: float, top_k: int, top_p: float, min_p: float,
                      repeat_penalty: float) -> None:
    """llama.cpp's sampling options, with the defaults a tool wants."""
    ap.add_argument("--temp", type=float, default=temp, metavar="T",
                    help=f"temperature (0: greedy; default {temp:g})")
    ap.add_argument("--top-k", type=int, default=top_k, metavar="N", help=f"top-k (0: off; default {top_k})")
    ap.add_argument("--top-p", type=float, default=top_p, metavar="P", help=f"top-p (1: off; default {top_p:g})")
    ap.add_argument("--min-p", type=float, default=min_p, metavar="P", help=f"min-p (0: off; default {min_p:g})")
    ap.add_argument("--repeat-penalty", type=float, default=repeat_penalty, metavar="X",
                    help=f"repeat penalty (1: off; default {repeat_penalty:g})")
    ap.add_argument("--typical", "--typical-p", dest="typical_p", type=float, default=1.0, metavar="P",
                    help="locally typical sampling (default 1: off)")
    ap.add_argument("--repeat-last-n", type=int, default=64, metavar="N",
                    help="tokens the penalties look back over (0: off, -1: the whole context; default 64)")
    ap.add_argument("--presence-penalty", type=float, default=0.0, metavar="X",
                    help="subtracted once from every token already present (default 0: off)")
    ap.add_argument("--frequency-penalty", type=float, default=0.0, metavar="X",
                    help="subtracted per occurrence of a token already present (default 0: off)")


def check_sampling_args(ap: argparse.ArgumentParser, args) -> None:
    if not args.temp >= 0:
        ap.error(f"--temp must be >= 0 (got {args.temp})")
    if not 0.0 <= args.top_p <= 1.0:
        ap.error(f"--top-p must be in [0, 1] (got {args.top_p})")
    if not 0.0 <= args.min_p <= 1.0:
        ap.error(f"--min-p must be in [0, 1] (got {args.min_p})")
    if not 0.0 <= args.typical_p <= 1.0:
        ap.error(f"--typical must be in [0, 1] (got {args.typical_p})")
    if not args.repeat_penalty > 0:
        ap.error(f"--repeat-penalty must be > 0 (got {args.repeat_penalty})")
    if args.repeat_last_n < -1:
        ap.error(f"--repeat-last-n must be >= -1 (got {args.repeat_last_n})")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(args, name)
        if value != value or abs(value) == float("inf"):
            ap.error(f"--{name.replace('_', '-')} must be a finite number (got {value})")


def sampling_kwargs(args) -> dict:
    """The create_completion / create_chat_completion keywords the sampling options give."""
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                typical_p=args.typical_p, repeat_penalty=args.repeat_penalty, penalty_last_n=args.repeat_last_n,
                presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty)


def add_text_args(ap: argparse.ArgumentParser, prompt_help: str = "prompt text") -> None:
    """-p TEXT / -f FILE (the prompt; a file loses one trailing newline) and -e / --no-escape
    (escapes in the prompt and -r texts, processed by default as llama.cpp does)."""
    ap.add_argument("-p", "--prompt", default="", help=prompt_help)
    ap.add_argument("-f", "--file", default=None, metavar="FILE",
                    help="read the prompt from a file (one trailing newline dropped, as llama.cpp)")
    ap.add_argument("-e", "--escape", dest="escape", action="store_true", default=True,
                    help="turn \\n, \\r, \\t, \\', \\\", \\\\ in the prompt and -r texts into the characters "
                         "(the default, as llama.cpp)")
    ap.add_argument("--no-escape", dest="escape", action="store_false", help="take them literally")


def prompt_text(ap: argparse.ArgumentParser, args) -> str:
    """The prompt from -p or -f, escapes processed unless --no-escape (as llama.cpp: a file's too)."""
    if args.file is not None:
        if args.prompt:
            ap.error("give the prompt with -p or -f, not both")
        text = read_text_file(ap, args.file, prompt=True)
    else:
        text = args.prompt
    return unescape(text) if args.escape else text


def reverse_prompts(args) -> list:
    return [unescape(r) if args.escape else r for r in args.reverse_prompt if r]


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\"}


def unescape(text: str) -> str:
    """llama.cpp's -e: the escapes above become their characters; any other backslash stays."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def read_text_file(ap: argparse.ArgumentParser, path: str, prompt: bool = False) -> str:
    """A file as text (invalid UTF-8 as U+FFFD); a missing file is a one-line error, exit 1.
    prompt=True: one trailing newline is dropped, as llama.cpp's -f and -sysf do."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except OSError as e:
        print(f"error: cannot read {path}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(1)
    return text[:-1] if prompt and text.endswith("\n") else text


def check_positive(ap, name, value, allow_zero=False):
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        ap.error(f"{name} must be {'>= 0' if allow_zero else '> 0'} (got {value})")


def check_model_args(ap: argparse.ArgumentParser, args) -> None:
    check_positive(ap, "--ctx-size", args.ctx_size, allow_zero=True)
    check_positive(ap, "--threads", args.threads)
    check_positive(ap, "--threads-batch", args.threads_batch)
    check_positive(ap, "--batch-size", args.batch_size)
    check_positive(ap, "--ubatch-size", getattr(args, "ubatch_size", None))
    if args.rope_freq_base is not None and not 0 < args.rope_freq_base < float("inf"):
        ap.error(f"--rope-freq-base must be a positive number (got {args.rope_freq_base})")
