#!/bin/bash
# Side by side: pyllama.quantize and llama-quantize on the same source file and thread count,
# then llama-perplexity (and, with PYPPL=1, pyllama.perplexity) on both outputs.
#
#   bench/compare_quantize.sh SOURCE.gguf OUTDIR TYPE [TYPE...]
#
# Environment: THREADS (default 2), LLAMA_BIN (llama.cpp's bin dir, default bench/build_llamacpp.sh's),
# TEXT (default tests/data/perplexity_pride_and_prejudice.txt), CTX (default 512),
# PPL=0 to skip perplexity, PYPPL=1 to add pyllama.perplexity (needs the K-quant kernels).
# Prints one line per measurement. Timings are of the whole command (wall clock and user+system
# CPU seconds), Python start-up included, with the source in the page cache.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$1; OUT=$2; shift 2
THREADS=${THREADS:-2}
BIN=${LLAMA_BIN:-$(LLAMACPP_WHERE=1 bash bench/build_llamacpp.sh)}
TEXT=${TEXT:-tests/data/perplexity_pride_and_prejudice.txt}
CTX=${CTX:-512}
PY=${PYTHON:-python}
mkdir -p "$OUT"
stem=$(basename "$SRC" .gguf)
ppl() { "$BIN/llama-perplexity" -m "$1" -f "$TEXT" -c "$CTX" -t "$THREADS" 2>&1 | grep -oE "Final estimate: PPL = [0-9.]+ \+/- [0-9.]+"; }
for ft in "$@"; do
  mine="$OUT/$stem.pyllama.$ft.gguf"; theirs="$OUT/$stem.llamacpp.$ft.gguf"
  cat "$SRC" > /dev/null
  /usr/bin/time -f "%e s wall, %U+%S s cpu" -o "$OUT/time.mine" "$PY" -m pyllama.quantize -q -t "$THREADS" "$SRC" "$mine" "$ft" 2>/dev/null
  cat "$SRC" > /dev/null
  /usr/bin/time -f "%e s wall, %U+%S s cpu" -o "$OUT/time.theirs" "$BIN/llama-quantize" "$SRC" "$theirs" "$ft" "$THREADS" > /dev/null 2>&1
  echo "$ft quantize -t $THREADS: pyllama $(tail -1 "$OUT/time.mine"), llama-quantize $(tail -1 "$OUT/time.theirs");" \
       "sizes $(stat -c %s "$mine") / $(stat -c %s "$theirs") bytes"
  if [ "${PPL:-1}" = 1 ]; then
    echo "$ft llama-perplexity: pyllama's file $(ppl "$mine"); llama-quantize's file $(ppl "$theirs")"
  fi
  if [ "${PYPPL:-0}" = 1 ]; then
    for f in "$mine" "$theirs"; do
      echo "$ft pyllama.perplexity $(basename "$f"): $("$PY" -m pyllama.perplexity -m "$f" -f "$TEXT" -c "$CTX" -t "$THREADS" 2>/dev/null | tail -1)"
    done
  fi
done
