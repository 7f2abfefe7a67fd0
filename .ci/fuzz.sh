#!/usr/bin/env bash
# CI step: coverage-guided fuzzing (atheris) of the Python-side parsers of untrusted bytes:
# chat template rendering, tokenizer metadata, llama2.c tokenizer.bin. Each harness runs for
# PYLLAMA_CI_FUZZ_SECONDS (default 60; 0 skips the step). A finding (an exception the code
# must not raise, a hang past -timeout, memory past -rss_limit_mb) fails the step; the input
# that caused it is printed in base64 so it can be replayed with the harness.
# Needs the test virtualenv active (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${PYLLAMA_CI_FUZZ_SECONDS:-60}"
if [ "$secs" = "0" ]; then
    echo "== fuzzing: skipped (PYLLAMA_CI_FUZZ_SECONDS=0)" >&2
    exit 0
fi
if ! python -c "import atheris" 2>/dev/null; then
    python -m pip install -q atheris || { echo "warning: atheris does not install here; fuzzing skipped" >&2; exit 0; }
fi
root="$(pwd)"
out="$(mktemp -d)"
status=0
for h in fuzz_chat_template fuzz_tokenizer_metadata fuzz_llama2c_tokenizer; do
    echo "== fuzzing: $h for ${secs} s" >&2
    if ! (cd "$out" && python "$root/tests/fuzz/$h.py" -max_total_time="$secs" -timeout=30 \
            -rss_limit_mb=3072 -print_final_stats=1 >"$out/$h.log" 2>&1); then
        status=1
        echo "FINDING in $h:" >&2
        grep -v "^#\|INFO: Instrumenting" "$out/$h.log" | tail -40 >&2
        for f in "$out"/crash-* "$out"/timeout-* "$out"/oom-*; do
            [ -e "$f" ] && { echo "input $(basename "$f") (base64):" >&2; base64 -w0 "$f" >&2; echo >&2; rm -f "$f"; }
        done
    else
        grep -E "^(Done|stat::number_of_executed_units)" "$out/$h.log" >&2 || true
    fi
done
rm -rf "$out"
exit $status
