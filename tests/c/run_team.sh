#!/bin/sh
# Build tests/c/test_team.c with the thread team (csrc/team.c) and run it: the barrier and
# the dealing of a product's rows, from 2 to 8 threads. Extra arguments go to the compiler
# (e.g. -fsanitize=thread).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${TMPDIR:-/tmp}/pyllama-cteam
mkdir -p "$out"
CC=${CC:-cc}
$CC -std=gnu11 -O2 -g -fopenmp -Wall -Wextra "$@" -I"$root/csrc" "$here/test_team.c" "$root/csrc/team.c" \
    "$root/csrc/util.c" -lm -o "$out/test_team"
"$out/test_team"
