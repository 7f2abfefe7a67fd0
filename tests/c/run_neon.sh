#!/bin/sh
# Cross-compile tests/c/test_kernels.c for AArch64 and run it under qemu-user,
# twice: on a CPU with the dot-product extension (qemu -cpu max) and on one
# without it (-cpu cortex-a53), so both NEON paths are checked against the
# scalar reference. Before that, every file of the C core is compiled for AArch64 (as
# pyllama/_build.py builds the extension there), so a change that breaks the ARM build fails
# here even where only the kernels are run. Installs gcc-aarch64-linux-gnu and qemu-user with apt-get
# when they are missing (needs root); exits 77 (skip) when that is not possible.
# Usage: tests/c/run_neon.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${TMPDIR:-/tmp}/pyllama-ctest-neon
CC=${AARCH64_CC:-aarch64-linux-gnu-gcc}
QEMU=${QEMU_AARCH64:-qemu-aarch64}

if ! command -v "$CC" >/dev/null 2>&1 || ! command -v "$QEMU" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing gcc-aarch64-linux-gnu and qemu-user ..." >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user) >&2 ||
            { echo "SKIP: could not install the AArch64 cross compiler / qemu-user"; exit 77; }
    else
        echo "SKIP: $CC or $QEMU missing and cannot be installed here (not root or no apt-get)"
        exit 77
    fi
fi

mkdir -p "$out"
for src in "$root"/csrc/*.c; do
    $CC -std=gnu11 -O3 -fopenmp -Wall -Wno-unused-function -I"$root/csrc" -c "$src" -o "$out/core.o" ||
        { echo "FAIL: $(basename "$src") does not compile for AArch64"; exit 1; }
done
$CC -std=c11 -O2 -g -Wall -Wextra -DTEST_NEON -I"$root/csrc" \
    "$here/test_kernels.c" "$root/csrc/kernels_scalar.c" "$root/csrc/kernels_neon.c" \
    "$root/csrc/kquants_neon.c" "$root/csrc/quants.c" "$root/csrc/util.c" -lm -o "$out/test_kernels_neon"

sysroot=${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
status=0
for cpu in max cortex-a53; do
    echo "== qemu-aarch64 -cpu $cpu"
    "$QEMU" -L "$sysroot" -cpu "$cpu" "$out/test_kernels_neon" || status=1
done
exit $status
