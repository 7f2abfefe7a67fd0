"""The command-line tools, one module per command, and what they share.

Each command is ``python -m pyllama.NAME`` (or ``python -m pyllama NAME``): chat, generate,
bench, perplexity, convert, quantize, models. The code of each one is ``pyllama/cli/NAME.py``;
``pyllama/NAME.py`` only starts it (or, for convert, quantize, perplexity and models, is the
library the command drives). Shared: ``options.py`` (llama.cpp's option spellings and their
checks), ``loading.py`` (opening the model a command line names) and ``progress.py`` (what the
tools show on stderr while they work).
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence


def run(main: Callable[[Optional[Sequence[str]]], Optional[int]]) -> None:
    """Run a command's ``main`` as a program: its return value is the exit status, Ctrl-C
    exits with 130 (as a shell reports a program that SIGINT ended) instead of a traceback."""
    try:
        status = main(None)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        status = 130
    raise SystemExit(int(status or 0))
