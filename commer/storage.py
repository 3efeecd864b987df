"""Paths that may be local or remote (gs://, memory://, ...): one place that knows the difference.

Everything that reads or writes checkpoints and backbones goes through fsspec, so any
filesystem fsspec knows works; `memory://` stands in for `gs://` in tests.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import fsspec


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs with a protocol other than the local filesystem."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def filesystem(path: str | os.PathLike):
    """The fsspec filesystem and the protocol-stripped path for `path`."""
    fs, _, paths = fsspec.get_fs_token_paths(str(path))
    return fs, paths[0]


def exists(path: str | os.PathLike) -> bool:
    fs, p = filesystem(path)
    return fs.exists(p)


def download_dir(url: str, local_dir: str | os.PathLike) -> Path:
    """Copy a remote folder's files into `local_dir` (created) and return it."""
    fs, root = filesystem(url)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    root = root.rstrip("/")
    files = [f for f in fs.find(root) if not fs.isdir(f)]
    if not files:
        raise FileNotFoundError(f"no files under {url}")
    for remote in files:
        rel = remote[len(root):].lstrip("/")
        target = local_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(target))
    return local_dir


def upload_dir(local_dir: str | os.PathLike, url: str) -> None:
    """Copy every file under `local_dir` to the remote folder `url`."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    local_dir = Path(local_dir)
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{root}/{path.relative_to(local_dir).as_posix()}")


def local_copy(path: str | os.PathLike, cache_root: Path) -> Path:
    """A local folder with the contents of `path`: itself when local, else a fresh download."""
    if not is_remote(path):
        return Path(path)
    cache_root.mkdir(parents=True, exist_ok=True)
    return download_dir(str(path), tempfile.mkdtemp(prefix="download-", dir=cache_root))
