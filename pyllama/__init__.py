"""pyllama: run Llama-family language models from Python on a hand-written C core.

    >>> from pyllama import Llama
    >>> llm = Llama()                      # the default model, fetched on first use
    >>> llm("The capital of France is", max_tokens=8)["choices"][0]["text"]
"""
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
