"""``python -m pyllama.chat``: the terminal chat. The program is :mod:`pyllama.cli.chat`."""
from .cli.chat import main

if __name__ == "__main__":
    from .cli import run

    run(main)
