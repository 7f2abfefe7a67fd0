#!/bin/sh
# AVX2 vs AVX-512 decode rows of the 5-bit, K-quant and IQ4 types, in one process: bench/kq_rows_ab.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${TMPDIR:-/tmp}/pyllama-kq-rows-ab
${CC:-cc} -std=c11 -O2 -I"$root/csrc" "$root/bench/kq_rows_ab.c" "$root/csrc/kernels_scalar.c" \
    "$root/csrc/kernels_avx2.c" "$root/csrc/kernels_avx512.c" "$root/csrc/kquants_avx2.c" \
    "$root/csrc/kquants_avx512.c" "$root/csrc/kquants_repack.c" "$root/csrc/quants.c" "$root/csrc/util.c" -lm -o "$out"
"$out" "$@"
