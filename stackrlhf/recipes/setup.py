"""What the recipes on TRL trainers share: before the trainer, check the settings, load data, tokenizer and model
cheapest first, and pick the checkpointing flavour a quantized base needs; after it, save the model without pickle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from peft import LoraConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProgressCallback
from trl import ModelConfig

from stackrlhf.atomic import write_text_atomically
from stackrlhf.data import DataArguments, load_splits
from stackrlhf.models.loading import (
    ModelTask,
    build_peft_config,
    check_model_config,
    check_model_path,
    load_model,
    load_tokenizer,
    skeleton_model,
)
from stackrlhf.recipes.validation import check_trainer_checkpoint
from stackrlhf.trainer.deepspeed import check_settings as check_deepspeed_settings


@dataclass
class TrainingSetup:
    """What a training recipe hands its TRL trainer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    peft_config: LoraConfig | None
    train_pairs: Dataset
    eval_pairs: Dataset


def prepare_training(
    data_args: DataArguments,
    model_args: ModelConfig,
    *,
    task: ModelTask = "causal_lm",
    trust_remote_code: bool = False,
) -> TrainingSetup:
    """Check the settings, then load the data, tokenizer and base model, cheapest first.

    The LoRA settings are checked on a meta-device skeleton before the data and the weights load, so a typo is
    reported at once, not after a multi-gigabyte checkpoint. Sequence-classification models get the tokenizer's pad id.
    """
    check_model_config(model_args, training=True)
    peft_config = build_peft_config(
        model_args, skeleton_model(model_args, task=task, trust_remote_code=trust_remote_code)
    )
    train_pairs, eval_pairs = load_splits(data_args)
    tokenizer = load_tokenizer(model_args)
    model = load_model(model_args, task=task, trust_remote_code=trust_remote_code)
    if task == "sequence_classification":
        model.config.pad_token_id = tokenizer.pad_token_id
    return TrainingSetup(model, tokenizer, peft_config, train_pairs, eval_pairs)


def prefer_reentrant_checkpointing(training_args: Any, model_args: ModelConfig) -> None:
    """With gradient checkpointing on a bitsandbytes-quantized base, checkpoint reentrantly unless the user chose
    otherwise: transformers 5's default (non-reentrant) keeps what bitsandbytes' 8-bit matmul stashes on its
    autograd context (the layer inputs) alive in every checkpointed layer.

    transformers 5.24 renamed `gradient_checkpointing(_kwargs)` to `activation_checkpointing(_kwargs)` (the old
    names stay as aliases resolved at parse time); both spellings are read and the new one is written.
    """
    new_names = hasattr(training_args, "activation_checkpointing_kwargs")
    prefix = "activation" if new_names else "gradient"
    if getattr(training_args, f"{prefix}_checkpointing") and (model_args.load_in_8bit or model_args.load_in_4bit):
        kwargs = dict(getattr(training_args, f"{prefix}_checkpointing_kwargs") or {})
        kwargs.setdefault("use_reentrant", True)
        setattr(training_args, f"{prefix}_checkpointing_kwargs", kwargs)


def check_trainer_run(training_args: Any, model_args: ModelConfig, what: str) -> None:
    """The checks every recipe on a TRL trainer shares, needing no model or data: model settings, a local model
    directory, `--resume_from_checkpoint`, and agreement with `accelerate launch`'s DeepSpeed config.

    Raises:
        ConfigError: conflicting model settings, a missing or broken local model directory, a
            `--resume_from_checkpoint` that is no checkpoint, or settings that differ from the DeepSpeed config.
    """
    check_model_config(model_args, training=True)
    check_model_path(model_args.model_name_or_path, "model_name_or_path")
    check_trainer_checkpoint(training_args.resume_from_checkpoint)
    check_deepspeed_settings(
        precision="bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no",
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        micro_batch_size=training_args.per_device_train_batch_size,
        what=what,
    )


def save_trained_model(trainer: Any, output_dir: str) -> None:
    """`trainer.save_model(output_dir)`, with the training arguments in `training_args.json` instead of the pickled
    `training_args.bin` transformers writes: nothing a finished run leaves in `output_dir` needs pickle to read.
    (The TRL trainers' `checkpoint-*` directories keep transformers' own format, which resuming reads.)"""
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        (Path(output_dir) / "training_args.bin").unlink(missing_ok=True)
        write_text_atomically(Path(output_dir) / "training_args.json", trainer.args.to_json_string())


class LabelledProgressCallback(ProgressCallback):
    """transformers' progress bars, labelled: the training bar with the stage (``"SFT"``, ``"reward"``, ...), the
    evaluation bar with the stage and ``"evaluation"``."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.label)

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        starting = self.prediction_bar is None
        super().on_prediction_step(args, state, control, **kwargs)
        if starting and self.prediction_bar is not None:
            self.prediction_bar.set_description(f"{self.label} evaluation")


def label_progress(trainer: Any, label: str) -> None:
    """Give a TRL trainer labelled progress bars (`LabelledProgressCallback`), when it shows progress bars at all."""
    if any(type(callback) is ProgressCallback for callback in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LabelledProgressCallback(label))
