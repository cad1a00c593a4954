"""What the planner needs to know of a model, kept as JSON so that planning a known model imports no torch.

A `ModelRecord` holds the architecture facts the formulas read (model type, context length, checkpoint dtype,
peft's default LoRA targets) and the layer inventory of the model with each head (causal LM, sequence
classification). Records come from, in order:

1. `stackrlhf/planner/bundled/records/`: the bundled models (`bundled_models()`, and the tiny model), written by
   `python -m stackrlhf.planner.records` and checked against a fresh count by the tests;
2. the user cache (`$STACKRLHF_CACHE/planner/`), for a local model directory, keyed by its config.json's hash;
3. a fresh count: the model class on the meta device (torch and transformers), stored in the cache when it can be.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from stackrlhf.models.bundled import TINY_MODEL, cache_root
from stackrlhf.planner.inventory import ModelHead, ModelInventory

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
"""Bumped whenever what a record holds, or how it is counted, changes."""

RECORDS_DIR = Path(__file__).parent / "bundled" / "records"
HEADS: tuple[ModelHead, ...] = ("causal_lm", "sequence_classification")


@dataclass(frozen=True)
class ModelRecord:
    """A model as the planner sees it.

    Attributes:
        model_type: the config's `model_type` (`llama`, `gpt_neox`, ...).
        context_length: the longest sequence it takes (`max_position_embeddings`), None when the config does not say.
        checkpoint_dtype: the dtype its config says the weights were saved in (`float16`, ...; `float32` if unsaid).
        default_lora_targets: the modules peft targets when none are named, None when peft has no default.
        inventories: the layer inventory with each head (`causal_lm`, `sequence_classification`).
    """

    model_type: str
    context_length: int | None
    checkpoint_dtype: str
    default_lora_targets: tuple[str, ...] | None
    inventories: dict[str, ModelInventory]

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict that `from_json` reads back."""
        return {
            "record_version": RECORD_VERSION,
            "model_type": self.model_type,
            "context_length": self.context_length,
            "checkpoint_dtype": self.checkpoint_dtype,
            "default_lora_targets": list(self.default_lora_targets) if self.default_lora_targets else None,
            "inventories": {head: inventory.to_json() for head, inventory in self.inventories.items()},
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ModelRecord:
        """Read what `to_json` wrote."""
        targets = values["default_lora_targets"]
        return cls(
            model_type=values["model_type"],
            context_length=values["context_length"],
            checkpoint_dtype=values["checkpoint_dtype"],
            default_lora_targets=tuple(targets) if targets else None,
            inventories={head: ModelInventory.from_json(inv) for head, inv in values["inventories"].items()},
        )


def model_record(model: str) -> ModelRecord:
    """The record of `model`: a bundled name (case-insensitive), a local directory, or a Hub name.

    Raises:
        ConfigError: a model that is neither bundled nor loadable (see `stackrlhf.planner.configs.load_model_config`).
    """
    bundled = {path.stem.replace("--", "/").lower(): path for path in RECORDS_DIR.glob("*.json")}
    if model.lower() in bundled:
        return _read_bundled(bundled[model.lower()])
    config_file = Path(model, "config.json")
    if config_file.is_file():
        return _local_record(str(config_file.resolve()), hashlib.sha256(config_file.read_bytes()).hexdigest())
    return _hub_record(model)


@lru_cache(maxsize=32)
def _read_bundled(path: Path) -> ModelRecord:
    return _read(path)


@lru_cache(maxsize=32)
def _hub_record(model: str) -> ModelRecord:
    return build_record(model)


@lru_cache(maxsize=32)
def _local_record(config_file: str, config_sha256: str) -> ModelRecord:
    """The record of the model whose config is `config_file` (absolute), from the user cache or counted afresh."""
    versions = f"v{RECORD_VERSION}-transformers{importlib.metadata.version('transformers')}"
    cached = cache_root() / "planner" / f"{config_sha256[:16]}-{versions}.json"
    if cached.is_file():
        try:
            return _read(cached)
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("Ignoring the unreadable planner cache entry %s (%s); counting again.", cached, err)
    record = build_record(str(Path(config_file).parent))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_suffix(f".tmp-{os.getpid()}")
        temporary.write_text(json.dumps(record.to_json()))
        temporary.replace(cached)
    except OSError as err:  # a read-only cache only costs the next plan its speed
        logger.debug("Could not cache the planner record of %s in %s: %s", config_file, cached, err)
    return record


def build_record(model: str) -> ModelRecord:
    """Count `model` afresh: its config (bundled, local or Hub) and its model class on the meta device.

    Raises:
        ConfigError: as `stackrlhf.planner.configs.load_model_config`.
    """
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    from stackrlhf.planner.configs import load_model_config
    from stackrlhf.planner.counting import inspect_model

    config = load_model_config(model)
    context = getattr(config, "max_position_embeddings", None)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(config.model_type)
    return ModelRecord(
        model_type=config.model_type,
        context_length=context if isinstance(context, int) and context > 0 else None,
        checkpoint_dtype=str(dtype).removeprefix("torch.") if dtype is not None else "float32",
        default_lora_targets=tuple(targets) if targets else None,
        inventories={head: inspect_model(load_model_config(model), head) for head in HEADS},
    )


def _read(path: Path) -> ModelRecord:
    values = json.loads(path.read_text())
    if values.get("record_version") != RECORD_VERSION:
        raise ValueError(f"record version {values.get('record_version')}, expected {RECORD_VERSION}")
    return ModelRecord.from_json(values)


def bundled_record_names() -> list[str]:
    """The models whose records ship with the package: every bundled config, and the bundled tiny model."""
    from stackrlhf.planner.configs import bundled_models

    return [*bundled_models(), TINY_MODEL]


def write_bundled_records() -> list[Path]:
    """(Re)write `stackrlhf/planner/bundled/records/` from fresh counts; returns the files written."""
    RECORDS_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for name in bundled_record_names():
        path = RECORDS_DIR / f"{name.replace('/', '--')}.json"
        path.write_text(json.dumps(build_record(name).to_json(), separators=(",", ":")) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_bundled_records():
        print(written_path)
