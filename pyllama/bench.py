"""``python -m pyllama.bench``: prompt and generation speed, llama-bench style. The program is :mod:`pyllama.cli.bench`."""
from .cli.bench import main

if __name__ == "__main__":
    from .cli import run

    run(main)
