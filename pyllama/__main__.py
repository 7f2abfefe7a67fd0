"""``python -m pyllama SUBCOMMAND ...``: one entry point for the command-line tools."""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {  # each is the module pyllama.cli.NAME
    "chat": "interactive chat with a model (streams replies)",
    "generate": "continue a prompt, llama2.c run style",
    "bench": "measure prompt and generation speed",
    "perplexity": "perplexity of a model on a text file",
    "convert": "convert between GGUF and llama2.c checkpoints",
    "quantize": "quantize a GGUF model as llama-quantize does",
    "models": "list and fetch known models",
}


def usage() -> str:
    lines = ["usage: python -m pyllama {" + ",".join(SUBCOMMANDS) + "} [options]", "",
             "Run Llama-family models on a hand-written C core.", "", "subcommands:"]
    for name, text in SUBCOMMANDS.items():
        lines.append(f"  {name:<12}{text}")
    lines += ["", "`python -m pyllama SUBCOMMAND --help` describes each one "
                  "(also runnable as `python -m pyllama.SUBCOMMAND`)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.stderr.write(usage())
        sys.stderr.write("python -m pyllama: error: a subcommand is required\n")
        return 2
    if argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0
    if argv[0] == "--version":
        from . import __version__

        print(f"pyllama {__version__}")
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        sys.stderr.write(f"python -m pyllama: error: unknown subcommand {name!r} "
                         f"(choose from {', '.join(SUBCOMMANDS)})\n")
        return 2
    module_name = f"pyllama.cli.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            sys.stderr.write(f"python -m pyllama: error: {name} is not available in this installation\n")
            return 1
        raise
    result = module.main(argv[1:])
    return int(result or 0)


if __name__ == "__main__":
    from .cli import run

    run(main)
