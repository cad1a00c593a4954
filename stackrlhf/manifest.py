"""File manifests: the size and SHA-256 of every file under a directory, written last, so that a reader can tell a
complete, intact directory (a checkpoint, a cache entry) from a truncated or half-written one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, name: str) -> None:
    """Record the size (bytes) and SHA-256 of every file under `directory` in its file `name`."""
    files = {
        path.relative_to(directory).as_posix(): {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != name
    }
    (directory / name).write_text(json.dumps({"files": files}, indent=1) + "\n")
