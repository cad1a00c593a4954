"""Directories that appear whole or not at all: written under a temporary name, then renamed into place."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

STAGING_PREFIX = ".staging-"


def write_atomically(output_dir: str | Path, name: str, write: Callable[[Path], None]) -> Path:
    """Call `write(staging_dir)`, then rename the staging directory to `output_dir/name` (replacing it).

    If `write` raises, the staging directory is removed and nothing under `name` changes.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}.", dir=output_dir))
    try:
        write(staging)
        final = output_dir / name
        if final.exists():
            retired = output_dir / f"{STAGING_PREFIX}{name}.old"
            shutil.rmtree(retired, ignore_errors=True)
            final.rename(retired)
            staging.rename(final)
            shutil.rmtree(retired)
        else:
            staging.rename(final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
