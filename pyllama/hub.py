"""Model files from the Hugging Face hub for ``Llama.from_pretrained`` (llama-cpp-python's
entry point): a file name or glob pattern in a repository, resolved and downloaded
through the optional ``huggingface_hub`` package into its cache (or ``local_dir``)."""
from __future__ import annotations

import fnmatch
import os
from typing import Optional, Sequence

from .errors import FetchError


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise FetchError(
            "Llama.from_pretrained needs the `huggingface_hub` package (pip install huggingface_hub); "
            "or download the GGUF file yourself and pass model_path=..."
        ) from None
    return huggingface_hub


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _one(pattern: str, repo_id: str, hits: list) -> str:
    if len(hits) != 1:
        what = f"{len(hits)} files: {', '.join(hits[:8])}" if hits else "no file"
        raise ValueError(f"filename {pattern!r} matches {what} in {repo_id}; name exactly one")
    return hits[0]


def _matches(files, pattern: str) -> list:
    return sorted(f for f in files if fnmatch.fnmatch(f, pattern) or fnmatch.fnmatch(f.rsplit("/", 1)[-1], pattern))


def _cached_match(hub, repo_id: str, pattern: str, cache_dir: Optional[str]) -> Optional[str]:
    """Offline: the one file of an earlier download of the repository that matches, or None."""
    try:
        folder = hub.snapshot_download(repo_id, allow_patterns=[pattern], local_files_only=True,
                                       cache_dir=cache_dir)
    except Exception:
        return None
    files = [os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names]
    hits = _matches(files, pattern)
    return os.path.join(folder, _one(pattern, repo_id, hits)) if hits else None


def _match(hub, repo_id: str, pattern: str, cache_dir: Optional[str]) -> tuple[str, Optional[str]]:
    """The one file of the repository that the glob pattern names: (name, local path when
    the hub is unreachable and the cache has it, else None)."""
    try:
        files = hub.list_repo_files(repo_id)
    except Exception as e:
        cached = _cached_match(hub, repo_id, pattern, cache_dir)
        if cached is not None:
            return os.path.basename(cached), cached
        raise FetchError(f"could not list the files of {repo_id} on the Hugging Face hub to match "
                         f"{pattern!r}: {type(e).__name__}: {e} (offline? pass the exact file name, "
                         "or download it yourself and pass model_path=...)") from e
    return _one(pattern, repo_id, _matches(files, pattern)), None


def download(repo_id: str, filename: str, additional_files: Sequence[str] = (),
             local_dir: Optional[str] = None, cache_dir: Optional[str] = None) -> str:
    """Download ``filename`` (and ``additional_files``, e.g. the other parts of a split
    GGUF) from ``repo_id``; returns the local path of ``filename``. A file already in
    the hub cache is used without the network."""
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"repo_id must be a repository name such as 'owner/name' (got {repo_id!r})")
    if not isinstance(filename, str) or not filename:
        raise ValueError(f"filename must be a file name or glob pattern (got {filename!r})")
    hub = _hub()
    names = [filename, *additional_files]
    resolved = [_match(hub, repo_id, n, cache_dir) if _is_pattern(n) else (n, None) for n in names]
    paths = []
    for name, cached in resolved:
        if cached is not None:
            paths.append(cached)
            continue
        try:
            paths.append(hub.hf_hub_download(repo_id=repo_id, filename=name, local_dir=local_dir,
                                             cache_dir=cache_dir))
        except Exception as e:  # offline, no such repository or file, ...
            raise FetchError(
                f"could not fetch {repo_id}/{name} from the Hugging Face hub: {type(e).__name__}: {e} "
                "(offline? a file fetched before is used from the cache; otherwise download it "
                "yourself and pass model_path=...)") from e
    return paths[0]
