"""Exceptions raised by pyllama.

Every error pyllama raises on purpose derives from :class:`PyllamaError`, so
callers can catch one class; the subclasses also derive from the builtin that
best describes them (``ValueError`` for bad input, ``RuntimeError`` for
failures of the environment).
"""


class PyllamaError(Exception):
    """Base class of every pyllama error."""


class ModelError(PyllamaError, ValueError):
    """A model file is malformed or unsupported; the message names the field or tensor."""


class ContextOverflowError(PyllamaError, ValueError):
    """More tokens than the context window holds."""


class TokenizerError(PyllamaError, ValueError):
    """A tokenizer file is malformed, or text/ids cannot be converted."""


class FetchError(PyllamaError, RuntimeError):
    """A model could not be found or downloaded."""


class ChatTemplateError(PyllamaError, ValueError):
    """A chat template is invalid, unsafe, or raised an error while rendering."""


def c_error(default: str = "") -> str:
    """The C core's message about the call that just failed on this thread (``pl_last_error``),
    or `default` when it left none."""
    from ._core import ffi, lib

    return ffi.string(lib.pl_last_error()).decode("utf-8", "replace") or default
