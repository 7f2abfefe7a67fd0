"""pyllama: run Llama-family language models from Python on a hand-written C core.

    >>> from pyllama import Llama
    >>> llm = Llama()                      # the default model, fetched on first use
    >>> llm("The capital of France is", max_tokens=8)["choices"][0]["text"]
"""
import os as _os

# libgomp reads this when the C core loads it. Its default spin (milliseconds)
# starves a partner thread when the cores are shared with other programs; the
# forward pass syncs with its own yielding barrier, and this bounds the waits
# left to libgomp (the start and end of each batch). See bench/RESULTS.md 4b.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from .errors import (ChatTemplateError, ContextOverflowError, FetchError, ModelError, PyllamaError,
                     TokenizerError)
from .llama import Llama
from .tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = [
    "Llama",
    "Tokenizer",
    "PyllamaError",
    "ModelError",
    "ContextOverflowError",
    "TokenizerError",
    "ChatTemplateError",
    "FetchError",
    "__version__",
]
