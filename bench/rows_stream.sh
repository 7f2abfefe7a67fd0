#!/bin/sh
# Two-thread streaming speed of the decode kernels: bench/rows_stream.sh [avx2|avx512] [N] [BURST]
# (see bench/rows_stream.c). CC and CFLAGS pass through, e.g. CFLAGS=-DPREFETCH_BYTES=8192.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${TMPDIR:-/tmp}/pyllama-rows-stream
${CC:-cc} -std=c11 -O2 -fopenmp ${CFLAGS:-} -I"$root/csrc" "$root/bench/rows_stream.c" "$root/csrc/kernels_scalar.c" \
    "$root/csrc/kernels_avx2.c" "$root/csrc/kernels_avx512.c" "$root/csrc/kquants_avx2.c" "$root/csrc/kquants_avx512.c" "$root/csrc/kquants_repack.c" "$root/csrc/quants.c" "$root/csrc/util.c" -lm -o "$out"
"$out" "$@"
