#!/bin/sh
# Decode matvec speed for the C core built with different flags (see bench/matvec_flags.c):
#   bench/matvec_flags.sh ["FLAGS A" "FLAGS B" ...]
# Default: the extension's own flags, then the same with Python's -fwrapv put back.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${TMPDIR:-/tmp}/pyllama-matvec-flags
mkdir -p "$out"
[ $# -gt 0 ] || set -- "-O3 -fPIC" "-O3 -fPIC -fwrapv"
for flags in "$@"; do
    ${CC:-cc} $flags -std=gnu11 -fopenmp -I"$root/csrc" -shared "$root"/csrc/*.c -lm -o "$out/libpl.so"
    ${CC:-cc} -O2 -I"$root/csrc" "$root/bench/matvec_flags.c" -L"$out" -lpl -Wl,-rpath,"$out" -o "$out/matvec_flags"
    echo "$flags: $("$out/matvec_flags")"
done
