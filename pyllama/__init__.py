"""pyllama: run Llama-family language models from Python on a hand-written C core.

    >>> from pyllama import Llama
    >>> llm = Llama()                      # the default model, fetched on first use
    >>> llm("The capital of France is", max_tokens=8)["choices"][0]["text"]
"""
import os as _os

# libgomp reads this when the C core loads it. Its default spin (milliseconds)
# starves a partner thread when the cores are shared with other programs; the
# forward pass syncs with its own yielding barrier, and this bounds the waits
# left to libgomp (the start and end of each batch). csrc/team.c says why.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def _import_numpy_leaving_signals_to_this_thread() -> None:
    """numpy's BLAS (OpenBLAS) starts its worker threads when numpy is imported, and they
    inherit the importing thread's signal mask. Linux may hand a process-directed signal such
    as Ctrl-C's SIGINT to any thread not blocking it; taken by a BLAS worker it never wakes a
    main thread waiting in input(). So the first import happens with the asynchronous signals
    blocked (the C core's OpenMP workers block them themselves: dispatch.c, pl_team_enter).
    No effect when numpy is already imported."""
    import signal
    import sys

    if "numpy" in sys.modules or not hasattr(signal, "pthread_sigmask"):
        import numpy  # noqa: F401
        return
    faults = {getattr(signal, n) for n in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGABRT",
                                           "SIGSYS") if hasattr(signal, n)}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - faults)
    try:
        import numpy  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_import_numpy_leaving_signals_to_this_thread()

from .completion import LogitsProcessorList, StoppingCriteriaList
from .errors import (ChatTemplateError, ContextOverflowError, FetchError, ModelError, PyllamaError,
                     TokenizerError)
from .grammar import LlamaGrammar
from .llama import Llama
from .tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = [
    "Llama",
    "Tokenizer",
    "LlamaGrammar",
    "LogitsProcessorList",
    "StoppingCriteriaList",
    "PyllamaError",
    "ModelError",
    "ContextOverflowError",
    "TokenizerError",
    "ChatTemplateError",
    "FetchError",
    "__version__",
]
