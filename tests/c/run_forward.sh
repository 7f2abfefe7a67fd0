#!/bin/sh
# Build tests/c/forward_isa.c with the whole C core and run it on the given GGUF
# models: the forward pass on this CPU's best kernel set against the scalar one.
#   tests/c/run_forward.sh MODEL...           natively (x86-64: AVX2 / AVX-512)
#   tests/c/run_forward.sh --neon MODEL...    cross-compiled for AArch64, run under
#                                             qemu-user with and without the dot-product extension
# Exits 77 (skip) when --neon is asked for and the cross compiler or qemu is missing
# (tests/c/run_neon.sh installs them), and when every model given was skipped: forward_isa
# refuses quantized weights (see its header).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${TMPDIR:-/tmp}/pyllama-cforward
mkdir -p "$out"
neon=0
if [ "${1:-}" = "--neon" ]; then
    neon=1
    shift
fi
if [ $neon = 1 ]; then
    CC=${AARCH64_CC:-aarch64-linux-gnu-gcc}
    QEMU=${QEMU_AARCH64:-qemu-aarch64}
    if ! command -v "$CC" >/dev/null 2>&1 || ! command -v "$QEMU" >/dev/null 2>&1; then
        echo "SKIP: $CC or $QEMU missing"
        exit 77
    fi
else
    CC=${CC:-cc}
fi
$CC -std=gnu11 -O2 -fopenmp -Wall -Wno-unused-function -I"$root/csrc" "$here/forward_isa.c" "$root"/csrc/*.c \
    -lm -o "$out/forward_isa"
status=0
checked=0 # models actually compared (forward_isa exits 77 for quantized weights)
for model in "$@"; do
    if [ $neon = 1 ]; then
        for cpu in max cortex-a53; do
            echo "== qemu-aarch64 -cpu $cpu $(basename "$model")"
            rc=0
            "$QEMU" -L "${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}" -cpu "$cpu" "$out/forward_isa" "$model" || rc=$?
            [ $rc = 77 ] || checked=$((checked + 1))
            [ $rc = 0 ] || [ $rc = 77 ] || status=1
        done
    else
        echo "== $(basename "$model")"
        rc=0
        "$out/forward_isa" "$model" || rc=$?
        [ $rc = 77 ] || checked=$((checked + 1))
        [ $rc = 0 ] || [ $rc = 77 ] || status=1
    fi
done
if [ $status = 0 ] && [ $checked = 0 ]; then
    echo "SKIP: no model with float weights was given"
    exit 77
fi
exit $status
