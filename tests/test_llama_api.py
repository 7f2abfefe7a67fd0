"""The Llama object's own contract: cache bookkeeping, batching, threads, errors, memory.

These compare pyllama with itself only where the claim is an identity of the
engine (a batch split in two must give the logits of the whole batch; threads
must not change results); correctness of the numbers themselves is checked
against the independent numpy reference in test_forward.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyllama
from pyllama import ContextOverflowError, Llama, ModelError


def fresh(path, **kw):
    kw.setdefault("n_ctx", 64)
    kw.setdefault("n_threads", 2)
    return Llama(model_path=path, **kw)


TOKENS = [5, 17, 3, 42, 9, 28, 11, 7, 30, 2, 19, 23]


def test_shape_and_metadata(tiny_path):
    llm = fresh(tiny_path)
    assert llm.n_ctx() == 64
    from pyllama.gguf import read_metadata

    assert llm.n_vocab() == llm.config["n_vocab"] == len(read_metadata(tiny_path)["tokenizer.ggml.tokens"])
    assert llm.metadata["general.architecture"] == "llama"
    # like llama-cpp-python's metadata: scalars only, the vocabulary arrays are not kept
    assert "tokenizer.ggml.tokens" not in llm.metadata
    assert not any(isinstance(v, (list, tuple)) for v in llm.metadata.values())
    assert llm.logits.shape == (llm.n_vocab(),)


@pytest.mark.parametrize("bad", [2, "q8_0", "F64", True, 1.0, [1]])
def test_bad_kv_cache_type_is_refused(tiny_path, bad):
    with pytest.raises(ValueError, match="type_k"):
        Llama(model_path=tiny_path, n_ctx=16, type_k=bad)
    with pytest.raises(ValueError, match="type_v"):
        Llama(model_path=tiny_path, n_ctx=16, type_v=bad)


def test_kv_cache_types_agree(tiny_path):
    """F16 and F32 caches (GGML ids or names, mixed) give logits within half rounding of each other."""
    out = {}
    for tk, tv in [(0, 0), ("f16", "F16"), (1, "f32"), (None, None)]:
        llm = fresh(tiny_path, type_k=tk, type_v=tv)
        llm.eval(TOKENS)
        out[tk, tv] = np.array(llm.logits, dtype=np.float64)
    f32 = out[0, 0]
    assert np.array_equal(out[None, None], out["f16", "F16"])  # F16 is the default
    for key, lg in out.items():
        err = np.abs(lg - f32).max() / np.abs(f32).max()
        assert err < 4e-3, (key, err)


def test_incremental_eval_equals_one_batch(tiny_path):
    a = fresh(tiny_path)
    a.eval(TOKENS)
    b = fresh(tiny_path)
    for t in TOKENS:
        b.eval([t])
    assert a.n_tokens == b.n_tokens == len(TOKENS)
    assert a.input_ids == b.input_ids == TOKENS
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)


def test_n_batch_chunks_and_logits_all(tiny_path):
    a = fresh(tiny_path, n_batch=512)
    a.eval(TOKENS, logits_all=True)
    b = fresh(tiny_path, n_batch=5)  # 12 tokens -> chunks of 5, 5, 2
    b.eval(TOKENS, logits_all=True)
    assert a.eval_logits.shape == (len(TOKENS), a.n_vocab())
    np.testing.assert_allclose(a.eval_logits, b.eval_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.eval_logits[-1], a.logits)
    # the logits of position i only depend on tokens up to i
    c = fresh(tiny_path)
    c.eval(TOKENS[:4])
    np.testing.assert_allclose(c.logits, a.eval_logits[3], rtol=1e-5, atol=1e-5)


def test_threads_do_not_change_results(tiny_path):
    one = fresh(tiny_path, n_threads=1)
    two = fresh(tiny_path, n_threads=2)
    one.eval(TOKENS)
    two.eval(TOKENS)
    # each output row is computed by one thread with the same arithmetic
    np.testing.assert_array_equal(one.logits, two.logits)


def test_reset_and_truncate_reuse_the_cache(tiny_path):
    ref = fresh(tiny_path)
    ref.eval(TOKENS)
    llm = fresh(tiny_path)
    llm.eval([1, 2, 3, 4, 5])
    llm.reset()
    assert llm.n_tokens == 0 and llm.input_ids == []
    llm.eval(TOKENS[:6] + [99 % llm.n_vocab()] * 3)
    llm.truncate(6)
    assert llm.input_ids == TOKENS[:6]
    llm.eval(TOKENS[6:])
    np.testing.assert_allclose(llm.logits, ref.logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        llm.truncate(llm.n_tokens + 1)


@pytest.mark.parametrize("kv", ["f32", "f16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_context_shift_matches_fresh_evaluation(tiny_model_factory, arch, kv):
    """In a one-layer model the cached keys/values depend on each token alone (not on the
    tokens it attended to), so after a shift the cache must equal a fresh evaluation of the
    kept tokens: only the re-rotation of keys to their new positions is under test."""
    tiny_path = str(tiny_model_factory(n_layers=1, arch=arch))
    keep, discard, rest = TOKENS[:2], TOKENS[2:6], TOKENS[6:10]
    shifted = fresh(tiny_path, type_k=kv, type_v=kv)
    shifted.eval(keep + discard + rest)
    shifted.shift_context(n_keep=len(keep), n_discard=len(discard))
    assert shifted.input_ids == keep + rest and shifted.n_tokens == len(keep + rest)
    shifted.eval([TOKENS[10]])
    ref = fresh(tiny_path, type_k=kv, type_v=kv)
    ref.eval(keep + rest + [TOKENS[10]])
    # keys were re-rotated in float32: equal up to rounding, not bit for bit; an F16 cache
    # rounds a shifted key to half twice (stored, then re-rotated), 2^-11 relative each time
    tol = 1e-4 if kv == "f32" else 1e-3 * float(np.abs(ref.logits).max())
    np.testing.assert_allclose(shifted.logits, ref.logits, rtol=1e-4, atol=tol)


def test_context_overflow_is_a_clear_error(tiny_path):
    llm = fresh(tiny_path, n_ctx=8)
    llm.eval(TOKENS[:6])
    with pytest.raises(ContextOverflowError, match="n_ctx = 8"):
        llm.eval(TOKENS[:3])
    assert llm.n_tokens == 6  # nothing was half-applied
    llm.eval(TOKENS[:2])
    assert llm.n_tokens == 8


def test_bad_arguments(tiny_path, tmp_path):
    with pytest.raises(ValueError, match="n_ctx"):
        fresh(tiny_path, n_ctx=-1)
    with pytest.raises(ValueError, match="n_batch"):
        fresh(tiny_path, n_batch=0)
    with pytest.raises(ValueError, match="n_threads"):
        fresh(tiny_path, n_threads=0)
    with pytest.raises(ValueError, match="context_overflow"):
        fresh(tiny_path, context_overflow="wrap")
    llm = fresh(tiny_path)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.eval([llm.n_vocab()])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.eval([-1])
    with pytest.raises(FileNotFoundError):
        Llama(model_path=str(tmp_path / "nope.gguf"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError):
        Llama(model_path=str(junk))


def test_n_ctx_zero_means_the_models_own(tiny_path):
    llm = fresh(tiny_path, n_ctx=0)
    assert llm.n_ctx() == llm.config["n_ctx_train"]


@pytest.mark.perf
@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("repack", ["0", "1"])
def test_weights_stay_in_the_file_mapping(default_model_path, repack):
    """Loading maps the file: resident memory grows by far less than the file until weights are
    read, except for the Q4 matrices (on AVX-512 Q8_0 too) the loader repacks in place
    (PYLLAMA_REPACK=0: none)."""
    code = textwrap.dedent(
        f"""
        import os, sys
        from pyllama._core import ffi, lib
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        before = rss()
        m = lib.pl_load_gguf({os.fsencode(default_model_path)!r}, 0)
        assert m != ffi.NULL, ffi.string(lib.pl_last_error())
        avx512 = lib.pl_current_isa() == lib.PL_ISA_AVX512
        after = rss()
        info = ffi.new("pl_tensor_info *")
        q4 = 0
        for i in range(lib.pl_model_n_tensors(m)):
            lib.pl_model_tensor(m, i, info)
            name = ffi.string(info.name).decode()
            if info.type in (2, 3) and name.startswith("blk."):
                q4 += info.nbytes
            elif info.type == 8 and info.n_dims == 2 and info.ne[1] % 16 == 0 and avx512:
                q4 += info.nbytes  # Q8_0 matrices: regrouped into 16-row panels on AVX-512
        print(after - before, lib.pl_model_file_size(m), q4)
        """
    )
    env = dict(os.environ, PYLLAMA_REPACK=repack)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    grown, size, q4 = map(int, out.stdout.split())
    assert size > 90_000_000 and q4 > 50_000_000  # the default model: Q4_1 layers, Q8_0 embedding
    allowed = size * 0.1 + (q4 if repack == "1" else 0)
    assert grown < allowed, f"loading made {grown} bytes resident for a {size}-byte file (Q4 layers: {q4})"
    if repack == "1":
        assert grown > q4 * 0.9, "the Q4 layers were expected to be repacked (written) at load"


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "absent"
    return text.split("[")[1].split("]")[0] if "[" in text else "absent"


@pytest.mark.perf
@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_no_mmap_reads_the_weights_onto_huge_pages_read_only(default_model_path):
    """use_mmap=False: the weights are this process's anonymous memory, on transparent huge
    pages where the kernel has them (the point of the option), and read-only after loading
    (a stray write through a tensor pointer faults instead of corrupting the weights)."""
    code = textwrap.dedent(
        f"""
        import ctypes, sys
        from pyllama import Llama
        from pyllama._core import ffi, lib
        llm = Llama(model_path={default_model_path!r}, n_ctx=16, use_mmap=False)
        llm.eval([1, 2])
        base = int(ffi.cast("uintptr_t", lib.pl_model_file_data(llm._model)))
        size = lib.pl_model_file_size(llm._model)
        anon = huge = 0
        region = None
        for line in open("/proc/self/smaps"):
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and all(c in "0123456789abcdef-" for c in head[0]):
                lo, hi = (int(v, 16) for v in head[0].split("-"))
                region = (lo <= base < hi) and len(head) == 5  # anonymous: no path
            elif region and head[0] == "Anonymous:":
                anon += int(head[1]) * 1024
            elif region and head[0] == "AnonHugePages:":
                huge += int(head[1]) * 1024
        print(size, anon, huge, flush=True)
        info = ffi.new("pl_tensor_info *")
        lib.pl_model_tensor(llm._model, lib.pl_model_n_tensors(llm._model) - 1, info)
        ctypes.memset(int(ffi.cast("uintptr_t", info.data)), 0, 1)  # must fault
        print("written", flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip(), out.stderr
    size, anon, huge = map(int, out.stdout.split()[:3])
    assert anon > 0.95 * size, f"{anon} anonymous bytes for a {size}-byte file"
    if _thp_mode() in ("always", "madvise"):
        assert huge > 0.8 * size, f"only {huge} of {size} bytes on huge pages (THP {_thp_mode()})"
    assert "written" not in out.stdout and out.returncode == -11, (out.returncode, out.stdout, out.stderr[-500:])


@pytest.mark.perf
@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_mapped_file_read_from_disk_comes_in_huge_folios(default_model_path, tmp_path):
    """A file not in the page cache yet, read through the mapping the C core makes, is held
    in 2 MB folios and mapped with 2 MB entries (the core asks with MADV_HUGEPAGE). A Python
    mapping of another cold copy, given the same advice, shows what the kernel does for a
    file: where it gives none (older kernels, THP off, a filesystem without large folios)
    the test is skipped, else the core's mapping must get at least half the probe's share."""
    import shutil

    copies = []
    for name in ("probe.gguf", "model.gguf"):
        dst = tmp_path / name
        shutil.copyfile(default_model_path, dst)
        with open(dst, "rb+") as f:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        copies.append(os.path.realpath(dst))  # as /proc/self/smaps names it
    code = textwrap.dedent(
        f"""
        import mmap, os, sys
        os.environ["PYLLAMA_REPACK"] = "0"  # no Q4 rewrite: those pages would become private copies
        from pyllama import Llama

        def pmd_mapped(path):
            total, region = 0, False
            for line in open("/proc/self/smaps"):
                head = line.split()
                if "-" in head[0] and len(head) >= 5 and all(c in "0123456789abcdef-" for c in head[0]):
                    region = line.rstrip(chr(10)).endswith(" " + path)
                elif region and head[0] == "FilePmdMapped:":
                    total += int(head[1]) * 1024
            return total

        probe, model = {copies!r}
        with open(probe, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except (AttributeError, OSError):  # a kernel without transparent huge pages
            print("no-thp")
            sys.exit(0)
        sum(m[i] for i in range(0, len(m), 4096))
        llm = Llama(model_path=model, n_ctx=16)
        llm.eval([1, 2])
        print(pmd_mapped(probe), pmd_mapped(model), os.path.getsize(model), flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-2000:]
    if out.stdout.strip() == "no-thp":
        pytest.skip("this kernel has no transparent huge pages")
    probe, got, size = map(int, out.stdout.split())
    if probe == 0:
        pytest.skip(f"this kernel holds no file in 2 MB folios for a mapping that asks (THP {_thp_mode()})")
    assert got >= 0.5 * probe, f"{got} of {size} bytes mapped with 2 MB entries, a Python mapping got {probe}"


@pytest.mark.slow
def test_default_model_gives_the_same_logits_with_and_without_mmap(default_model_path):
    tokens = [1, 504, 3458, 314, 4649, 314, 2]
    logits = []
    for use_mmap in (True, False):
        llm = Llama(model_path=default_model_path, n_ctx=32, use_mmap=use_mmap)
        assert llm.use_mmap is use_mmap
        llm.eval(tokens, logits_all=True)
        logits.append(np.array(llm.eval_logits))
        llm.close()
    assert np.array_equal(logits[0], logits[1])


@pytest.mark.slow
def test_default_model_loads_by_name(default_model_path):
    llm = Llama(model_path=default_model_path, n_ctx=32)
    cfg = llm.config
    assert (cfg["n_layers"], cfg["dim"], cfg["hidden_dim"], cfg["n_heads"], cfg["n_kv_heads"]) == (30, 576, 1536, 9, 3)
    assert cfg["rope_base"] == 100000.0 and cfg["tied_output"] == 1
    assert llm.metadata["tokenizer.ggml.model"] == "gpt2"
    assert pyllama.__version__


def test_long_batches_are_sliced_without_changing_results(tiny_model_factory):
    """The C core runs a long prompt in slices of 128 tokens (PL_MAX_UBATCH in forward.h):
    slice boundaries must not show in the logits."""
    path = str(tiny_model_factory(context_length=512))
    tokens = [int(t) for t in np.random.default_rng(5).integers(0, 200, 300)]
    whole = fresh(path, n_ctx=512, n_batch=512)
    whole.eval(tokens, logits_all=True)
    pieces = fresh(path, n_ctx=512, n_batch=512)
    for start in range(0, 300, 50):  # boundaries that are not multiples of 128
        pieces.eval(tokens[start:start + 50], logits_all=True)
        np.testing.assert_allclose(pieces.eval_logits, whole.eval_logits[start:start + 50], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pieces.logits, whole.logits, rtol=1e-5, atol=1e-5)
    last_only = fresh(path, n_ctx=512, n_batch=512)
    last_only.eval(tokens)
    np.testing.assert_allclose(last_only.logits, whole.logits, rtol=1e-5, atol=1e-5)


def test_closed_model_raises_instead_of_crashing(tiny_path):
    llm = fresh(tiny_path)
    views = llm.tensors()
    expected = {t["name"]: t["data"].copy() for t in views}
    llm.close()
    for t in views:  # views of the file stay readable after close
        np.testing.assert_array_equal(t["data"], expected[t["name"]])
    with pytest.raises(pyllama.PyllamaError, match="closed"):
        llm.eval([1])
    with pytest.raises(pyllama.PyllamaError, match="closed"):
        llm.shift_context(0, 1)
    with pytest.raises(pyllama.PyllamaError, match="closed"):
        llm("hello", max_tokens=2)


@pytest.mark.parametrize("wtype", ["Q4_0", "Q4_1"])
def test_repacked_q4_gives_the_file_layouts_logits(tiny_model_factory, monkeypatch, wtype):
    """The Q4 matrices regrouped at load (PYLLAMA_REPACK, default on) compute what the file's
    layout does: the same integer sums, only the float summation order differs. The prompt batch
    (the tile kernels) agrees to 1e-4 of the logits' spread; one token at a time it may differ more,
    because on AVX-512 the regrouped rows take the tile's summation order (batch invariance) while
    the file layout's rows keep their own, and the difference grows over the layers."""
    path = str(tiny_model_factory(wtype=wtype, tied=False))
    logits = {}
    for repack in ("0", "1"):
        monkeypatch.setenv("PYLLAMA_REPACK", repack)
        llm = fresh(path)
        llm.eval(TOKENS[:6], logits_all=True)  # a batch: the tile kernels
        rows = [np.array(llm.eval_logits)]
        for t in TOKENS[6:]:  # one token at a time: the rows kernels
            llm.eval([t])
            rows.append(llm.logits[None, :].copy())
        logits[repack] = np.concatenate(rows)
        llm.close()
    spread = float(np.ptp(logits["0"]))
    np.testing.assert_allclose(logits["1"][:6], logits["0"][:6], rtol=0, atol=1e-4 * spread)
    np.testing.assert_allclose(logits["1"][6:], logits["0"][6:], rtol=0, atol=1e-2 * spread)


@pytest.mark.parametrize("use_mmap", [True, False])
@pytest.mark.parametrize("wtype", ["F32", "Q4_0", "Q4_1"])
def test_tensor_views_match_the_gguf_package(tiny_model_factory, wtype, use_mmap):
    """tensors() gives the file's bytes and types, also for the Q4 matrices the loader repacks."""
    import gguf

    path = str(tiny_model_factory(wtype=wtype, tied=False))
    reader = gguf.GGUFReader(path)
    ref = {t.name: (np.asarray(t.data).view(np.uint8).reshape(-1), int(t.tensor_type)) for t in reader.tensors}
    llm = fresh(path, use_mmap=use_mmap)
    for t in llm.tensors():
        data, ttype = ref[t["name"]]
        np.testing.assert_array_equal(t["data"], data, err_msg=t["name"])
        if t["type"] in (2, 3) or ttype in (2, 3):
            assert t["type"] == ttype, t["name"]


def test_bad_shift_and_thread_arguments(tiny_path):
    llm = fresh(tiny_path)
    llm.eval(TOKENS[:5])
    for keep, discard in [(2**31 - 1, 1), (-1, 1), (0, 0), (3, 3), (0, 6)]:
        with pytest.raises(ValueError):
            llm.shift_context(keep, discard)
    assert llm.n_tokens == 5
    with pytest.raises(ValueError, match="n_threads"):
        llm.n_threads = 0
    with pytest.raises(ValueError, match="n_ctx"):
        fresh(tiny_path, n_ctx=2**25)


def test_c_kv_shift_rejects_overflowing_arguments(tiny_path):
    from pyllama._core import lib

    llm = fresh(tiny_path)
    llm.eval(TOKENS[:5])
    assert lib.pl_kv_shift(llm._ctx, 5, 2**31 - 1, 1) == -1  # n_keep + n_discard would overflow
    assert lib.pl_kv_shift(llm._ctx, 5, 1, 2**31 - 1) == -1
    assert lib.pl_kv_shift(llm._ctx, -1, 0, 1) == -1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads signal masks from /proc")
def test_worker_threads_leave_signals_to_the_caller(tiny_path):
    """Ctrl-C must reach the thread that runs Python: the kernel gives a process-directed
    signal to any thread not blocking it, and one taken by a worker thread only sets a flag
    that a main thread waiting in input() never sees. After a 4-thread completion (the
    forward pass's OpenMP team) in a fresh interpreter that imported pyllama first, every
    thread but the main one blocks SIGINT and SIGTERM: the OpenMP workers and numpy's BLAS
    pool alike. The OMP_* variables that could shrink the team are removed."""
    script = textwrap.dedent(f"""
        import os, threading
        from pyllama import Llama
        llm = Llama(model_path={str(tiny_path)!r}, n_ctx=64, n_threads=4, verbose=False)
        out = llm.create_completion([1, 2, 3], max_tokens=4, temperature=0.8)
        main = threading.get_native_id()
        rows = []
        for tid in sorted(os.listdir("/proc/self/task")):
            status = open(f"/proc/self/task/{{tid}}/status").read()
            blocked = int(next(l for l in status.splitlines() if l.startswith("SigBlk")).split()[1], 16)
            rows.append((int(tid) == main, bool(blocked & (1 << 1)), bool(blocked & (1 << 14))))
        print(rows)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = eval(proc.stdout.strip())
    workers = [r for r in rows if not r[0]]
    assert len(workers) >= 3, rows  # the team of 4 ran: three workers besides the caller
    assert [r for r in rows if r[0]] == [(True, False, False)], rows  # the caller keeps its mask
    assert all(sigint and sigterm for _, sigint, sigterm in workers), rows
