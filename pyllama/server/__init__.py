"""An OpenAI-compatible HTTP server: ``python -m pyllama.server`` (or ``pyllama-server``).

Needs the ``server`` extra (``pip install 'pyllama[server]'``: FastAPI, uvicorn,
sse-starlette). Endpoints: ``POST /v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``, ``/tokenize``, ``/detokenize``; ``GET /v1/models``, ``/health``,
``/metrics`` and ``/`` (a chat page). :func:`create_app` builds the ASGI app for
embedding in other servers or tests.
"""
from __future__ import annotations


def create_app(*args, **kwargs):
    """See :func:`pyllama.server.app.create_app`."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


def main(argv=None) -> None:
    from .__main__ import main as _main

    _main(argv)
