#!/usr/bin/env bash
# Build llama.cpp's `llama-bench`, `llama-perplexity`, `llama-quantize` and `llama-server` from the
# llama.cpp source that ships inside the llama-cpp-python sdist on PyPI (vendor/llama.cpp), for side-by-side benchmarks and perplexity references.
#
# Usage: bench/build_llamacpp.sh [VERSION]        (default VERSION: 0.3.36, or $LLAMACPP_PY_VERSION)
# Environment:
#   LLAMACPP_DIR   where to build (default ~/.cache/pyllama/llama.cpp-VERSION); nothing goes into the repository
#   JOBS           parallel compile jobs (default: number of cores)
#   LLAMACPP_AMX   1: keep llama.cpp's AMX matrix path on CPUs that have AMX (default 0: built without it;
#                  in 0.3.36 it segfaults in ggml_backend_amx_mul_mat on the project's Intel VMs, the
#                  machine-dependent crash of ggml-org/llama.cpp#20824, so llama-bench could not run at all)
#   LLAMACPP_SOURCE_ONLY  1: only download and unpack the source (convert_hf_to_gguf.py, gguf-py,
#                  grammars/ for the tests); prints the source directory and builds nothing
#   LLAMACPP_WHERE 1: build nothing and download nothing; print the binaries' directory, and exit 0 when
#                  all four are built there, 1 when not (for tests and benchmarks that skip without them)
#   LLAMACPP_ISA   avx2: build for AVX2+FMA+F16C only (GGML_NATIVE=OFF, no AVX-512, into build-avx2/), the
#                  instruction set of an AVX2-only CPU, to compare with `PYLLAMA_ISA=avx2` on a newer one
# Prints the directory that holds the binaries on its last line (stdout); progress goes to stderr.
# Idempotent: does nothing when the four binaries already exist.
set -euo pipefail

VER="${1:-${LLAMACPP_PY_VERSION:-0.3.36}}"
DIR="${LLAMACPP_DIR:-$HOME/.cache/pyllama/llama.cpp-$VER}"
JOBS="${JOBS:-$(nproc)}"
# -march=native turns AMX on wherever the CPU has it; -mno-amx-* takes it out again (AVX-512 VNNI stays)
EXTRA_FLAGS=""
if [[ "${LLAMACPP_AMX:-0}" != 1 ]] && grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
    EXTRA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
CMAKE_ISA="-DGGML_NATIVE=ON"
BUILD="$DIR/build${EXTRA_FLAGS:+-noamx}"
if [[ "${LLAMACPP_ISA:-native}" == avx2 ]]; then
    EXTRA_FLAGS=""
    CMAKE_ISA="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF"
    BUILD="$DIR/build-avx2"
elif [[ "${LLAMACPP_ISA:-native}" != native ]]; then
    echo "build_llamacpp: LLAMACPP_ISA must be native or avx2" >&2
    exit 2
fi
BIN="$BUILD/bin"
PY="${PYTHON:-python3}"

log() { echo "build_llamacpp: $*" >&2; }

built() { [[ -x "$BIN/llama-bench" && -x "$BIN/llama-perplexity" && -x "$BIN/llama-quantize" && -x "$BIN/llama-server" ]]; }

if [[ "${LLAMACPP_WHERE:-0}" == 1 ]]; then
    echo "$BIN"
    built || { log "not built in $BIN (run bench/build_llamacpp.sh)"; exit 1; }
    exit 0
fi

# Which llama.cpp this is: the sdist carries no git metadata (the binaries say "commit unknown"),
# so record the sdist and its sha256 next to the binaries, in VERSION.txt.
write_version() {
    {
        echo "llama.cpp from vendor/llama.cpp of the llama-cpp-python $VER sdist (PyPI)"
        (cd "$DIR/sdist" && sha256sum ./*.tar.gz)
        "$BIN/llama-perplexity" --version 2>&1 | grep -E '^(version|built)' || true
        echo "cmake -DCMAKE_BUILD_TYPE=Release $CMAKE_ISA -DLLAMA_CURL=OFF${EXTRA_FLAGS:+ (C/C++ flags: $EXTRA_FLAGS)}, targets llama-bench llama-perplexity llama-quantize llama-server"
    } > "$BUILD/VERSION.txt"
}

if [[ "${LLAMACPP_SOURCE_ONLY:-0}" != 1 ]] && built; then
    log "already built in $BIN"
    [[ -f "$BUILD/VERSION.txt" ]] && grep -q sha256 "$BUILD/VERSION.txt" 2>/dev/null || write_version
    echo "$BIN"
    exit 0
fi

mkdir -p "$DIR"
SRC="$DIR/src"
if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
    log "downloading the llama-cpp-python $VER sdist"
    # --no-binary for this package only: with ':all:' pip would also build its build backend's own
    # dependencies (cmake, ninja, ...) from source just to read the sdist's metadata.
    "$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VER" -d "$DIR/sdist" >&2
    TARBALL=$(ls "$DIR"/sdist/llama_cpp_python-"$VER".tar.gz 2>/dev/null || ls "$DIR"/sdist/*.tar.gz | head -n 1)
    log "unpacking $TARBALL"
    rm -rf "$DIR/unpack" && mkdir -p "$DIR/unpack"
    tar -xzf "$TARBALL" -C "$DIR/unpack"
    VENDOR=$(ls -d "$DIR"/unpack/*/vendor/llama.cpp)
    rm -rf "$SRC"
    mv "$VENDOR" "$SRC"
    rm -f "$SRC/.git"  # a submodule pointer into the llama-cpp-python repository, which is not here
    rm -rf "$DIR/unpack"
fi
if [[ "${LLAMACPP_SOURCE_ONLY:-0}" == 1 ]]; then
    echo "$SRC"
    exit 0
fi

log "configuring ($CMAKE_ISA, Release${EXTRA_FLAGS:+, $EXTRA_FLAGS})"
cmake -S "$SRC" -B "$BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release $CMAKE_ISA -DLLAMA_CURL=OFF \
    -DCMAKE_C_FLAGS="$EXTRA_FLAGS" -DCMAKE_CXX_FLAGS="$EXTRA_FLAGS" \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2

log "building llama-bench and llama-perplexity with $JOBS jobs (several minutes)"
nice -n 10 cmake --build "$BUILD" --target llama-bench llama-perplexity llama-quantize llama-server -j "$JOBS" >&2

"$BIN/llama-bench" --help > /dev/null 2>&1 || { log "llama-bench does not run"; exit 1; }
write_version
log "done: $BIN"
echo "$BIN"
