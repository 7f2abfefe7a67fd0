#!/usr/bin/env python3
"""Record llama.cpp's perplexity of the default model on a public-domain text, for tests/test_perplexity.py.

    python tests/recorders/record_perplexity_reference.py [--llama-perplexity PATH] [--chunks N]
    python tests/recorders/record_perplexity_reference.py -m MODEL --out tests/data/perplexity_reference_NAME.json
    python tests/recorders/record_perplexity_reference.py --extract-text     # rewrite the text file (needs apt)
    python tests/recorders/record_perplexity_reference.py -m qwen2.5-coder-0.5b-instruct -c 512 --chunks 3 --top-logits

With -m (a catalog name or a path) the record goes to tests/data/perplexity_reference_<name>.json
(read by tests/test_kquant_models.py). --top-logits also has llama-perplexity save every scored
position's logits (its --kl-divergence-base file: per position, 16-bit log-probabilities over the
whole vocabulary, 2.4e-4 apart) and keeps, for each, the token ids of the TOP largest logits
and their distance below the largest; the record then holds the chunks' token ids as well,
so a test can feed exactly llama.cpp's tokens.

The text, tests/data/perplexity_pride_and_prejudice.txt, is chapters 1-5 of Jane Austen's
"Pride and Prejudice" (1813, public domain): 29,623 bytes of ASCII, 7,608 tokens for
SmolLM2. It was taken from the Project Gutenberg transcription as packaged in Debian's
`r-cran-janeaustenr` 1.0.0-1 (R data file `prideprejudice`, one element per line of the
book, elements joined with newlines, cut before "Chapter 6"); --extract-text repeats that
(apt-get download + a small reader for R's lazy-load database format, below).

The reference is the output of llama.cpp's `llama-perplexity`, built from the llama.cpp
source shipped in the llama-cpp-python sdist by bench/build_llamacpp.sh, run as
    llama-perplexity -m MODEL -f TEXT -c 256 -b 256 -t 2 --chunks N
The JSON records the llama.cpp version, the exact command, the model and text sha256, the
running perplexity printed after each chunk and the final estimate with its error.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shlex
import struct
import subprocess
import sys
import tempfile
import zlib
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
ROOT = os.path.dirname(HERE)
TEXT = os.path.join(HERE, "data", "perplexity_pride_and_prejudice.txt")
OUT = os.path.join(HERE, "data", "perplexity_reference.json")
N_CTX = 256
CHUNKS = 16  # of the 29 windows of 256 tokens in the text: keeps the test well under a minute on 2 cores
LLAMACPP_PY_VERSION = "0.3.36"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- the text ---------------------------------------------------------------------------------
class _RReader:
    """Just enough of R's XDR serialization format to read character vectors."""

    def __init__(self, data: bytes):
        self.b, self.i = data, 0
        if self.take(2) != b"X\n":
            raise ValueError("not an XDR R serialization")
        version = self.int()
        self.int(), self.int()  # R version that wrote it, minimal version to read it
        if version == 3:
            self.take(self.int())  # native encoding name

    def take(self, n: int) -> bytes:
        v = self.b[self.i:self.i + n]
        self.i += n
        return v

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == 254:  # R_NilValue
            return None
        if kind == 9:  # CHARSXP
            n = self.int()
            return None if n < 0 else self.take(n).decode("utf-8")
        if kind == 255:  # reference to an earlier symbol
            return ("reference", flags >> 8)
        if kind == 1:  # SYMSXP
            return ("symbol", self.item())
        if kind == 2:  # pairlist
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            head, rest = self.item(), self.item()
            return [(tag, head)] + (rest or [])
        if kind in (10, 13):  # logical, integer
            value = [self.int() for _ in range(self.int())]
        elif kind == 14:  # double
            value = self.take(8 * self.int())
        elif kind in (16, 19):  # character vector, list
            value = [self.item() for _ in range(self.int())]
        else:
            raise ValueError(f"R object type {kind} not supported by this reader")
        if has_attr:
            self.item()
        return value


def extract_text() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "r-cran-janeaustenr"], cwd=tmp, check=True)
        deb = next(f for f in os.listdir(tmp) if f.endswith(".deb"))
        subprocess.run(["dpkg", "-x", deb, "x"], cwd=tmp, check=True)
        data = os.path.join(tmp, "x/usr/lib/R/site-library/janeaustenr/data")
        with open(os.path.join(data, "Rdata.rdx"), "rb") as fh:
            index = _RReader(gzip.decompress(fh.read())).item()
        with open(os.path.join(data, "Rdata.rdb"), "rb") as fh:
            rdb = fh.read()
        books = []
        for offset, length in index[0]:  # index$variables: (offset, length) of each object
            blob = rdb[offset:offset + length]
            books.append(_RReader(zlib.decompress(blob[4:])).item())
    book = next(b for b in books if b[0] == "PRIDE AND PREJUDICE")
    text = "\n".join(line or "" for line in book)
    text = text[:text.index("\nChapter 6\n")].rstrip() + "\n"
    with open(TEXT, "w", encoding="ascii", newline="\n") as fh:
        fh.write(text)
    print(f"wrote {TEXT}: {len(text)} bytes, sha256 {sha256(TEXT)}", file=sys.stderr)


# ---- the reference -----------------------------------------------------------------------------
def find_llama_perplexity(explicit: str | None) -> str:
    if explicit:
        return explicit
    res = subprocess.run(["bash", os.path.join(ROOT, "bench", "build_llamacpp.sh"), LLAMACPP_PY_VERSION],
                         stdout=subprocess.PIPE, text=True, check=True)
    return os.path.join(res.stdout.strip().splitlines()[-1], "llama-perplexity")


def version_info(exe: str) -> list[str]:
    """What bench/build_llamacpp.sh recorded next to the binaries, else the binary's --version."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(exe))), "VERSION.txt")
    if os.path.isfile(path):
        with open(path) as fh:
            return [line.strip() for line in fh if line.strip()]
    res = subprocess.run([exe, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return [line.strip() for line in res.stdout.splitlines() if line.startswith(("version", "built"))]


def parse_output(text: str) -> dict:
    final = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", text)  # after a log prefix
    if not final:
        raise SystemExit("no 'Final estimate' line in llama-perplexity's output:\n" + text[-3000:])
    running = [float(v) for _, v in re.findall(r"\[(\d+)\]([0-9.]+),", text)]
    return {"ppl": float(final.group(1)), "ppl_error": float(final.group(2)), "running_ppl": running,
            "final_line": final.group(0).strip()}


TOP = 5


def read_logits_file(path: str, top: int = TOP) -> dict:
    """llama-perplexity's --kl-divergence-base file (tools/perplexity/perplexity.cpp): "_logits_",
    int32 n_ctx, n_vocab, n_chunk, the n_chunk * n_ctx token ids, then for every chunk and each of
    its n_ctx - 1 - n_ctx/2 scored positions a record of nv = 2*((n_vocab+1)/2) + 4 uint16: two
    floats (scale, min_log_prob) and n_vocab values q with logit - min_logit = q * scale (0 for
    logits more than 16 below the largest). Logit differences are therefore (q_i - q_j) * scale."""
    import numpy as np

    with open(path, "rb") as fh:
        if fh.read(8) != b"_logits_":
            raise SystemExit(f"{path}: not a llama-perplexity logits file")
        n_ctx = int(np.frombuffer(fh.read(4), "<i4")[0])
        n_vocab, n_chunk = (int(v) for v in np.frombuffer(fh.read(8), "<i4"))
        tokens = np.frombuffer(fh.read(4 * n_chunk * n_ctx), "<i4").reshape(n_chunk, n_ctx)
        nv = 2 * ((n_vocab + 1) // 2) + 4
        n_pos = n_ctx - 1 - n_ctx // 2
        chunks = []
        for _ in range(n_chunk):
            rec = np.frombuffer(fh.read(2 * nv * n_pos), "<u2").reshape(n_pos, nv)
            scale = rec[:, :4].copy().view("<f4")[:, 0].astype(np.float64)
            q = rec[:, 4:4 + n_vocab].astype(np.int64)
            idx = np.argsort(-q, axis=1, kind="stable")[:, :top]
            qt = np.take_along_axis(q, idx, axis=1)
            below = (qt[:, :1] - qt) * scale[:, None]  # how far each is below the largest logit
            chunks.append({"top_ids": idx.tolist(), "top_below": np.round(below, 5).tolist()})
        if fh.read(1):
            raise SystemExit(f"{path}: longer than its header says")
    return {"n_ctx": n_ctx, "n_vocab": n_vocab, "first_scored": n_ctx // 2, "tokens": tokens.tolist(),
            "chunks": chunks}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--extract-text", action="store_true", help="rewrite the text file from the Debian package")
    p.add_argument("--llama-perplexity", help="path of llama-perplexity (default: bench/build_llamacpp.sh's)")
    p.add_argument("-m", "--model", help="model file (default: pyllama's default model)")
    p.add_argument("--chunks", type=int, default=CHUNKS)
    p.add_argument("-c", "--ctx-size", type=int, default=N_CTX, help=f"window length (default {N_CTX})")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--top-logits", action="store_true",
                   help="also record the top token ids and logit gaps of every scored position")
    p.add_argument("--out", help="JSON to write (default: tests/data/perplexity_reference.json, or "
                   "tests/data/perplexity_reference_<name>.json with -m)")
    args = p.parse_args(argv)
    if args.extract_text:
        extract_text()
        return 0

    sys.path.insert(0, ROOT)
    from pyllama.models import default_model_name, default_model_path, model_names, resolve_model

    model = resolve_model(args.model) if args.model else default_model_path()
    name = args.model if args.model in model_names() else (
        os.path.splitext(os.path.basename(model))[0] if args.model else default_model_name())
    out_path = args.out or (OUT if not args.model else
                            os.path.join(HERE, "data", f"perplexity_reference_{name}.json"))
    exe = find_llama_perplexity(args.llama_perplexity)
    n_ctx = args.ctx_size
    cmd = [exe, "-m", model, "-f", TEXT, "-c", str(n_ctx), "-b", str(n_ctx), "-t", str(args.threads),
           "--chunks", str(args.chunks)]
    tmp = tempfile.TemporaryDirectory()
    logits_file = os.path.join(tmp.name, "logits.bin")
    if args.top_logits:
        cmd += ["--kl-divergence-base", logits_file]
    print("running: " + shlex.join(cmd), file=sys.stderr)
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        raise SystemExit(f"llama-perplexity failed (exit {res.returncode}):\n{res.stdout[-3000:]}")
    out = parse_output(res.stdout)
    if len(out["running_ppl"]) != args.chunks:
        raise SystemExit(f"expected {args.chunks} per-chunk values, parsed {len(out['running_ppl'])}")
    record = {
        "what": ("llama.cpp llama-perplexity on the default model: the reference for tests/test_perplexity.py"
                 if not args.model else f"llama.cpp llama-perplexity on {name}: the reference for "
                 "tests/test_kquant_models.py"),
        "recorded_by": "tests/recorders/record_perplexity_reference.py",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "llama_cpp": {
            "source": f"vendor/llama.cpp of the llama-cpp-python {LLAMACPP_PY_VERSION} sdist (PyPI)",
            "build": "bench/build_llamacpp.sh (cmake -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release)",
            "version": version_info(exe),
        },
        "command": shlex.join(["llama-perplexity", "-m", os.path.basename(model), "-f",
                               os.path.relpath(TEXT, ROOT)] + cmd[5:]).replace(logits_file, "LOGITS.bin"),
        "model": {"name": name,
                  "file": os.path.basename(model), "sha256": sha256(model)},
        "text": {"file": os.path.relpath(TEXT, ROOT), "sha256": sha256(TEXT),
                 "source": "Jane Austen, Pride and Prejudice (1813, public domain), chapters 1-5, from the Project "
                           "Gutenberg transcription as packaged in Debian's r-cran-janeaustenr 1.0.0-1"},
        "n_ctx": n_ctx,
        "n_batch": n_ctx,
        "n_threads": args.threads,
        "chunks": args.chunks,
        "running_ppl": out["running_ppl"],
        "final_line": out["final_line"],
        "ppl": out["ppl"],
        "ppl_error": out["ppl_error"],
    }
    if args.top_logits:
        logits = read_logits_file(logits_file)
        tmp.cleanup()
        if len(logits["chunks"]) != args.chunks or logits["n_ctx"] != n_ctx:
            raise SystemExit(f"logits file holds {len(logits['chunks'])} chunks of {logits['n_ctx']}")
        record["top_logits"] = {
            "what": (f"per chunk, for positions first_scored..n_ctx-2: the {TOP} token ids with the largest "
                     "logits (llama.cpp's --kl-divergence-base file, ties in its 16-bit values by id) and "
                     "how far each is below the largest (logit units, resolution 16/65535)"),
            **logits,
        }
    with open(out_path, "w") as fh:
        if args.top_logits:  # one line per field, the long per-position lists kept on theirs
            fh.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                                          for k, v in record.items()) + "\n}")
        else:
            json.dump(record, fh, indent=2)
        fh.write("\n")
    print(f"wrote {out_path}: PPL = {out['ppl']} +/- {out['ppl_error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
