#!/usr/bin/env bash
# CI step: the C extension itself built with AddressSanitizer + UndefinedBehaviorSanitizer
# (PYLLAMA_SANITIZE=1, see pyllama/_build.py), and the tests that drive the C core run
# against it. Python is not instrumented, so libasan is preloaded; Python's own leaks are
# not reported (detect_leaks=0). The build goes to a copy of the tree in .asan/ so the
# normal build in pyllama/ stays as it is.
# Needs the test virtualenv active (.ci/run). PYLLAMA_CI_SANITIZE=0 skips the step.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${PYLLAMA_CI_SANITIZE:-1}" = "0" ]; then
    echo "== sanitizers: skipped (PYLLAMA_CI_SANITIZE=0)" >&2
    exit 0
fi
cc="${CC:-gcc}"
libasan="$("$cc" -print-file-name=libasan.so)"
if [ ! -e "$libasan" ]; then
    echo "warning: $cc has no libasan.so; the sanitizer step is skipped" >&2
    exit 0
fi

dest=.asan/pyllama-asan
rm -rf .asan
mkdir -p "$dest"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$dest"
[ -d ../shared ] && ln -s ../../shared .asan/shared   # tests find shared data beside the tree
echo "== sanitizers: building the extension with -fsanitize=address,undefined" >&2
(cd "$dest" && PYLLAMA_SANITIZE=1 python setup.py -q build_ext --inplace >/dev/null)

export LD_PRELOAD="$libasan"
# allocator_may_return_null + max_allocation_size_mb: an absurd size read from a bad file
# must fail to allocate (the loaders report that), as under the RLIMIT_AS the tests set
# without ASan; handle_segv/sigbus=0: tests that expect a fault signal get the signal.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=8192:handle_segv=0:handle_sigbus=0:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
cd "$dest"
python - <<'PY'
import os, pyllama._core as c
assert os.path.realpath(c.__file__).startswith(os.path.realpath(".")), c.__file__
print(f"== sanitizers: testing {c.__file__}", flush=True)
PY
# The tests that reach C code: file readers (GGUF, llama2.c, damaged and hostile files),
# the BPE tables, sampling, quantized blocks, the forward pass, the Python API and the fuzz
# harnesses' seeds. (The kernel-vs-scalar sweep is left to the plain run: long under ASan.)
python -m pytest -q -p no:cacheprovider \
    tests/test_gguf_reader.py tests/test_bad_files.py tests/test_llama2c.py tests/test_bpe.py \
    tests/test_tokenizer_gguf.py tests/test_tokenizer_metadata.py tests/test_sampling.py \
    tests/test_quants.py tests/test_forward.py tests/test_llama_api.py tests/test_fuzz_harnesses.py
