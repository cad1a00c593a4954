"""Shared fixtures: quiet, offline, deterministic runs on the bundled tiny model."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The bundled stories260K converted to transformers format (built once into the user cache)."""
    from stackrlhf.models.bundled import tiny_model_path

    return tiny_model_path()
