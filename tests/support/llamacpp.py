"""Where bench/build_llamacpp.sh keeps llama.cpp's binaries on this machine.

The script is asked (``LLAMACPP_WHERE=1``), never run to build: a test without llama.cpp skips
instead of starting a ten-minute build, and the directory it names (``build-noamx/`` on CPUs with
AMX, ``build/`` on the others) is decided in one place."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "build_llamacpp.sh"


def llamacpp_bin() -> Path | None:
    """The directory of llama-bench, llama-perplexity, llama-quantize and llama-server, or None
    when bench/build_llamacpp.sh has not built them."""
    res = subprocess.run(["bash", str(SCRIPT)], env={**os.environ, "LLAMACPP_WHERE": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return Path(res.stdout.strip()) if res.returncode == 0 and res.stdout.strip() else None


def llamacpp_binary(name: str) -> str:
    """Path of llama.cpp's `name` (e.g. "llama-quantize") as built by bench/build_llamacpp.sh,
    or its expected path under the script's default build directory when it is not built."""
    found = llamacpp_bin()
    return str((found or Path("~/.cache/pyllama/llama.cpp-0.3.36/build/bin").expanduser()) / name)
