"""Malformed model files must raise pyllama.ModelError, never crash or hang.

A valid tiny GGUF (written by the `gguf` package) and valid llama2.c
checkpoints are mutated in many ways: truncation at many offsets, wrong magic
and versions, absurd counts, string and array lengths past the end of the
file, unknown and unsupported tensor types, tensor offsets past the end or
misaligned, shapes that disagree with the metadata, impossible header values,
random byte flips in the header region.

Every file is loaded (and, if it loads, evaluated on two tokens) in a child
interpreter, so a segfault or abort shows up as a failing case instead of
killing the test run. A child works through a batch of files, reporting each
result as one JSON line; when it dies or stalls on a file, that file is
recorded as a crash (signal) or hang (no answer within HANG_S) and a fresh
child continues with the rest of the batch, so one crash hides nothing.

Expectations per case:
- "error": must raise ModelError; where the test knows the culprit (a key or a
  tensor name) the message must name it.
- "any": ModelError, another pyllama error (e.g. TokenizerError when a flipped
  byte lands in the vocabulary) or a successful load are all fine.
Any other exception type (IndexError, UnicodeDecodeError, MemoryError, ...)
fails the case: errors must be clear and deliberate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support import tiny_models
from support.tiny_models import TinySpec

pytestmark = pytest.mark.subprocess

HANG_S = 30.0  # no single tiny file may take this long

CHILD = r"""
import json, sys
import os
try:
    import resource  # a loader that believes an absurd count must fail to allocate, not swap the machine
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # ASan's shadow alone is terabytes of address space
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
except Exception:
    pass
import numpy as np
import pyllama
cases = json.load(open(sys.argv[1]))
for c in cases:
    print(json.dumps({"start": c["id"]}), flush=True)
    res = {"id": c["id"]}
    try:
        llm = pyllama.Llama(model_path=c["path"], n_ctx=8, n_threads=1, verbose=False, **c.get("kwargs", {}))
        llm.eval([0, 1])
        res.update(result="ok", finite=bool(np.all(np.isfinite(llm.logits))))
        llm.close()
    except pyllama.PyllamaError as e:
        res.update(result="error", exc=type(e).__name__, msg=str(e))
    except BaseException as e:
        res.update(result="other", exc=type(e).__name__, msg=str(e)[:500])
    print(json.dumps(res), flush=True)
"""


@dataclasses.dataclass
class Case:
    id: str
    path: str
    expect: str = "error"                 # "error" or "any"
    needles: tuple = ()                   # for "error": the message must contain one of these
    kwargs: dict = dataclasses.field(default_factory=dict)


def run_cases(cases: list[Case], tmp_path: Path) -> dict[str, dict]:
    """Load every case in child interpreters; returns id -> result dict."""
    results: dict[str, dict] = {}
    pending = list(cases)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    round_no = 0
    while pending:
        round_no += 1
        spec = tmp_path / f"batch_{round_no}.json"
        spec.write_text(json.dumps([dataclasses.asdict(c) for c in pending]))
        err_path = tmp_path / f"batch_{round_no}.stderr"  # a file: a chatty child cannot fill a pipe
        err_file = open(err_path, "wb")
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(spec)], stdout=subprocess.PIPE,
                                stderr=err_file, env=env)
        current, buf, deadline = None, b"", time.monotonic() + HANG_S + 30  # + interpreter start
        hung = False
        while True:
            r, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                hung = True
                proc.kill()
                break
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if "start" in msg:
                    current = msg["start"]
                    deadline = time.monotonic() + HANG_S
                else:
                    results[msg["id"]] = msg
                    current = None
        proc.wait()
        err_file.close()
        stderr = err_path.read_bytes().decode("utf-8", "replace")[-2000:]
        if current is not None:
            kind = "hang" if hung else f"crash (returncode {proc.returncode})"
            results[current] = {"id": current, "result": kind, "msg": stderr}
        elif hung or proc.returncode != 0:
            # stalled or died outside any case (e.g. the import hung or failed): report every
            # pending case rather than start another child that would do the same
            why = "child stalled before its first case" if hung else f"child failed (rc {proc.returncode})"
            for c in pending:
                results.setdefault(c.id, {"id": c.id, "result": why, "msg": stderr})
        pending = [c for c in pending if c.id not in results]
    return results


def check(cases: list[Case], tmp_path: Path):
    assert len({c.id for c in cases}) == len(cases)
    results = run_cases(cases, tmp_path)
    problems = []
    verbose = os.environ.get("PYLLAMA_TEST_VERBOSE") == "1"  # with pytest -s: every case's outcome
    for c in cases:
        r = results[c.id]
        res = r["result"]
        if verbose:
            print(f"{c.id:28s} {res:6s} {r.get('exc', ''):14s} {r.get('msg', '')[-150:]}")
        if res == "error":
            if r["exc"] != "ModelError" and c.expect == "error":
                problems.append(f"{c.id}: {r['exc']} instead of ModelError: {r['msg']}")
            elif c.expect == "error" and c.needles and not any(n.lower() in r["msg"].lower() for n in c.needles):
                problems.append(f"{c.id}: message does not name any of {c.needles}: {r['msg']}")
        elif res == "ok":
            if c.expect == "error":
                problems.append(f"{c.id}: loaded without error")
        else:  # crash, hang, other exception
            problems.append(f"{c.id}: {res}: {r.get('exc', '')} {r['msg'][-600:]}")
    assert not problems, f"{len(problems)} of {len(cases)} cases failed:\n" + "\n".join(problems)


# ---------------------------------------------------------------------------
# a minimal independent GGUF layout parser, to know where each field sits

SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def parse_layout(data: bytes) -> dict:
    pos = 0

    def u32():
        nonlocal pos
        pos += 4
        return struct.unpack_from("<I", data, pos - 4)[0]

    def u64():
        nonlocal pos
        pos += 8
        return struct.unpack_from("<Q", data, pos - 8)[0]

    def string():
        nonlocal pos
        off = pos
        n = u64()
        pos += n
        return off, data[off + 8:off + 8 + n].decode()

    assert data[:4] == b"GGUF"
    pos = 4
    version, n_tensors, n_kv = u32(), u64(), u64()
    kvs = {}
    for _ in range(n_kv):
        key_off, key = string()
        type_off = pos
        vtype = u32()
        kv = {"key_off": key_off, "type_off": type_off, "val_off": pos, "type": vtype}
        if vtype == 8:
            string()
        elif vtype == 9:
            kv["elem_type_off"] = pos
            et = u32()
            kv["count_off"] = pos
            count = u64()
            kv["elems_off"] = pos
            kv["elem_type"], kv["count"] = et, count
            if et == 8:
                for _ in range(count):
                    string()
            else:
                pos += SCALAR_SIZE[et] * count
        else:
            pos += SCALAR_SIZE[vtype]
        kv["end"] = pos
        kvs[key] = kv
    tensors = {}
    for _ in range(n_tensors):
        name_off, name = string()
        nd_off = pos
        nd = u32()
        ne_offs = []
        ne = []
        for _ in range(nd):
            ne_offs.append(pos)
            ne.append(u64())
        type_off = pos
        ttype = u32()
        off_off = pos
        offset = u64()
        tensors[name] = {"name_off": name_off, "ndims_off": nd_off, "ne_offs": ne_offs, "ne": ne,
                         "type_off": type_off, "type": ttype, "offset_off": off_off, "offset": offset}
    ti_end = pos
    align = 32
    if "general.alignment" in kvs:
        align = struct.unpack_from("<I", data, kvs["general.alignment"]["val_off"])[0]
    data_start = (ti_end + align - 1) // align * align
    return {"version": version, "n_tensors": n_tensors, "n_kv": n_kv, "kvs": kvs, "tensors": tensors,
            "ti_end": ti_end, "data_start": data_start, "align": align}


def tensor_nbytes(t) -> int:
    blk, size = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 2: (32, 18), 3: (32, 20), 6: (32, 22),
                 7: (32, 24), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
                 20: (32, 18), 23: (256, 136)}[t["type"]]
    n = int(np.prod(t["ne"]))
    return n // blk * size


BASE_SPEC = TinySpec(wtype="Q8_0", tied=False, context_length=32, seed=3)


@pytest.fixture(scope="module")
def base_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_gguf")
    path = tiny_models.write_tiny_gguf(d / "base.gguf", BASE_SPEC)
    data = path.read_bytes()
    return d, data, parse_layout(data)


class Mutator:
    def __init__(self, directory: Path, data: bytes):
        self.dir, self.data, self.cases = directory, data, []

    def add(self, cid, data: bytes, expect="error", needles=(), kwargs=None):
        p = self.dir / f"{cid}.gguf"
        p.write_bytes(data)
        self.cases.append(Case(cid, str(p), expect, tuple(needles), kwargs or {}))

    def put(self, cid, offset, fmt, value, expect="error", needles=()):
        b = bytearray(self.data)
        struct.pack_into(fmt, b, offset, value)
        self.add(cid, bytes(b), expect, needles)


def test_base_files_load(base_gguf, tmp_path):
    """Sanity: the unmutated files load (otherwise every 'error' below would pass vacuously)."""
    d, data, _ = base_gguf
    l2c = write_llama2c_set(tmp_path)
    cases = [Case("base-gguf", str(d / "base.gguf"), "any"),
             Case("base-gguf-no-mmap", str(d / "base.gguf"), "any", (), {"use_mmap": False}),
             *[Case(f"base-{k}", str(p), "any", (), kw) for k, (p, kw) in l2c.items()],
             *[Case(f"base-{k}-no-mmap", str(p), "any", (), {**kw, "use_mmap": False}) for k, (p, kw) in l2c.items()]]
    res = run_cases(cases, tmp_path)
    assert all(r["result"] == "ok" and r["finite"] for r in res.values()), res


def test_gguf_truncated(base_gguf):
    d, data, lay = base_gguf
    m = Mutator(d, data)
    kvs, ts = lay["kvs"], lay["tensors"]
    last_end = max(t["offset"] + tensor_nbytes(t) for t in ts.values()) + lay["data_start"]
    tok = kvs["tokenizer.ggml.tokens"]
    first_t = min(ts.values(), key=lambda t: t["name_off"])
    offsets = {0, 1, 3, 4, 7, 8, 12, 16, 20, 24,
               kvs["general.architecture"]["key_off"] + 10, kvs["general.architecture"]["val_off"] + 2,
               tok["count_off"] + 3, tok["elems_off"] + 1000, kvs["tokenizer.ggml.merges"]["end"] - 1,
               first_t["name_off"] + 5, first_t["ndims_off"] + 2, first_t["offset_off"] + 4,
               lay["ti_end"] - 1, lay["ti_end"], lay["data_start"], lay["data_start"] + 100,
               (lay["data_start"] + last_end) // 2, last_end - 1}
    for off in sorted(offsets):
        assert off < last_end
        m.add(f"trunc-{off}", data[:off])
        # the same file read into memory instead of mapped (use_mmap=False): the checks must not differ
        m.add(f"trunc-{off}-no-mmap", data[:off], kwargs={"use_mmap": False})
    check(m.cases, d)


def test_gguf_header(base_gguf):
    d, data, lay = base_gguf
    m = Mutator(d, data)
    for magic in (b"GGUG", b"\0\0\0\0", b"FUGG", b"GGML", b"ggjt"):
        m.add(f"magic-{magic.hex()}", magic + data[4:])
    for v in (0, 1, 4, 99, 0xFFFFFFFF):
        m.put(f"version-{v}", 4, "<I", v, needles=("version",))
    m.put("version-2", 4, "<I", 2, expect="any")  # v2 has the same little-endian layout
    nt, nk = lay["n_tensors"], lay["n_kv"]
    for v in (0, nt + 1, 1 << 40, (1 << 63) + 5, (1 << 64) - 1):
        m.put(f"n_tensors-{v}", 8, "<Q", v)
    # one tensor fewer: output.weight (the last info) drops out and the data section starts a little
    # earlier; what remains is a valid tied-output file with shifted (garbage) weights
    m.put(f"n_tensors-{nt - 1}", 8, "<Q", nt - 1, expect="any")
    for v in (0, nk - 1, nk + 1, 1 << 32, 1 << 62, (1 << 64) - 1):
        m.put(f"n_kv-{v}", 16, "<Q", v)
    check(m.cases, d)


def test_gguf_metadata_encoding(base_gguf):
    d, data, lay = base_gguf
    m = Mutator(d, data)
    kvs = lay["kvs"]
    arch = kvs["general.architecture"]
    for v in (1 << 62, len(data), (1 << 64) - 1):
        m.put(f"keylen-{v}", arch["key_off"], "<Q", v)
    name = kvs["general.name"]
    for v in (99, 13, 0xFFFFFFFF):
        m.put(f"vtype-{v}", name["type_off"], "<I", v, needles=("general.name", "type"))
    for v in (1 << 60, len(data) - name["val_off"]):
        m.put(f"strlen-{v}", name["val_off"], "<Q", v, needles=("general.name",))
    tok = kvs["tokenizer.ggml.tokens"]
    for v in (1 << 60, (1 << 64) - 1, tok["count"] * 1000):
        m.put(f"arraylen-{v}", tok["count_off"], "<Q", v, needles=("tokenizer.ggml.tokens",))
    m.put("arraylen-plus1", tok["count_off"], "<Q", tok["count"] + 1)
    m.put("array-elemtype-99", tok["elem_type_off"], "<I", 99, needles=("tokenizer.ggml.tokens", "type"))
    m.put("array-elemtype-array", tok["elem_type_off"], "<I", 9)
    m.put("array-elem-strlen", tok["elems_off"] + 8 * 0 + 0, "<Q", 1 << 50, needles=("tokenizer.ggml.tokens",))
    tt = kvs["tokenizer.ggml.token_type"]
    m.put("array-i32-count", tt["count_off"], "<Q", 1 << 40, needles=("tokenizer.ggml.token_type",))
    emb = kvs["llama.embedding_length"]
    m.put("emb-as-int32", emb["type_off"], "<I", 5, expect="any")   # same size, still an integer
    m.put("emb-as-float", emb["type_off"], "<I", 6, needles=("embedding_length",))
    m.put("emb-as-u64", emb["type_off"], "<I", 10)                  # shifts every later field
    m.put("emb-as-string", emb["type_off"], "<I", 8)
    check(m.cases, d)


def test_gguf_metadata_values(base_gguf):
    d, data, lay = base_gguf
    m = Mutator(d, data)
    kvs = lay["kvs"]

    def u32(key, v, expect="error", needles=None):
        m.put(f"{key.split('.', 1)[1]}-{v}", kvs[key]["val_off"], "<I", v, expect,
              needles if needles is not None else ())

    u32("llama.embedding_length", 0, needles=("embedding_length",))
    u32("llama.embedding_length", 63)
    u32("llama.embedding_length", 128)
    u32("llama.embedding_length", 1 << 31)
    u32("llama.block_count", 0, needles=("block_count",))
    u32("llama.block_count", 3, needles=("blk.2",))
    u32("llama.block_count", 100000)
    u32("llama.attention.head_count", 0, needles=("head_count",))
    u32("llama.attention.head_count", 5)
    u32("llama.attention.head_count", 3)
    u32("llama.attention.head_count", 1 << 30)
    u32("llama.attention.head_count_kv", 0, needles=("head_count_kv",))
    u32("llama.attention.head_count_kv", 3)
    u32("llama.attention.head_count_kv", 8)
    u32("llama.context_length", 0, needles=("context_length",))
    u32("llama.feed_forward_length", 95, needles=("ffn_", "feed"))
    u32("llama.feed_forward_length", 0)
    u32("llama.rope.dimension_count", 7)
    u32("llama.rope.dimension_count", 0)
    for name, bits in (("nan", 0x7FC00000), ("neg", 0xBF800000), ("inf", 0x7F800000)):
        m.put(f"eps-{name}", kvs["llama.attention.layer_norm_rms_epsilon"]["val_off"], "<I", bits,
              needles=("eps", "epsilon"))
        m.put(f"ropebase-{name}", kvs["llama.rope.freq_base"]["val_off"], "<I", bits,
              needles=("rope", "freq_base"))
    m.put("ropebase-0", kvs["llama.rope.freq_base"]["val_off"], "<f", 0.0, needles=("rope", "freq_base"))
    arch = kvs["general.architecture"]
    b = bytearray(data)
    b[arch["val_off"] + 8:arch["val_off"] + 13] = b"mamba"
    m.add("arch-mamba", bytes(b), needles=("mamba",))
    check(m.cases, d)


def test_gguf_tensor_infos(base_gguf):
    d, data, lay = base_gguf
    m = Mutator(d, data)
    ts = lay["tensors"]
    q = ts["blk.0.attn_q.weight"]
    name = ("blk.0.attn_q.weight",)
    for v in (0, 5, 9, 1 << 31):
        m.put(f"ndims-{v}", q["ndims_off"], "<I", v, needles=name)
    for i, v in ((0, 1 << 40), (1, 1 << 40), (0, 0), (1, 0), (0, 48), (1, 32), (1, 65)):
        m.put(f"ne{i}-{v}", q["ne_offs"][i], "<Q", v, needles=name)
    b = bytearray(data)
    struct.pack_into("<QQ", b, q["ne_offs"][0], 1 << 32, 1 << 32)  # element count overflows 64 bits
    m.add("ne-overflow", bytes(b), needles=name)
    # unknown ids, pyllama's own repacked id, a 256-value K-quant on 64-value rows
    for v, nm in ((99, "99"), (16, "IQ2_XXS"), (12, "Q4_K"), (14, "Q6_K"), (23, "IQ4_XS"), (31, "31"), (33, "33"), (34, "34"),
                  (35, "35"), (37, "37"), (0xFFFFFFFF, "big")):
        m.put(f"type-{nm}", q["type_off"], "<I", v, needles=name)
    m.put("type-q4_0", q["type_off"], "<I", 2, expect="any")  # smaller: fits, garbage weights
    m.put("type-q5_0", q["type_off"], "<I", 6, expect="any")
    norm = ts["blk.0.attn_norm.weight"]
    m.put("norm-as-f16", norm["type_off"], "<I", 1, expect="any")
    file_len = len(data)
    for v, nm in ((1 << 62, "huge"), (file_len, "eof"), (q["offset"] + 1, "misaligned"),
                  (q["offset"] + 16, "misaligned16"), ((1 << 64) - 32, "wrap")):
        m.put(f"offset-{nm}", q["offset_off"], "<Q", v, needles=name)
    last = max(ts.values(), key=lambda t: t["offset"])
    m.put("offset-last-past-eof", last["offset_off"], "<Q", last["offset"] + 4096)
    other = ts["blk.0.attn_k.weight"]
    # two tensors on the same bytes, or one starting inside another: a small file could
    # otherwise stand for any number of layers, each converted at load (csrc/gguf.c)
    m.put("offset-overlap", q["offset_off"], "<Q", other["offset"], needles=("share data",))
    m.put("offset-overlap-partial", q["offset_off"], "<Q", other["offset"] + 32, needles=("share data",))
    m.put("namelen-huge", q["name_off"], "<Q", 1 << 40)
    b = bytearray(data)
    b[q["name_off"] + 8:q["name_off"] + 8 + len("blk.0.attn_q.weight")] = b"blk.0.attn_x.weight"
    m.add("renamed", bytes(b), needles=name)
    b = bytearray(data)
    k = ts["blk.0.attn_k.weight"]
    b[k["name_off"] + 8:k["name_off"] + 8 + len("blk.0.attn_k.weight")] = b"blk.0.attn_q.weight"
    m.add("duplicate-name", bytes(b), needles=("blk.0.attn_q.weight", "blk.0.attn_k.weight"))
    check(m.cases, d)


# Widths of 256 for the 256-value blocks; a Q4_K_M-like mix, the last tensor in the file a K-quant.
KQUANT_SPEC = TinySpec(arch="qwen2", wtype="Q4_K", dim=256, hidden_dim=256, n_heads=2, n_kv_heads=1, n_layers=1,
                       tied=False, context_length=32, seed=5,
                       type_overrides={"output.weight": "Q6_K", "blk.0.ffn_down.weight": "Q5_K",
                                       "blk.0.attn_v.weight": "Q3_K", "blk.0.attn_k.weight": "IQ4_XS",
                                       "blk.0.attn_q.weight": "Q2_K", "token_embd.weight": "Q5_0"})


def test_gguf_kquant_tensors(tmp_path):
    """A truncated K-quant tensor, K-quant rows that are not whole super-blocks, unknown and
    retired type ids on a K-quant tensor: ModelError naming the tensor."""
    path = tiny_models.write_tiny_gguf(tmp_path / "kq.gguf", KQUANT_SPEC)
    data = path.read_bytes()
    lay = parse_layout(data)
    ts = lay["tensors"]
    assert {t["type"] for t in ts.values()} >= {6, 10, 11, 12, 13, 14, 23}
    m = Mutator(tmp_path, data)
    m.add("kq-base", data, expect="any")
    last_name, last = max(ts.items(), key=lambda kv: kv[1]["offset"])
    assert last["type"] in (10, 11, 12, 13, 14, 23)
    end = lay["data_start"] + last["offset"] + tensor_nbytes(last)
    for cut in (1, 100, tensor_nbytes(last) // 2):  # inside the last super-block, mid-tensor
        m.add(f"kq-trunc-{cut}", data[:end - cut], needles=(last_name,))
    for name in ("blk.0.ffn_up.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight", "output.weight"):
        t, nm = ts[name], (name,)
        ne0, ne1 = t["ne"]
        # same bytes, rows of 128 (half a super-block): "row length 128 is not a multiple of ... (256)"
        b = bytearray(data)
        struct.pack_into("<QQ", b, t["ne_offs"][0], ne0 // 2, ne1 * 2)
        m.add(f"kq-{name}-half-rows", bytes(b), needles=nm)
        b = bytearray(data)
        struct.pack_into("<QQ", b, t["ne_offs"][0], ne0 + 32, ne1)  # a whole number of 32s, not of 256s
        m.add(f"kq-{name}-row-288", bytes(b), needles=nm)
        for v in (15, 16, 19, 99):  # Q8_K (llama.cpp's activation type), IQ2_XXS, IQ1_S, unknown
            m.put(f"kq-{name}-type-{v}", t["type_off"], "<I", v, needles=nm)
    check(m.cases, tmp_path)


def test_gguf_shapes_disagree_with_metadata(tmp_path):
    """Self-consistent files (written by the gguf package) whose tensors do not fit the metadata."""
    spec = BASE_SPEC
    w0 = tiny_models.random_weights(spec)
    cases = []

    def variant(cid, needles, expect="error", spec_=spec, **changes):
        w = dict(w0)
        for k, v in changes.items():
            k = k.replace("__", ".")
            if v is None:
                del w[k]
            else:
                w[k] = v
        p = tiny_models.write_tiny_gguf(tmp_path / f"{cid}.gguf", spec_, weights=w)
        cases.append(Case(cid, str(p), expect, needles))

    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    d, hid = spec.dim, spec.hidden_dim
    variant("attn_q-rows", ("blk.1.attn_q.weight",), **{"blk__1__attn_q__weight": r(d - 32, d)})
    variant("attn_k-cols", ("blk.0.attn_k.weight",), **{"blk__0__attn_k__weight": r(32, d + 32)})
    variant("attn_v-mha-shape", ("blk.0.attn_v.weight",), **{"blk__0__attn_v__weight": r(d, d)})
    variant("ffn_down-transposed", ("blk.0.ffn_down.weight",), **{"blk__0__ffn_down__weight": r(hid, d)})
    variant("norm-length", ("blk.1.ffn_norm.weight",), **{"blk__1__ffn_norm__weight": r(d + 1)})
    variant("norm-2d", ("output_norm.weight",), **{"output_norm__weight": r(2, d)})
    variant("missing-ffn_up", ("blk.1.ffn_up.weight",), **{"blk__1__ffn_up__weight": None})
    variant("missing-embd", ("token_embd.weight",), **{"token_embd__weight": None})
    n_vocab = w0["token_embd.weight"].shape[0]
    variant("output-vocab", ("output.weight",), **{"output__weight": r(n_vocab - 5, d)})
    # the embedding disagrees with the vocabulary's token count (tokenizer vs model)
    variant("embd-vocab", ("token",), **{"token_embd__weight": r(n_vocab - 13, d),
                                         "output__weight": r(n_vocab - 13, d)})
    qwen = dataclasses.replace(spec, arch="qwen2")
    wq = tiny_models.random_weights(qwen)
    del wq["blk.0.attn_q.bias"]
    p = tiny_models.write_tiny_gguf(tmp_path / "qwen-missing-bias.gguf", qwen, weights=wq)
    cases.append(Case("qwen-missing-bias", str(p), "error", ("blk.0.attn_q.bias",)))
    wq = tiny_models.random_weights(qwen)
    wq["blk.1.attn_k.bias"] = r(7)
    p = tiny_models.write_tiny_gguf(tmp_path / "qwen-bias-length.gguf", qwen, weights=wq)
    cases.append(Case("qwen-bias-length", str(p), "error", ("blk.1.attn_k.bias",)))
    # extra unknown tensor: harmless
    variant("extra-tensor", (), expect="any", **{"blk__0__something__weight": r(4, 32)})
    check(cases, tmp_path)


def test_gguf_alignment_key(tmp_path):
    spec = dataclasses.replace(BASE_SPEC, alignment=64)
    path = tiny_models.write_tiny_gguf(tmp_path / "align.gguf", spec)
    data = path.read_bytes()
    lay = parse_layout(data)
    assert lay["align"] == 64
    m = Mutator(tmp_path, data)
    off = lay["kvs"]["general.alignment"]["val_off"]
    m.add("align-ok", data, expect="any")
    for v in (0, 3, 48, 1 << 31):
        m.put(f"align-{v}", off, "<I", v, needles=("alignment",))
    # alignment 32 instead of 64: tensor offsets (multiples of 64) stay aligned but the data
    # section start moves, so the file describes different bytes: an error or a clean load
    m.put("align-32", off, "<I", 32, expect="any")
    check(m.cases, tmp_path)


def test_gguf_random_header_flips(base_gguf):
    d, data, lay = base_gguf
    m = Mutator(d, data)
    rng = np.random.default_rng(2024)
    end = lay["data_start"]
    for i in range(48):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            # bias towards the fixed header, counts, lengths and tensor infos (where bugs live)
            if rng.random() < 0.5:
                pos = int(rng.choice([rng.integers(0, 24), rng.integers(lay["kvs"]["tokenizer.ggml.merges"]["end"], end)]))
            else:
                pos = int(rng.integers(0, end))
            b[pos] = int(rng.integers(0, 256))
        m.add(f"flip-{i}", bytes(b), expect="any")
    check(m.cases, d)


# ---------------------------------------------------------------------------
# llama2.c


L2C_SPEC = TinySpec(tied=False, context_length=16, seed=5)
L2C_VOCAB = 259 + 5  # <unk>, <s>, </s>, 256 byte pieces, a few pieces


def write_tokenizer_bin(path: Path, n_vocab=L2C_VOCAB):
    """llama2.c tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length, bytes."""
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    pieces += [b" t", b" a", b"he", b" the", b"in"][: n_vocab - len(pieces)]
    out = struct.pack("<i", max(len(p) for p in pieces))
    for i, p in enumerate(pieces):
        out += struct.pack("<fi", -float(i) if i >= 259 else 0.0, len(p)) + p
    path.write_bytes(out)
    return path


def l2c_weights(spec=L2C_SPEC, n_vocab=L2C_VOCAB):
    w = tiny_models.random_weights(spec)
    rng = np.random.default_rng(1)
    w["token_embd.weight"] = rng.standard_normal((n_vocab, spec.dim)).astype(np.float32)
    if not spec.tied:
        w["output.weight"] = rng.standard_normal((n_vocab, spec.dim)).astype(np.float32) / 8
    return w


def write_llama2c_set(d: Path) -> dict:
    tok = write_tokenizer_bin(d / "tok.bin")
    kw = {"tokenizer_path": str(tok)}
    out = {}
    for name, spec in (("v0", L2C_SPEC), ("v0-tied", dataclasses.replace(L2C_SPEC, tied=True)),
                       ("v1", L2C_SPEC), ("v1-tied", dataclasses.replace(L2C_SPEC, tied=True))):
        writer = tiny_models.write_llama2c_v0 if name.startswith("v0") else tiny_models.write_llama2c_v1
        out[name] = (writer(d / f"{name}.bin", spec, weights=l2c_weights(spec)), kw)
    return out


def test_llama2c_bad_files(tmp_path):
    files = write_llama2c_set(tmp_path)
    kw = files["v0"][1]
    cases = []

    def add(cid, data, expect="error", needles=()):
        p = tmp_path / f"{cid}.bin"
        p.write_bytes(data)
        cases.append(Case(cid, str(p), expect, tuple(needles), kw))

    v0 = files["v0"][0].read_bytes()
    v1 = files["v1"][0].read_bytes()
    v0t = files["v0-tied"][0].read_bytes()
    for off in (0, 3, 4, 12, 27, 28, 29, 1000, len(v0) // 2, len(v0) - 4 * L2C_SPEC.dim * L2C_VOCAB, len(v0) - 1):
        add(f"v0-trunc-{off}", v0[:off])
    add("v0-tied-trunc", v0t[: len(v0t) - 100])
    for off in (8, 100, 255, 256, 257, len(v1) // 2, len(v1) - 1):
        add(f"v1-trunc-{off}", v1[:off])
        p = tmp_path / f"v1-trunc-{off}.bin"  # and read into memory instead of mapped
        cases.append(Case(f"v1-trunc-{off}-no-mmap", str(p), "error", (), {**kw, "use_mmap": False}))
    fields = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"]
    bad_values = {
        "dim": (0, -64, 1 << 30, 63, 2**31 - 1),
        "hidden_dim": (0, -1, 1 << 30),
        "n_layers": (0, -1, 100000),
        "n_heads": (0, -4, 3, 128, 1 << 30),
        "n_kv_heads": (0, 3, 8, -2),
        "vocab_size": (0, 1 << 30, -(2**31), 100),
        "seq_len": (0, -1, 1 << 30),
    }
    for fi, fname in enumerate(fields):
        for v in bad_values[fname]:
            b = bytearray(v0)
            struct.pack_into("<i", b, 4 * fi, v)
            add(f"v0-{fname}-{v}", bytes(b))
            b = bytearray(v1)
            struct.pack_into("<i", b, 8 + 4 * fi, v)
            add(f"v1-{fname}-{v}", bytes(b))
    for v in (0, 3, 99, -1):
        b = bytearray(v1)
        struct.pack_into("<i", b, 4, v)
        add(f"v1-version-{v}", bytes(b), needles=("version",) if v != 0 else ())
    b = bytearray(v1)
    struct.pack_into("<i", b, 4, 2)  # claims Q8_0 (v2) but holds fp32 weights; group size read from padding (0)
    add("v1-as-v2", bytes(b))
    b = bytearray(v1)
    b[36] = 7  # shared-classifier flag neither 0 nor 1
    add("v1-shared-7", bytes(b), expect="any")
    add("v0-extra-bytes", v0 + b"\0" * 100, expect="any")
    add("v1-tied-extra-bytes", files["v1-tied"][0].read_bytes() + b"\0" * 64, expect="any")
    add("empty", b"")
    add("text-file", b"hello, I am not a model\n" * 10)
    check(cases, tmp_path)
