"""cffi build script: compiles csrc/ into the extension module ``pyllama._core``.

The cdef is cut out of csrc/pyllama.h (between the CDEF markers), so the C boundary
is declared in one place. The build targets baseline x86-64 / aarch64: faster
instruction sets are chosen at run time. ``PYLLAMA_NATIVE=1`` opts into
``-march=native`` for a build that only has to run on this machine;
``PYLLAMA_SANITIZE=1`` builds with ASan and UBSan.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
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


def openmp_flags() -> tuple[list[str], list[str]]:
    """Compile and link flags for OpenMP.

    GCC and LLVM clang take -fopenmp. Apple's clang (macOS) rejects it: there the
    preprocessor is asked for OpenMP and Homebrew's libomp is linked, found through
    LIBOMP_PREFIX, `brew --prefix libomp` or Homebrew's usual places. (Not tested on a
    Mac in this project's CI; CC=gcc-14 from Homebrew takes the -fopenmp path.)
    """
    cc = os.path.basename(os.environ.get("CC", ""))
    if sys.platform != "darwin" or "gcc" in cc:
        return ["-fopenmp"], ["-fopenmp"]
    candidates = [os.environ.get("LIBOMP_PREFIX", "")]
    try:
        candidates.append(subprocess.run(["brew", "--prefix", "libomp"], capture_output=True, text=True,
                                         timeout=30).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    candidates += ["/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"]
    for prefix in candidates:
        if prefix and os.path.isfile(os.path.join(prefix, "include", "omp.h")):
            lib = os.path.join(prefix, "lib")
            return (["-Xpreprocessor", "-fopenmp", "-I" + os.path.join(prefix, "include")],
                    ["-L" + lib, "-lomp", "-Wl,-rpath," + lib])
    raise RuntimeError("pyllama's C core needs OpenMP, which Apple's clang lacks: `brew install libomp` "
                       "(or set LIBOMP_PREFIX to a libomp install, or CC=gcc-14 for Homebrew's GCC)")


OPENMP_COMPILE, OPENMP_LINK = openmp_flags()


def compile_args() -> list[str]:
    # -fno-wrapv undoes the -fwrapv in Python's own CFLAGS, which setuptools puts first on the line:
    # with signed overflow defined, GCC keeps re-extending the int indices of the kernels' inner loops,
    # the extra instructions per byte shorten how far ahead the core reads, and the decode rows stream
    # slower from DRAM (bench/RESULTS.md, "What we tried and why it lost"). The C tests compile without
    # it too. Python 3.12+ passes -fno-strict-overflow instead, which for GCC also
    # means -fwrapv-pointer: -fstrict-overflow undoes both (clang only warns about it, so not there).
    args = ["-O3", "-fno-wrapv", "-std=gnu11", *OPENMP_COMPILE, "-Wall", "-Wno-unused-function"]
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or ""
    if "clang" not in cc:
        args.insert(2, "-fstrict-overflow")
    if os.environ.get("PYLLAMA_NATIVE") == "1":
        args.append("-march=native")
    if os.environ.get("PYLLAMA_DEBUG") == "1":
        args += ["-O1", "-g", "-fno-omit-frame-pointer"]
    args += sanitize_flags()
    return args


def sanitize_flags() -> list[str]:
    """``PYLLAMA_SANITIZE=1``: AddressSanitizer and UndefinedBehaviorSanitizer in the
    extension itself (CI runs the C-touching tests so, with libasan preloaded into
    Python: see .ci/run). Undefined behaviour aborts instead of printing and going on."""
    if os.environ.get("PYLLAMA_SANITIZE") != "1":
        return []
    return ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined"]


ffibuilder = FFI()
ffibuilder.cdef(read_cdef())
ffibuilder.set_source(
    "pyllama._core",
    '#include "pyllama.h"',
    # paths relative to the project root: setup.py runs from there
    sources=sorted(os.path.relpath(p, ROOT) for p in CSRC.glob("*.c")),
    include_dirs=[os.path.relpath(CSRC, ROOT)],
    extra_compile_args=compile_args(),
    extra_link_args=[*OPENMP_LINK, "-lm", *sanitize_flags()],
)

