"""The bundled tiny model by name: `TINY_MODEL` selects stories260K (Karpathy's tinyllamas, MIT) wherever a
`model_name_or_path` is accepted, and the cache directory its conversion (and the offline stages) live in.

This module imports nothing heavy: the planner reads `TINY_MODEL` without torch. The converter
(`stackrlhf.models.llama2c`) is imported only when the model is first needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from stackrlhf.errors import ConfigError

TINY_MODEL = "stackrlhf/stories260K"
"""The name that selects the bundled stories260K model wherever a `model_name_or_path` is accepted."""

BUNDLED_DIR = Path(__file__).parent / "bundled" / "stories260K"
BUNDLED_CHECKPOINT = BUNDLED_DIR / "stories260K.bin"
BUNDLED_TOKENIZER = BUNDLED_DIR / "tok512.bin"


def tiny_model_path() -> Path:
    """Directory of the bundled stories260K model converted to transformers (built on first use, then cached)."""
    from stackrlhf.models.llama2c import convert_llama2c_cached

    return convert_llama2c_cached(BUNDLED_CHECKPOINT, BUNDLED_TOKENIZER)


def resolve_model_name_or_path(name: str) -> str:
    """Map `TINY_MODEL` to the converted bundled model's directory; return any other name unchanged."""
    return str(tiny_model_path()) if name == TINY_MODEL else name


def cache_root() -> Path:
    """stackrlhf's cache directory: `$STACKRLHF_CACHE`, else `$XDG_CACHE_HOME/stackrlhf`, else ~/.cache/stackrlhf.

    Raises:
        ConfigError: the directory, or the nearest of its parents that exists, is not a directory (a file).
    """
    if os.environ.get("STACKRLHF_CACHE"):
        root, source = Path(os.environ["STACKRLHF_CACHE"]).expanduser(), "STACKRLHF_CACHE"
    elif os.environ.get("XDG_CACHE_HOME"):
        root, source = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "stackrlhf", "XDG_CACHE_HOME"
    else:
        root, source = Path.home() / ".cache" / "stackrlhf", "HOME"
    existing = next((path for path in (root, *root.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(
            f"the stackrlhf cache directory {root} (from ${source}) cannot be created: {existing} is not a "
            "directory; point STACKRLHF_CACHE at a directory."
        )
    return root
