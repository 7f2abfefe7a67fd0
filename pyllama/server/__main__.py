"""Command line of the server: ``python -m pyllama.server [-m MODEL] [--port 8080] [-np N] ...``.

Flag names follow llama.cpp's llama-server where they overlap.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyllama-server",
                                 description="OpenAI-compatible server for a GGUF model (pyllama)")
    ap.add_argument("-m", "--model", default=None,
                    help="GGUF file, llama2.c checkpoint or catalog name (default: the default model)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    ap.add_argument("-np", "--parallel", type=int, default=4, metavar="N",
                    help="requests served at once, each with its own KV cache (default 4)")
    ap.add_argument("-c", "--ctx-size", type=int, default=2048, metavar="N_CTX",
                    help="context length of each slot in tokens (default 2048; 0: the model's own)")
    ap.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                    help="CPU threads (default: all available)")
    ap.add_argument("--api-key", default=None, metavar="KEY",
                    help="require 'Authorization: Bearer KEY' (default: no key)")
    ap.add_argument("--max-queue", type=int, default=32, metavar="N",
                    help="requests that may wait for a slot; more get 429 (default 32)")
    ap.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                    help="largest request body accepted (default 1 MiB)")
    ap.add_argument("-n", "--n-predict", type=int, default=-1, metavar="N",
                    help="most tokens one request may generate (default -1: up to the context)")
    ap.add_argument("--no-cache-prompt", dest="cache_prompt", action="store_false",
                    help="evaluate every prompt whole instead of reusing its slot's cached prefix: slower "
                         "multi-turn chat, answers that never depend on what a slot served before")
    ap.add_argument("-v", "--verbose", action="store_true", help="loading details and access log to stderr")
    return ap


def main(argv=None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    for name, value, low in (("--port", args.port, 0), ("-np", args.parallel, 1), ("-c", args.ctx_size, 0),
                             ("--max-queue", args.max_queue, 0), ("--max-body", args.max_body, 1)):
        if value < low:
            ap.error(f"{name} must be >= {low} (got {value})")
    if args.threads is not None and args.threads < 1:
        ap.error(f"-t must be >= 1 (got {args.threads})")
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        print(f"error: the server needs its extra: pip install 'pyllama[server]' ({e})", file=sys.stderr)
        raise SystemExit(1)

    app = create_app(args.model, n_slots=args.parallel, n_ctx=args.ctx_size, n_threads=args.threads,
                     api_key=args.api_key, max_queue=args.max_queue, max_body_bytes=args.max_body,
                     cache_prompt=args.cache_prompt, n_predict=args.n_predict, verbose=args.verbose)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                            access_log=args.verbose)
    server = uvicorn.Server(config)
    failed = []

    def stop(why: str) -> None:
        failed.append(why)
        server.should_exit = True

    app.state.pyllama.on_load_failure = stop
    print(f"pyllama.server: listening on http://{args.host}:{args.port} (loading the model)", file=sys.stderr)
    server.run()
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
