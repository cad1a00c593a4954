"""Supervised fine-tuning, StackLLaMA's first stage: TRL's `SFTTrainer` on `"Question: …\\n\\nAnswer: …"` text.

With no arguments it trains a LoRA adapter on the bundled tiny Llama (stories260K) with the bundled HH-RLHF sample,
offline, in about a minute on two CPU cores. For Llama-2-7B with StackLLaMA's settings:

    accelerate launch recipes/sft_stackllama.py --config llama-2-7b/sft

The output directory holds the adapter (or the full model without `--use_peft`), the tokenizer and
`stackrlhf_summary.json` (base model, data, metrics), which the reward and PPO stages read.
"""

from __future__ import annotations

import argparse
import math

from trl import ModelConfig, SFTConfig, SFTTrainer

from stackrlhf.data import DataArguments, to_prompt_dataset, to_sft_dataset
from stackrlhf.errors import ConfigError
from stackrlhf.planner.verdict import report_memory_plan
from stackrlhf.recipes import RECIPE_HELP
from stackrlhf.recipes.runner import recipe_parser, run_recipe
from stackrlhf.recipes.setup import (
    check_trainer_run,
    label_progress,
    prefer_reentrant_checkpointing,
    prepare_training,
    save_trained_model,
)
from stackrlhf.trainer.reporting import write_summary


def check_arguments(data_args: DataArguments, training_args: SFTConfig, model_args: ModelConfig) -> None:
    """The recipe's checks that need no model or data, run where the options are parsed (`--dry_run` too).

    Raises:
        ConfigError: conflicting model settings, a missing or broken local model directory, a
            `--resume_from_checkpoint` that is no checkpoint, settings that differ from `accelerate launch`'s DeepSpeed
            config, or evaluation during training with no held-out rows
            (`--eval_samples 0`).
    """
    check_trainer_run(training_args, model_args, "the SFT recipe")
    if data_args.eval_samples == 0 and training_args.eval_strategy != "no":
        raise ConfigError(
            f"--eval_strategy {training_args.eval_strategy.value} evaluates during training, but --eval_samples 0 "
            "holds out no rows: set --eval_strategy no or hold out rows."
        )


def train_sft(data_args: DataArguments, training_args: SFTConfig, model_args: ModelConfig) -> dict:
    """Fine-tune `model_args`' model on the SFT shape of the data and save it to `training_args.output_dir`.

    Returns:
        The summary written to `stackrlhf_summary.json`: base model, adapter or not, row counts, eval loss and
        perplexity on the held-out rows (None with `--eval_samples 0`: evaluation skipped), and one sample answer
        (to a held-out prompt, else to a training one).
    """
    prefer_reentrant_checkpointing(training_args, model_args)
    setup = prepare_training(data_args, model_args, trust_remote_code=training_args.trust_remote_code)
    train_pairs, eval_pairs = setup.train_pairs, setup.eval_pairs
    trainer = SFTTrainer(
        model=setup.model,
        args=training_args,
        train_dataset=to_sft_dataset(train_pairs),
        eval_dataset=to_sft_dataset(eval_pairs) if len(eval_pairs) else None,
        processing_class=setup.tokenizer,
        peft_config=setup.peft_config,
    )
    label_progress(trainer, "SFT")
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    eval_loss = trainer.evaluate()["eval_loss"] if len(eval_pairs) else None
    save_trained_model(trainer, training_args.output_dir)

    summary = {
        "stage": "sft",
        "base_model": model_args.model_name_or_path,
        "peft": model_args.use_peft,
        "train_rows": len(train_pairs),
        "eval_rows": len(eval_pairs),
        "eval_loss": eval_loss,
        "eval_perplexity": None if eval_loss is None else math.exp(min(eval_loss, 50.0)),
        "sample": _sample_answer(
            trainer, to_prompt_dataset(eval_pairs if len(eval_pairs) else train_pairs)[0]["query"]
        ),
    }
    if trainer.accelerator.is_main_process:
        write_summary(training_args.output_dir, summary)
    return summary


def _sample_answer(trainer: SFTTrainer, query: str, max_new_tokens: int = 48) -> dict:
    """Greedy answer of the trained model to one held-out prompt, for a quick look."""
    tokenizer = trainer.processing_class
    inputs = tokenizer(query, return_tensors="pt").to(trainer.model.device)
    output = trainer.model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return {"query": query, "answer": answer}


def main(data_args: DataArguments, training_args: SFTConfig, model_args: ModelConfig) -> dict:
    """Entry point of `recipes/sft_stackllama.py` and `stackrlhf sft`."""
    report_memory_plan("sft", training_args, model_args)  # on a CUDA machine: will it fit? one line, never fails
    summary = train_sft(data_args, training_args, model_args)
    held_out = (
        f"held-out loss {summary['eval_loss']:.3f} (perplexity {summary['eval_perplexity']:.1f})"
        if summary["eval_loss"] is not None
        else "evaluation skipped (--eval_samples 0)"
    )
    print(f"SFT done: {summary['train_rows']} training rows, {held_out}; saved to {training_args.output_dir}")
    print(f"sample: {summary['sample']['query']!r} -> {summary['sample']['answer']!r}")
    return summary


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The recipe's parser: data, TRL `SFTConfig`, TRL `ModelConfig` and run options, with offline defaults."""
    return recipe_parser(
        subparsers,
        "sft",
        RECIPE_HELP["sft"],
        (DataArguments, SFTConfig, ModelConfig),
        prog=prog,
        check=check_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(run_recipe(make_parser(), main))
