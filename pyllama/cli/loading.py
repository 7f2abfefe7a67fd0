"""Opening the model a command line names (``-m``, ``-c``, ``-t``, ...), as every tool does it:
a model that cannot be opened ends the program with one line on stderr and exit status 1."""
from __future__ import annotations

import sys

from .options import note_ignored


def load_model(args, **extra):
    """Open the model named on the command line; on failure print one line and exit 1."""
    from ..errors import PyllamaError

    note_ignored(args)
    if getattr(args, "rope_freq_base", None) is not None:
        extra.setdefault("rope_freq_base", args.rope_freq_base)
    for name in ("threads_batch", "batch_size", "ubatch_size", "use_mlock"):
        if getattr(args, name, None) is not None:
            key = {"threads_batch": "n_threads_batch", "batch_size": "n_batch", "ubatch_size": "n_ubatch"}.get(name, name)
            extra.setdefault(key, getattr(args, name))
    try:
        from ..llama import Llama

        return Llama(model_path=args.model, n_ctx=args.ctx_size, n_threads=args.threads,
                     seed=args.seed, verbose=args.verbose, tokenizer_path=args.tokenizer,
                     type_k=args.cache_type_k, type_v=args.cache_type_v, use_mmap=args.use_mmap, **extra)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise SystemExit(130)
    except (PyllamaError, OSError, ValueError, TypeError, MemoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
