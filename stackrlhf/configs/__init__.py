"""The shipped configs, as package data: `<model>/<stage>/config_<variant>.yaml` (the alignment-handbook layout) and
`accelerate/<name>.yaml`.

A config is named by its path or by a short name relative to this folder: `llama-2-7b/ppo` (the folder's only config),
`llama-2-7b/ppo/stackllama` (its `config_stackllama.yaml`) or `accelerate/deepspeed_zero2`. `tiny/<recipe>` holds the
offline defaults a recipe run with no arguments uses. A new model family is a new folder. Reading a config imports
nothing but PyYAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stackrlhf.errors import ConfigError, one_line

CONFIG_DIR = Path(__file__).parent


def shipped_configs() -> dict[str, Path]:
    """Every shipped config by its full short name (`llama-2-7b/ppo/stackllama`, `accelerate/single_gpu`)."""
    found = {}
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        parts = path.relative_to(CONFIG_DIR).with_suffix("").parts
        name = parts[-1].removeprefix("config_")
        found["/".join((*parts[:-1], name))] = path
    return found


def resolve_config(name: str | Path) -> Path:
    """The file a config name means: an existing path as given, else a shipped config's short name.

    Raises:
        ConfigError: neither a file nor a shipped config, or a folder with several configs (the choices are named).
    """
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config {str(name)!r} is a directory, not a YAML file.")
    key = str(name).removesuffix(".yaml").strip("/")
    configs = shipped_configs()
    if key in configs:
        return configs[key]
    under = {short: found for short, found in configs.items() if short.startswith(key + "/")}
    if len(under) == 1:
        return next(iter(under.values()))
    if under:
        raise ConfigError(f"config {key!r} has several variants: {', '.join(sorted(under))}; name one.")
    raise ConfigError(
        f"config file {str(name)!r} does not exist and is not a shipped config (`stackrlhf configs` lists them)."
    )


def read_config(name: str | Path) -> dict[str, Any]:
    """The option values of a config (a YAML mapping), by path or short name.

    Raises:
        ConfigError: a missing or unreadable file, invalid YAML, or a document that is not a mapping.
    """
    path = resolve_config(name)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r}: cannot read it ({err.strerror}).") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {err.start}).") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {one_line(err)}") from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a YAML mapping of option: value, not {type(values).__name__}."
        )
    return values


def offline_config(recipe: str) -> str:
    """The short name of the offline defaults of `recipe` (`tiny/<recipe>`)."""
    return f"tiny/{recipe}"
