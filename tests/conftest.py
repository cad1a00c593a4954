"""Shared fixtures: quiet, offline, deterministic runs on the bundled tiny model, and small reward models on it."""

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(autouse=True)
def fresh_skipped_rows_report():
    """Each test is its own run: the once-per-run report of skipped data rows starts empty."""
    loading = sys.modules.get("stackrlhf.data.loading")
    if loading is not None:
        loading._REPORTED.clear()


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The bundled stories260K converted to transformers format (built once into the user cache)."""
    from stackrlhf.models.bundled import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="session")
def reward_dirs(tmp_path_factory, tiny_model_dir):
    """A reward LoRA adapter (with its score head) on the tiny base, the same merged into a full model, and a
    full model whose score head returns NaN."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("rewards")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    base = LlamaForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    base.config.pad_token_id = tokenizer.pad_token_id  # as the reward recipe sets it
    config = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    model.save_pretrained(root / "adapter")
    merged = model.merge_and_unload()
    for name in ("merged", "nan"):
        if name == "nan":
            merged.score.weight.data.fill_(float("nan"))
        merged.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {name: root / name for name in ("adapter", "merged", "nan")}
