"""Model configs the planner reads: the bundled published configs (offline), a local path, or a Hub name.

`stackrlhf/planner/bundled/` holds the `config.json` of popular base models, written from their published
configs, one file per Hub name with `/` spelled `--` (`meta-llama--Llama-2-7b-hf.json`). Weights are never needed:
the planner only instantiates the architecture on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from stackrlhf.errors import ConfigError, first_line
from stackrlhf.models.bundled import resolve_model_name_or_path

BUNDLED_DIR = Path(__file__).parent / "bundled"


def bundled_models() -> dict[str, Path]:
    """Hub name -> bundled config file, for every config shipped in `stackrlhf/planner/bundled/`."""
    return {path.stem.replace("--", "/"): path for path in sorted(BUNDLED_DIR.glob("*.json"))}


def load_model_config(model: str) -> PretrainedConfig:
    """The transformers config of `model`: a bundled name (case-insensitive), a local directory, or a Hub name.

    Raises:
        ConfigError: a name that is neither bundled nor loadable (offline, a typo); the message lists the bundled
            names.
    """
    bundled = {name.lower(): path for name, path in bundled_models().items()}
    path = bundled.get(model.lower())
    if path is not None:
        values = json.loads(path.read_text())
        return AutoConfig.for_model(values.pop("model_type"), **values)
    try:
        return AutoConfig.from_pretrained(resolve_model_name_or_path(model))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model {model!r}: no bundled config and cannot load one ({first_line(err)}); bundled models: "
            f"{', '.join(bundled_models())}, or give a local directory with a config.json."
        ) from err
