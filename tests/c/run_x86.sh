#!/bin/sh
# Build tests/c/test_kernels.c against the AVX2 kernels and run it (x86-64 only).
# The binary is compiled for baseline x86-64 like the extension; the kernels carry
# their own target attributes. Skips (exit 77) when the CPU lacks AVX2/FMA/F16C.
# Usage: tests/c/run_x86.sh [extra CFLAGS, e.g. -fsanitize=address]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${TMPDIR:-/tmp}/pyllama-ctest-x86
mkdir -p "$out"
if ! grep -q avx2 /proc/cpuinfo 2>/dev/null || ! grep -q f16c /proc/cpuinfo || ! grep -qw fma /proc/cpuinfo; then
    echo "SKIP: this CPU has no AVX2+FMA+F16C"
    exit 77
fi
CC=${CC:-cc}
$CC -std=c11 -O2 -g -Wall -Wextra -DTEST_AVX2 "$@" -I"$root/csrc" \
    "$here/test_kernels.c" "$root/csrc/kernels_scalar.c" "$root/csrc/kernels_avx2.c" \
    "$root/csrc/quants.c" "$root/csrc/util.c" -lm -o "$out/test_kernels_avx2"
"$out/test_kernels_avx2"
