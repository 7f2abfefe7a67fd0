#!/bin/sh
# Build tests/c/fuzz_bpe.c with csrc/bpe.c under AddressSanitizer and UBSan (plain -O2 when
# the compiler cannot link the sanitizers) and run it.
# Usage: tests/c/run_bpe.sh [extra CFLAGS]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${TMPDIR:-/tmp}/pyllama-ctest-bpe
mkdir -p "$out"
CC=${CC:-cc}
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
if ! echo 'int main(void){return 0;}' | $CC $san -x c - -o "$out/probe" 2>/dev/null; then
    echo "note: $CC cannot build with sanitizers; running without"
    san=""
fi
$CC -std=c11 -O2 -g -Wall -Wextra $san "$@" -I"$root/csrc" "$here/fuzz_bpe.c" "$root/csrc/bpe.c" \
    "$root/csrc/util.c" "$root/csrc/quants.c" -lm -o "$out/fuzz_bpe"
"$out/fuzz_bpe"
