"""Issue 16's server speed targets, side by side in one run (the lead runs it in a quiet period).

    python bench/bench_server.py [-m MODEL] [-t 2] [-n 64] [--llama-server PATH]

Prints, for the default model and 2 threads:
  A. one stream: in-process create_completion tokens/s vs the same over HTTP (target: HTTP >= 90%);
  B. aggregate tokens/s of 8 concurrent streams vs 1 stream (target >= 3x), and the same
     load against llama.cpp's `llama-server -np 8` when its binary is given or found (target >= 1.5x):
     from the first request to the last byte (the prompts' evaluation included, the stricter reading),
     and as decode tokens/s (each stream's rate from its first token to its end, summed);
  C. time to first token of a request arriving while 7 others stream vs on an idle server
     (target <= 2x);
  D. sustained load (no target): 12 clients sending 32-token requests back to back to the 8
     slots for 4 s, tokens/s and the median time to first token (queueing included);
  and pyllama's engine time per forward pass (round) during the best 1- and 8-stream runs,
  split as /metrics reports it: the slots' Python steps, the forward pass, the flush to the
  event loop, and the wall time per round.
Tokens are counted from each response's usage; generation ignores EOS (min_p 0, a fixed
long prompt) only as far as the model allows, so counts come from the responses, not assumed.

Both sides of each ratio are measured the same way and close together in time: this VM's
speed drifts by 10-15% from one minute to the next, more than the margins asked for. So the
in-process runs alternate with the HTTP ones (the in-process model loaded in this process
beside the idle server), the 1-stream runs with the 8-stream ones, and each side takes its
best of ROUNDS; a time to first token is the median of TTFT_SAMPLES requests on each side
(idle, and arriving one after another while the 7 others stream).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle. Chapter 1:"


def default_llama_server() -> str:
    """Where bench/build_llamacpp.sh builds llama-server on this machine. The script is only asked
    (LLAMACPP_WHERE=1), not run to build: a missing binary only skips the comparison."""
    res = subprocess.run(["bash", str(Path(__file__).with_name("build_llamacpp.sh"))],
                         env={**os.environ, "LLAMACPP_WHERE": "1"}, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    return os.path.join(res.stdout.strip(), "llama-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, proc, log, timeout=120) -> None:
    """Until `url` answers /health with 200; SystemExit with the end of the server's log (the
    file it writes to) if it exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited: {log.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become healthy")


def _events(raw: bytes) -> list[dict]:
    """The JSON events of an SSE byte stream (complete ones only; [DONE] left out)."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                try:
                    out.append(json.loads(line[5:]))
                except ValueError:  # an event cut at the end of what has arrived so far
                    pass
    return out


def _dechunk(raw: bytes) -> bytes:
    """The body of an HTTP/1.1 response with chunked transfer encoding (headers removed)."""
    out, i = [], 0
    while True:
        j = raw.find(b"\r\n", i)
        if j < 0:
            return b"".join(out)
        size = int(raw[i:j].split(b";")[0] or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[j + 2:j + 2 + size])
        i = j + 2 + size + 2


_FIRST_TEXT = re.compile(rb'"(?:text|content)": ?"[^"]')  # an event carrying generated text


def stream_many(url: str, n_streams: int, n: int, prompt: str = PROMPT) -> list[dict]:
    """n_streams streamed completions at once, read by this one thread: for each, time to
    first token, decode time, tokens.

    The client shares the cores with the server, so it stays cheap: one thread waits on all
    the sockets and takes whatever each has when it wakes (one wake-up for a round's
    burst of chunks, where a thread per stream woke eight threads to fight over the GIL),
    raw HTTP/1.1 bytes kept as they come and parsed once at the end."""
    host, port = url.split("//", 1)[1].split(":")
    body = json.dumps({"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}, "cache_prompt": False}).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    sel = selectors.DefaultSelector()
    streams = []
    t0 = time.perf_counter()
    for _ in range(n_streams):
        sock = socket.create_connection((host, int(port)), timeout=600)
        sock.sendall(request)
        sock.setblocking(False)
        st = {"sock": sock, "pieces": [], "first": None, "end": None}
        streams.append(st)
        sel.register(sock, selectors.EVENT_READ, st)
    try:
        left = n_streams
        while left:
            for key, _ in sel.select(timeout=600):
                st = key.data
                try:
                    piece = st["sock"].recv(1 << 16)
                except BlockingIOError:
                    continue
                if piece:
                    st["pieces"].append(piece)
                    if st["first"] is None and _FIRST_TEXT.search(piece):
                        st["first"] = time.perf_counter()
                else:
                    st["end"] = time.perf_counter()
                    sel.unregister(st["sock"])
                    left -= 1
    finally:
        for st in streams:
            st["sock"].close()
        sel.close()
    out = []
    for st in streams:
        raw = b"".join(st["pieces"])
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1:2]
        if status != [b"200"]:
            raise RuntimeError(f"HTTP {status}: {raw[:500]!r}")
        data = _dechunk(rest) if b"chunked" in head.lower() else rest
        usage = None
        for chunk in _events(data)[-3:]:
            if chunk.get("usage"):
                usage = chunk["usage"]
            if "timings" in chunk:  # llama-server's own final chunk
                usage = usage or {"completion_tokens": chunk["timings"].get("predicted_n")}
        tokens = (usage or {}).get("completion_tokens") or 0
        first, end = st["first"], st["end"]
        out.append({"ttft": (first or end) - t0, "total": end - t0, "tokens": tokens,
                    "decode_tps": (tokens - 1) / (end - first) if first and tokens > 1 and end > first else 0.0})
    return out


def stream_completion(url: str, n: int, prompt: str = PROMPT) -> dict:
    """One streamed completion (stream_many's figures)."""
    return stream_many(url, 1, n, prompt)[0]


def aggregate(url: str, n_streams: int, n: int) -> tuple[float, float]:
    """n_streams concurrent streams: tokens per second from the first request to the last byte
    (their prompts' evaluation included), and their decode tokens per second, the sum of each
    stream's rate from its first token to its end (what the single-stream figure measures)."""
    t0 = time.perf_counter()
    results = stream_many(url, n_streams, n)
    return sum(r["tokens"] for r in results) / (time.perf_counter() - t0), sum(r["decode_tps"] for r in results)


def engine_phases(url: str) -> dict | None:
    """The pyllama engine's time split from /metrics (None for other servers)."""
    try:
        text = httpx.get(url + "/metrics", timeout=5).text
    except httpx.TransportError:
        return None
    out = {}
    for line in text.splitlines():
        if line.startswith("pyllama_engine_seconds_total{"):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("pyllama_engine_rounds_total "):
            out["rounds"] = float(line.rsplit(" ", 1)[1])
    return out or None


def aggregate_with_split(url: str, n_streams: int, n: int) -> tuple[float, float, dict | None]:
    """aggregate(), and the engine's milliseconds per round by phase during it (pyllama only)."""
    before = engine_phases(url)
    t0 = time.perf_counter()
    tps, decode = aggregate(url, n_streams, n)
    wall = time.perf_counter() - t0
    after = engine_phases(url)
    if not before or not after or after["rounds"] == before["rounds"]:
        return tps, decode, None
    rounds = after["rounds"] - before["rounds"]
    split = {k: round(1e3 * (after[k] - before[k]) / rounds, 3) for k in after if k != "rounds"}
    split["wall"] = round(1e3 * wall / rounds, 3)  # includes the requests' start and prefill
    split["rounds"] = int(rounds)
    return tps, decode, split


ROUNDS = 5  # runs per side of a throughput ratio (best of)
TTFT_SAMPLES = 5  # requests per side of the time-to-first-token ratio (median of)
TTFT_PROMPT = PROMPT + " The end."


def ttft_under_load(url: str, n: int) -> list[float]:
    """Times to first token of TTFT_SAMPLES requests sent one after another while 7 others
    stream (each well past the samples' end: n * 4 tokens)."""
    with ThreadPoolExecutor(7) as pool:
        busy = [pool.submit(stream_completion, url, n * 4) for _ in range(7)]
        time.sleep(1.0)  # the 7 are decoding
        out = []
        for _ in range(TTFT_SAMPLES):
            out.append(stream_completion(url, 8, prompt=TTFT_PROMPT)["ttft"])
            time.sleep(0.1)
        for f in busy:
            f.result()
    return out


def sustained(url: str, seconds: float = 4.0, clients: int = 12, n: int = 32) -> tuple[float, float]:
    """clients each sending streamed n-token requests back to back (more of them than slots, so
    requests keep arriving and queueing while others stream) for `seconds`: tokens/s over all of
    them, and the median time to first token, waiting in the queue included."""
    stop = time.perf_counter() + seconds
    tokens, ttfts = [], []

    def client(i: int) -> None:
        while time.perf_counter() < stop:
            r = stream_completion(url, n, prompt=f"{PROMPT} Part {i}.")
            tokens.append(r["tokens"])
            ttfts.append(r["ttft"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return sum(tokens) / (time.perf_counter() - t0), statistics.median(ttfts)


def measure_server(name: str, url: str, n: int, in_process=None) -> dict:
    """The server's figures; with in_process (a function giving in-process decode tokens/s),
    its runs alternate with the one-stream HTTP runs and its best comes back as "in_process_tps"."""
    stream_completion(url, n)  # warm
    ones, ins = [], []
    for _ in range(ROUNDS):
        if in_process is not None:
            ins.append(in_process())
            time.sleep(0.05)
        ones.append(stream_completion(url, n))
    one = max(ones, key=lambda r: r["decode_tps"])
    idle_ttft = statistics.median([stream_completion(url, 8, prompt=TTFT_PROMPT)["ttft"] for _ in range(TTFT_SAMPLES)])
    runs1, runs8 = [], []
    for _ in range(3):
        runs1.append(aggregate_with_split(url, 1, n))
        runs8.append(aggregate_with_split(url, 8, n))
    agg1, _, split1 = max(runs1, key=lambda r: r[0])
    agg8, _, split8 = max(runs8, key=lambda r: r[0])
    dec1, dec8 = max(r[1] for r in runs1), max(r[1] for r in runs8)
    loaded = ttft_under_load(url, n)
    churn_tps, churn_ttft = sustained(url)
    out = {"server": name, "one_stream_decode_tps": one["decode_tps"], "aggregate_1": agg1, "aggregate_8": agg8,
           "aggregate_decode_1": dec1, "aggregate_decode_8": dec8,
           "ttft_idle_s": idle_ttft, "ttft_under_7_s": statistics.median(loaded),
           "ttft_under_7_samples_s": [round(x, 4) for x in loaded],
           "sustained_tps": churn_tps, "sustained_ttft_s": churn_ttft}
    if ins:
        out["in_process_tps"] = max(ins)
    if split8:  # ms per engine round (forward pass) of the best run
        out["engine_ms_per_round_1"], out["engine_ms_per_round_8"] = split1, split8
    print(json.dumps(out), file=sys.stderr)
    return out


def serve_and_measure(name: str, cmd: list[str], n: int, in_process=None, **popen) -> dict:
    """Start the server `cmd` on a free port, measure it (measure_server), stop it. Its log goes to a
    file, not a pipe: llama-server logs every request, and a pipe nobody reads fills and stalls it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd + ["--port", str(port)], stderr=log, text=True, **popen)
        try:
            wait_health(url, proc, log)
            return measure_server(name, url, n, in_process)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


class InProcess:
    """create_completion in this process: decode tokens/s of one streamed completion per call."""

    def __init__(self, model: str, threads: int, n: int):
        from pyllama import Llama

        self.llm = Llama(model, n_ctx=2048, n_threads=threads)
        self.n = n

    def __call__(self) -> float:
        llm = self.llm
        llm.reset()
        first = None
        for chunk in llm.create_completion(PROMPT, max_tokens=self.n, temperature=0, stream=True):
            if first is None and chunk["choices"][0]["text"]:
                first = time.perf_counter()
        end = time.perf_counter()
        return (llm.last_usage["completion_tokens"] - 1) / (end - first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=64, help="tokens per stream")
    ap.add_argument("--llama-server", default=None,
                    help="llama-server binary (default: bench/build_llamacpp.sh's, when built)")
    args = ap.parse_args()
    args.llama_server = args.llama_server or default_llama_server()
    from pyllama import models

    model = models.resolve_model(args.model)
    rows = []
    in_process = InProcess(model, args.threads, args.n)
    in_process()  # warm

    ours = serve_and_measure("pyllama", [sys.executable, "-m", "pyllama.server", "-m", model, "-t", str(args.threads),
                                         "-np", "8", "-c", "1024", "--max-queue", "64"], args.n, in_process)
    rows.append(ours)
    tps_in = ours["in_process_tps"]
    in_process.llm.close()

    theirs = None
    if os.path.exists(args.llama_server):
        theirs = serve_and_measure("llama-server", [args.llama_server, "-m", model, "-t", str(args.threads), "-np", "8",
                                                    "-c", str(1024 * 8), "--no-webui"], args.n,
                                   stdout=subprocess.DEVNULL)
        rows.append(theirs)
    else:
        print(f"(no llama-server at {args.llama_server}: skipped)", file=sys.stderr)

    print("| | pyllama server | llama-server -np 8 | target |")
    print("| --- | --- | --- | --- |")
    fmt = lambda r, k: f"{r[k]:.2f}" if r else "-"  # noqa: E731
    print(f"| in-process create_completion decode tok/s (best of {ROUNDS}) | {tps_in:.1f} | | |")
    print(f"| one stream over HTTP, decode tok/s (best of {ROUNDS}, alternating) | {fmt(ours, 'one_stream_decode_tps')} | {fmt(theirs, 'one_stream_decode_tps')} "
          f"| >= 90% of in-process: {ours['one_stream_decode_tps'] / tps_in:.0%} |")
    print(f"| aggregate tok/s, 1 stream (best of 3, alternating with 8) | {fmt(ours, 'aggregate_1')} | {fmt(theirs, 'aggregate_1')} | |")
    ratio = ours["aggregate_8"] / ours["aggregate_1"]
    vs = f"; {ours['aggregate_8'] / theirs['aggregate_8']:.2f}x llama-server (>= 1.5x)" if theirs else ""
    print(f"| aggregate tok/s, 8 streams | {fmt(ours, 'aggregate_8')} | {fmt(theirs, 'aggregate_8')} "
          f"| {ratio:.2f}x one stream (>= 3x){vs} |")
    dratio = ours["aggregate_decode_8"] / ours["aggregate_decode_1"]
    dvs = f"; {ours['aggregate_decode_8'] / theirs['aggregate_decode_8']:.2f}x llama-server" if theirs else ""
    print(f"| aggregate decode tok/s (each stream first token to end, summed), 1 / 8 streams "
          f"| {fmt(ours, 'aggregate_decode_1')} / {fmt(ours, 'aggregate_decode_8')} "
          f"| {fmt(theirs, 'aggregate_decode_1')} / {fmt(theirs, 'aggregate_decode_8')} | {dratio:.2f}x{dvs} |")
    ms = lambda r, k: f"{1e3 * r[k]:.1f}" if r else "-"  # noqa: E731
    print(f"| time to first token, idle (ms, median of {TTFT_SAMPLES}) | {ms(ours, 'ttft_idle_s')} "
          f"| {ms(theirs, 'ttft_idle_s')} | |")
    print(f"| time to first token, 7 streaming (ms, median of {TTFT_SAMPLES}) | {ms(ours, 'ttft_under_7_s')} "
          f"| {ms(theirs, 'ttft_under_7_s')} "
          f"| <= 2x idle: {ours['ttft_under_7_s'] / ours['ttft_idle_s']:.2f}x |")
    print(f"| sustained: 12 clients sending 32-token requests back to back, tok/s | {fmt(ours, 'sustained_tps')} "
          f"| {fmt(theirs, 'sustained_tps')} | |")
    print(f"| sustained: time to first token, queueing included (ms, median) | {ms(ours, 'sustained_ttft_s')} "
          f"| {ms(theirs, 'sustained_ttft_s')} | |")
    for k in ("1", "8"):
        split = ours.get("engine_ms_per_round_" + k)
        if split:
            print(f"\npyllama engine, {k} stream(s), ms per round: " + ", ".join(f"{p} {v}" for p, v in split.items()))


if __name__ == "__main__":
    main()
