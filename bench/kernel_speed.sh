#!/bin/sh
# Single-thread kernel speed straight from C: bench/kernel_speed.sh [scalar|avx512]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${TMPDIR:-/tmp}/pyllama-kernel-speed
arch=$(uname -m)
isa="$root/csrc/kernels_avx2.c $root/csrc/kernels_avx512.c $root/csrc/kquants_avx2.c $root/csrc/kquants_avx512.c $root/csrc/kquants_repack.c"
[ "$arch" = aarch64 ] && isa="$root/csrc/kernels_neon.c $root/csrc/kquants_neon.c"
${CC:-cc} -std=c11 -O2 -I"$root/csrc" "$root/bench/kernel_speed.c" "$root/csrc/kernels_scalar.c" $isa \
    "$root/csrc/quants.c" "$root/csrc/util.c" -lm -o "$out"
"$out" "$@"
