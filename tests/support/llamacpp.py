"""Where bench/build_llamacpp.sh keeps llama.cpp's binaries on this machine.

The script is asked (``LLAMACPP_WHERE=1``), never run to build: a test without llama.cpp skips
instead of starting a ten-minute build, and the directory it names (``build-noamx/`` on CPUs with
AMX, ``build/`` on the others) is decided in one place."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "build_llamacpp.sh"


def llamacpp_binary(name: str) -> str:
    """Path of llama.cpp's `name` (e.g. "llama-quantize") where bench/build_llamacpp.sh builds it
    on this machine; the file exists only once it is built."""
    res = subprocess.run(["bash", str(SCRIPT)], env={**os.environ, "LLAMACPP_WHERE": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return str(Path(res.stdout.strip()) / name)
