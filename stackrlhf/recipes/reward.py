"""Reward modelling, StackLLaMA's second stage: TRL's `RewardTrainer` on preferred/rejected answer pairs.

The model is the base LM with a scalar score head (`AutoModelForSequenceClassification`, `num_labels=1`) trained
with the pairwise loss `-log σ(r(chosen) - r(rejected))`; with LoRA the adapter and the score head are saved
together, so the PPO stage can load them as a second adapter on the policy's base model. After training, the
held-out pairs are scored with `RewardScorer` and the pairwise accuracy is computed with `evaluate`.

With no arguments it runs offline on the bundled tiny Llama and HH-RLHF sample. For Llama-2-7B:

    accelerate launch recipes/reward_stackllama.py --config llama-2-7b/reward
"""

from __future__ import annotations

import argparse

import evaluate
from trl import ModelConfig, RewardConfig, RewardTrainer

from stackrlhf.data import DataArguments, to_reward_dataset
from stackrlhf.errors import ConfigError
from stackrlhf.metrics import PAIRWISE_ACCURACY
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
from stackrlhf.rewards.scorers import RewardScorer
from stackrlhf.trainer.reporting import write_summary


def evaluate_pairwise_accuracy(scorer: RewardScorer, chosen: list[str], rejected: list[str]) -> dict:
    """Score each pair with `scorer` and return `evaluate`'s pairwise accuracy, mean margin and pair count."""
    metric = evaluate.load(PAIRWISE_ACCURACY)
    return metric.compute(chosen_scores=scorer(chosen), rejected_scores=scorer(rejected))


def check_arguments(data_args: DataArguments, training_args: RewardConfig, model_args: ModelConfig) -> None:
    """The recipe's checks that need no model or data, run where the options are parsed (`--dry_run` too).

    Raises:
        ConfigError: conflicting model settings, a missing or broken local model directory, a
            `--resume_from_checkpoint` that is no checkpoint, settings that differ from `accelerate launch`'s DeepSpeed
            config, or evaluation during training (the held-out pairs
            are scored once, after it).
    """
    check_trainer_run(training_args, model_args, "the reward recipe")
    if training_args.eval_strategy != "no":
        raise ConfigError(
            f"--eval_strategy {training_args.eval_strategy.value}: the reward recipe scores its held-out pairs once, "
            "after training, not during it; set --eval_strategy no."
        )


def train_reward_model(data_args: DataArguments, training_args: RewardConfig, model_args: ModelConfig) -> dict:
    """Train a reward model on the reward-pair shape of the data and save it to `training_args.output_dir`.

    Returns:
        The summary written to `stackrlhf_summary.json`: base model, row counts and held-out pairwise accuracy and
        mean margin (None with `--eval_samples 0`: evaluation skipped).
    """
    prefer_reentrant_checkpointing(training_args, model_args)
    setup = prepare_training(
        data_args, model_args, task="sequence_classification", trust_remote_code=training_args.trust_remote_code
    )
    train_pairs, eval_pairs, tokenizer = setup.train_pairs, setup.eval_pairs, setup.tokenizer
    trainer = RewardTrainer(
        model=setup.model,
        args=training_args,
        train_dataset=to_reward_dataset(train_pairs),
        processing_class=tokenizer,
        peft_config=setup.peft_config,
    )
    label_progress(trainer, "reward")
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_trained_model(trainer, training_args.output_dir)

    metrics = {"accuracy": None, "mean_margin": None}
    if len(eval_pairs):
        held_out = to_reward_dataset(eval_pairs)
        scorer = RewardScorer(
            trainer.model,
            tokenizer,
            batch_size=training_args.per_device_eval_batch_size,
            max_length=training_args.max_length,
        )
        metrics = evaluate_pairwise_accuracy(scorer, held_out["chosen"], held_out["rejected"])
    summary = {
        "stage": "reward",
        "base_model": model_args.model_name_or_path,
        "peft": model_args.use_peft,
        "train_rows": len(train_pairs),
        "eval_rows": len(eval_pairs),
        "eval_accuracy": metrics["accuracy"],
        "eval_mean_margin": metrics["mean_margin"],
    }
    if trainer.accelerator.is_main_process:
        write_summary(training_args.output_dir, summary)
    return summary


def main(data_args: DataArguments, training_args: RewardConfig, model_args: ModelConfig) -> dict:
    """Entry point of `recipes/reward_stackllama.py` and `stackrlhf reward`."""
    report_memory_plan("reward", training_args, model_args)  # on a CUDA machine: will it fit? one line, never fails
    summary = train_reward_model(data_args, training_args, model_args)
    held_out = (
        f"held-out pairwise accuracy {summary['eval_accuracy']:.3f} on {summary['eval_rows']} pairs (mean margin "
        f"{summary['eval_mean_margin']:.3f})"
        if summary["eval_accuracy"] is not None
        else "evaluation skipped (--eval_samples 0)"
    )
    print(
        f"reward model done: {summary['train_rows']} training pairs; {held_out}; saved to {training_args.output_dir}"
    )
    return summary


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The recipe's parser: data, TRL `RewardConfig`, TRL `ModelConfig` and run options, with offline defaults."""
    return recipe_parser(
        subparsers,
        "reward",
        RECIPE_HELP["reward"],
        (DataArguments, RewardConfig, ModelConfig),
        prog=prog,
        check=check_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(run_recipe(make_parser(), main))
