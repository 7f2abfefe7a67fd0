"""The model catalog on the command line: ``python -m pyllama.models [list | path NAME | fetch NAME]``.

``list`` shows each known model with its size, whether it is cached, whether it runs with this
build and its licence; ``path`` prints where a model is (or would be) cached; ``fetch``
downloads it (:func:`pyllama.models.fetch`) and prints its path.
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterable

from ..errors import FetchError
from ..models import cache_dir, cached_path, catalog, default_model_name, fetch, is_cached, support


def _human(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 20):.0f} MiB"


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyllama.models", description="List and fetch known models.")
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("list", help="list the catalog (default)")
    p = sub.add_parser("fetch", help="download a model into the cache; prints its path")
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--verify", action="store_true", help="re-check the sha256 of a cached file")
    p = sub.add_parser("path", help="print where a model is (or would be) cached")
    p.add_argument("name", nargs="?", default=None)
    args = ap.parse_args(None if argv is None else list(argv))

    try:
        if args.cmd in (None, "list"):
            default = default_model_name()
            print(f"cache: {cache_dir()}")
            print(f"  {'name':32s} {'size':>9s}  {'where':7s} {'runs':4s} licence")
            for m in catalog()["models"]:
                mark = "*" if m["name"] == default else " "
                state = "cached" if is_cached(m["name"]) else m["source"]["type"]
                ok, why = support(m["name"])
                runs = {True: "yes", False: "no", None: "?"}[ok]
                note = f"  (needs {why})" if ok is False else ""
                print(f"{mark} {m['name']:32s} {_human(m.get('size')):>9s}  {state:7s} {runs:4s} "
                      f"{m.get('licence', '')}{note}")
            return 0
        name = args.name or default_model_name()
        if args.cmd == "path":
            print(cached_path(name))
            return 0
        print(fetch(name, verify=args.verify))
        return 0
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
