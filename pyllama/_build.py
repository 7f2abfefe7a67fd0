"""cffi build script: compiles csrc/ into the extension module ``pyllama._core``.

The cdef is cut out of csrc/pyllama.h (between the CDEF markers), so the C boundary
is declared in one place. The build targets baseline x86-64 / aarch64: faster
instruction sets are chosen at run time. ``PYLLAMA_NATIVE=1`` opts into
``-march=native`` for a build that only has to run on this machine.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def read_cdef() -> str:
    header = (CSRC / "pyllama.h").read_text()
    m = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", header, re.S)
    if not m:
        raise RuntimeError("csrc/pyllama.h lacks the CDEF-BEGIN/CDEF-END markers")
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)  # comments
    lines = []
    for line in body.splitlines():
        if line.startswith("#") and not re.match(r"#define\s+\w+\s+-?\d+\s*$", line):
            continue
        lines.append(line)
    return "\n".join(lines)


def compile_args() -> list[str]:
    args = ["-O3", "-std=gnu11", "-fopenmp", "-Wall", "-Wno-unused-function"]
    if os.environ.get("PYLLAMA_NATIVE") == "1":
        args.append("-march=native")
    if os.environ.get("PYLLAMA_DEBUG") == "1":
        args += ["-O1", "-g", "-fno-omit-frame-pointer"]
    return args


ffibuilder = FFI()
ffibuilder.cdef(read_cdef())
ffibuilder.set_source(
    "pyllama._core",
    '#include "pyllama.h"',
    # paths relative to the project root: setup.py runs from there
    sources=sorted(os.path.relpath(p, ROOT) for p in CSRC.glob("*.c")),
    include_dirs=[os.path.relpath(CSRC, ROOT)],
    extra_compile_args=compile_args(),
    extra_link_args=["-fopenmp", "-lm"],
)

