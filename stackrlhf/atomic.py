"""Outputs that appear whole or not at all: written under a temporary name beside their final place, then renamed.

Every temporary name is `.staging-{name}.{pid}.{tag}`: the final name, the writing process's id and a random tag
(`old` for a directory set aside while its replacement moves in). A process killed mid-write leaves such an entry
behind; `remove_stale_staging` deletes the ones whose process is gone, and puts back a directory that was set aside
when its replacement never arrived. Directories and files are created with the default modes, so the umask applies;
files a library writes owner-only (safetensors 0.8 writes 0600 whatever the umask) are given the umask's mode too
(`honour_umask`), so that a shared cluster's group can read a run's outputs as it reads any other file.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
STAGING_PATTERN = re.compile(rf"{re.escape(STAGING_PREFIX)}(?P<name>.+?)(?:\.(?P<pid>\d+))?\.(?P<tag>[^.]+)")
RETIRED_TAG = "old"


def staging_path(directory: Path, name: str, tag: str | None = None) -> Path:
    """A new temporary path in `directory` for `name`, owned by this process (random `tag` unless given)."""
    return directory / f"{STAGING_PREFIX}{name}.{os.getpid()}.{tag or secrets.token_hex(4)}"


def honour_umask(path: str | Path) -> None:
    """Give each file under `path` (or `path` itself) that is more private than the umask allows the mode a new
    file gets (`0o666 & ~umask`), keeping its execute bits. Directories are left as they are."""
    umask = os.umask(0)
    os.umask(umask)
    wanted = 0o666 & ~umask
    path = Path(path)
    files = [path] if path.is_file() else [entry for entry in path.rglob("*") if entry.is_file()]
    for file in files:
        mode = file.stat().st_mode & 0o777
        if mode & wanted != wanted:
            file.chmod(mode | wanted)


def write_atomically(output_dir: str | Path, name: str, write: Callable[[Path], None]) -> Path:
    """Call `write(staging_dir)`, then rename the staging directory to `output_dir/name` (replacing it).

    If `write` raises, the staging directory is removed and nothing under `name` changes.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = staging_path(output_dir, name)
    staging.mkdir()
    try:
        write(staging)
        honour_umask(staging)
        final = output_dir / name
        if final.exists():
            retired = staging_path(output_dir, name, RETIRED_TAG)
            shutil.rmtree(retired, ignore_errors=True)
            final.rename(retired)
            staging.rename(final)
            shutil.rmtree(retired)
        else:
            staging.rename(final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_files_atomically(output_dir: str | Path, write: Callable[[Path], None]) -> list[Path]:
    """Call `write(staging_dir)`, then move each entry it wrote into `output_dir`, replacing one of the same name.

    Each file appears whole; a crash between two moves leaves some entries new and the others as they were. If `write`
    raises, nothing in `output_dir` changes. Returns the final paths.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = staging_path(output_dir, "files")
    staging.mkdir()
    try:
        write(staging)
        honour_umask(staging)
        moved = []
        for entry in sorted(staging.iterdir()):
            final = output_dir / entry.name
            if entry.is_dir() and final.is_dir():
                remove_atomically(final)
            os.replace(entry, final)
            moved.append(final)
        return moved
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Replace the file `path` by `text` in one step: a reader (or a crash) sees the old file or the new one."""
    path = Path(path)
    staging = staging_path(path.parent, path.name)
    try:
        with staging.open("x", encoding="utf-8") as f:
            f.write(text)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def remove_atomically(path: str | Path) -> None:
    """Delete the directory `path`: renamed out of sight first, so that no half-deleted copy is ever seen."""
    path = Path(path)
    doomed = staging_path(path.parent, path.name)
    path.rename(doomed)
    shutil.rmtree(doomed)


def remove_stale_staging(output_dir: str | Path) -> list[str]:
    """Clean up after processes killed while writing in `output_dir`; returns the final names concerned.

    A staging entry whose process is gone (or whose name carries no process id: an older stackrlhf wrote it) is
    deleted; a directory set aside for a replacement that never arrived is renamed back to its name. Entries of live
    processes are left alone.
    """
    cleaned = []
    directory = Path(output_dir)
    if not directory.is_dir():
        return cleaned
    for path in sorted(directory.iterdir()):
        match = STAGING_PATTERN.fullmatch(path.name)
        if match is None or (match["pid"] and _is_alive(int(match["pid"]))):
            continue
        final = directory / match["name"]
        if match["tag"] == RETIRED_TAG and path.is_dir() and not final.exists():
            path.rename(final)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        cleaned.append(match["name"])
    return cleaned


def _is_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # called as a run starts: nothing of this process's is being written
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
