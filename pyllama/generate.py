"""``python -m pyllama.generate``: plain text completion, llama2.c run style. The program is :mod:`pyllama.cli.generate`."""
from .cli.generate import main

if __name__ == "__main__":
    from .cli import run

    run(main)
