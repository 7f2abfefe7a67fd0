#!/bin/sh
# Build tests/c/test_kernels.c against the AVX2 kernels and run it (x86-64 only); then,
# when the CPU has AVX-512 F/BW/VL/VNNI, the same against the AVX-512 set.
# The binaries are compiled for baseline x86-64 like the extension; the kernels carry
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
build() { # $1: TEST_AVX2 or TEST_AVX512, $2: output name, then extra flags
    def=$1 name=$2
    shift 2
    $CC -std=c11 -O2 -g -Wall -Wextra -D"$def" "$@" -I"$root/csrc" \
        "$here/test_kernels.c" "$root/csrc/kernels_scalar.c" "$root/csrc/kernels_avx2.c" \
        "$root/csrc/kernels_avx512.c" "$root/csrc/kquants_avx2.c" "$root/csrc/kquants_avx512.c" "$root/csrc/kquants_repack.c" "$root/csrc/quants.c" "$root/csrc/util.c" -lm -o "$out/$name"
}
build TEST_AVX2 test_kernels_avx2 "$@"
"$out/test_kernels_avx2"
if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo &&
    grep -qw avx512_vnni /proc/cpuinfo; then
    build TEST_AVX512 test_kernels_avx512 "$@"
    "$out/test_kernels_avx512"
else
    echo "note: no AVX-512 VNNI on this CPU; the AVX-512 set was not run"
fi
