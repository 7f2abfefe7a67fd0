#!/bin/sh
# Fuzz the GGUF and llama2.c loaders and the first forward passes (tests/c/fuzz_model.c) with
# libFuzzer under ASan and UBSan, starting from the seed files in GGUF_SEEDS and L2C_SEEDS.
# Exits 77 (skip) when clang cannot build libFuzzer targets; 0 when no run found anything.
# Usage: tests/c/run_fuzz_model.sh SECONDS_EACH GGUF_SEEDS L2C_SEEDS [extra libFuzzer flags]
set -eu
secs=$1 gguf_seeds=$2 l2c_seeds=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../csrc" && pwd)
out=${TMPDIR:-/tmp}/pyllama-ctest-fuzz
mkdir -p "$out"
CC=${FUZZ_CC:-clang}
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
if ! printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n){(void)d;(void)n;return 0;}\n' |
    $CC $san -fsanitize=fuzzer -x c - -o "$out/probe" 2>/dev/null; then
    echo "SKIP: $CC cannot build libFuzzer targets"
    exit 77
fi
cflags="-std=gnu11 -O1 -g -fno-omit-frame-pointer -fopenmp -I$src $san"
objs=""
for f in gguf llama2c model context forward kv_cache team rope quants dispatch kernels_scalar kernels_avx2 kernels_avx512 kquants_avx2 kquants_avx512 kquants_repack kernels_neon kquants_neon sampling; do
    $CC $cflags -fsanitize=fuzzer-no-link -c "$src/$f.c" -o "$out/$f.o"
    objs="$objs $out/$f.o"
done
# the file mapping becomes an exact-size heap copy (see fuzz_model.c)
$CC $cflags -fsanitize=fuzzer-no-link -Dmmap=fuzz_mmap -Dmunmap=fuzz_munmap -Dmprotect=fuzz_mprotect \
    -Dmadvise=fuzz_madvise -c "$src/util.c" -o "$out/util.o"
$CC $cflags -fsanitize=fuzzer "$here/fuzz_model.c" $objs "$out/util.o" -lm -o "$out/fuzz_gguf"
$CC $cflags -fsanitize=fuzzer -DFUZZ_LLAMA2C "$here/fuzz_model.c" $objs "$out/util.o" -lm -o "$out/fuzz_llama2c"
for target in gguf llama2c; do
    seeds=$gguf_seeds
    [ "$target" = llama2c ] && seeds=$l2c_seeds
    corpus="$out/corpus_$target"
    mkdir -p "$corpus"
    echo "== fuzz_$target: $secs s from $(ls "$seeds" | wc -l) seeds"
    OMP_NUM_THREADS=1 "$out/fuzz_$target" -max_total_time="$secs" -max_len=400000 -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=1024 -artifact_prefix="$out/$target-" -print_final_stats=1 \
        "$@" "$corpus" "$seeds"
done
echo "fuzz: ok"
