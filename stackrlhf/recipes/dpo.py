"""DPO, StackLLaMA 2's alternative to reward modelling + PPO: TRL's `DPOTrainer` on the same preference pairs.

Each pair becomes TRL's explicit-prompt format (`to_dpo_dataset`): the prompt `"Question: …\\n\\nAnswer: "` and the
two answers. The policy is a new LoRA adapter on the (merged) SFT model, optionally loaded in 8 or 4 bits; the
reference is that same base with the adapter disabled (TRL does this when it wraps the model itself and gets no
`ref_model`), so one copy of the weights serves both. After training, the held-out pairs are evaluated with the
trainer's implicit rewards `beta * (log π(answer) - log π_ref(answer))`: how often the chosen answer out-scores the
rejected one (reward accuracy), by how much (margin), and each side's mean.

With no arguments it runs offline on the bundled HH-RLHF sample, starting from the cached offline SFT stage (the
merged SFT model of `stackrlhf stages`, which runs first when it is missing). For Llama-2-7B with StackLLaMA 2's
settings:

    accelerate launch recipes/dpo_stackllama.py --config llama-2-7b/dpo

The output directory holds the adapter, the tokenizer, `stackrlhf_summary.json` and `plots/dpo.png` (loss, reward
accuracy and margin over training).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch
from trl import DPOConfig, DPOTrainer, ModelConfig

from stackrlhf.data import DataArguments, to_dpo_dataset
from stackrlhf.errors import ConfigError
from stackrlhf.models.loading import check_model_config, check_model_path, read_adapter
from stackrlhf.planner.verdict import report_memory_plan
from stackrlhf.recipes import RECIPE_HELP
from stackrlhf.recipes.runner import recipe_parser, run_recipe
from stackrlhf.recipes.setup import (
    label_progress,
    prefer_reentrant_checkpointing,
    prepare_training,
    save_trained_model,
)
from stackrlhf.recipes.stages import offline_stages
from stackrlhf.recipes.validation import check_trainer_checkpoint
from stackrlhf.trainer.reporting import save_figure, write_summary

PLOT_FILE = Path("plots") / "dpo.png"
PLOTTED = {"loss": "DPO loss", "rewards/accuracies": "reward accuracy", "rewards/margins": "reward margin"}
"""TRL's logged metric -> panel title of the plot; each panel shows the training value and the held-out one."""


def check_arguments(data_args: DataArguments, training_args: DPOConfig, model_args: ModelConfig) -> None:
    """The recipe's checks that need no model or data, run where the options are parsed (`--dry_run` too).

    Raises:
        ConfigError: conflicting model settings, a missing or broken local model directory, a LoRA adapter as the
            model, a `--resume_from_checkpoint` that is no checkpoint, `beta` not above 0, a reference synced into
            a LoRA policy, or evaluation during training with no held-out rows (`--eval_samples 0`).
    """
    named = model_args.model_name_or_path
    check_model_config(dataclasses.replace(model_args, model_name_or_path=named or "offline SFT stage"), training=True)
    if named is not None:
        check_model_path(named, "model_name_or_path")
        if read_adapter(named) is not None:
            raise ConfigError(
                f"--model_name_or_path {named} is a LoRA adapter; DPO's base must be a full model (the reference). "
                f"Merge it first: stackrlhf merge --adapter_path {named} --output_dir <merged>."
            )
    check_trainer_checkpoint(training_args.resume_from_checkpoint)
    if training_args.beta <= 0:
        raise ConfigError(f"beta: {training_args.beta} must be greater than 0 (the strength of the KL penalty).")
    if training_args.sync_ref_model and model_args.use_peft:
        raise ConfigError(
            "--sync_ref_model updates a separate reference model, but with --use_peft the reference is the base "
            "with the adapter disabled: drop --sync_ref_model or --use_peft."
        )
    if data_args.eval_samples == 0 and training_args.eval_strategy != "no":
        raise ConfigError(
            f"--eval_strategy {training_args.eval_strategy.value} evaluates during training, but --eval_samples 0 "
            "holds out no pairs: set --eval_strategy no or hold out pairs."
        )


def train_dpo(data_args: DataArguments, training_args: DPOConfig, model_args: ModelConfig) -> dict[str, Any]:
    """Train a DPO adapter on the preference pairs and save it to `training_args.output_dir` (without
    `--model_name_or_path`: on the merged model of the offline SFT stage, built first when not cached).

    Returns:
        The summary written to `stackrlhf_summary.json`: base model, reference, the pairs trained on, evaluated
        and dropped (their prompt alone fills `--max_length`), the optimizer steps and the pairs they saw, the
        seconds `trainer.train` took and the torch threads it used and, on the held-out pairs, the DPO loss and the
        implicit rewards' accuracy, margin and chosen/rejected means (None when no held-out pair is left).

    Raises:
        ConfigError: no training pair fits `--max_length` (every prompt alone fills it).
    """
    summary: dict[str, Any] = {"stage": "dpo"}
    if model_args.model_name_or_path is None:
        model_args.model_name_or_path = str(offline_stages().sft_merged)
        summary["stages"] = {"sft_merged": model_args.model_name_or_path}
    prefer_reentrant_checkpointing(training_args, model_args)
    setup = prepare_training(data_args, model_args, trust_remote_code=training_args.trust_remote_code)
    train_pairs, eval_pairs = setup.train_pairs, setup.eval_pairs
    trainer = DPOTrainer(
        model=setup.model,
        ref_model=None,
        args=training_args,
        train_dataset=to_dpo_dataset(train_pairs),
        eval_dataset=to_dpo_dataset(eval_pairs) if len(eval_pairs) else None,
        processing_class=setup.tokenizer,
        peft_config=setup.peft_config,
    )
    # TRL drops the pairs whose prompt alone fills max_length: no answer token would be left to train on
    train_rows = len(trainer.train_dataset)
    eval_rows = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    if train_rows == 0:
        raise ConfigError(
            f"no training pair fits --max_length {training_args.max_length}: every prompt alone fills it, so no "
            "answer token is left to train on; raise --max_length."
        )
    label_progress(trainer, "DPO")
    trained = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    pairs_per_step = trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps * trainer.args.world_size
    metrics = trainer.evaluate() if eval_rows else {}
    save_trained_model(trainer, training_args.output_dir)

    summary |= {
        "base_model": model_args.model_name_or_path,
        "peft": model_args.use_peft,
        "reference": "base model, adapter disabled" if model_args.use_peft else "frozen copy of the base model",
        "beta": training_args.beta,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "dropped_rows": len(train_pairs) + len(eval_pairs) - train_rows - eval_rows,
        "steps": trainer.state.global_step,
        "pairs_seen": trainer.state.global_step * pairs_per_step,
        "train_seconds": trained.metrics["train_runtime"],
        "torch_threads": torch.get_num_threads(),
        "eval_loss": metrics.get("eval_loss"),
        "eval_reward_accuracy": metrics.get("eval_rewards/accuracies"),
        "eval_reward_margin": metrics.get("eval_rewards/margins"),
        "eval_reward_chosen": metrics.get("eval_rewards/chosen"),
        "eval_reward_rejected": metrics.get("eval_rewards/rejected"),
    }
    if trainer.accelerator.is_main_process:
        plot = plot_log_history(trainer.state.log_history, Path(training_args.output_dir, PLOT_FILE))
        summary["plot"] = str(plot) if plot else None
        write_summary(training_args.output_dir, summary)
    return summary


def plot_log_history(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """Plot TRL's logged DPO loss, reward accuracy and margin against the step (training values as lines, held-out
    ones as points) into one PNG; None when nothing was logged (fewer steps than `--logging_steps`, no evaluation)."""
    series = {
        name: [(entry["step"], entry[name]) for entry in log_history if name in entry]
        for key in PLOTTED
        for name in (key, f"eval_{key}")
    }
    if not any(series.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.5))
    for axis, (key, title) in zip(axes, PLOTTED.items(), strict=True):
        for name, style, label in ((key, "-", "training"), (f"eval_{key}", "o", "held out")):
            points = series[name]
            if points:
                axis.plot(*zip(*points, strict=True), style, label=label)
        if key == "rewards/accuracies":
            axis.axhline(0.5, color="grey", linestyle=":", label="chance")
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def main(data_args: DataArguments, training_args: DPOConfig, model_args: ModelConfig) -> dict[str, Any]:
    """Entry point of `recipes/dpo_stackllama.py` and `stackrlhf dpo`."""
    report_memory_plan("dpo", training_args, model_args)  # on a CUDA machine: will it fit? one line, never fails
    summary = train_dpo(data_args, training_args, model_args)
    held_out = (
        f"held-out reward accuracy {summary['eval_reward_accuracy']:.3f} on {summary['eval_rows']} pairs (margin "
        f"{summary['eval_reward_margin']:.3f}: chosen {summary['eval_reward_chosen']:.3f}, rejected "
        f"{summary['eval_reward_rejected']:.3f})"
        if summary["eval_reward_accuracy"] is not None
        else "evaluation skipped: no held-out pairs"
    )
    dropped = f" ({summary['dropped_rows']} dropped: prompt fills --max_length)" if summary["dropped_rows"] else ""
    print(
        f"DPO done: {summary['train_rows']} training pairs{dropped}; {held_out}; saved to {training_args.output_dir}"
    )
    return summary


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The recipe's parser: data, TRL `DPOConfig`, TRL `ModelConfig` and run options, with offline defaults."""
    return recipe_parser(
        subparsers,
        "dpo",
        RECIPE_HELP["dpo"],
        (DataArguments, DPOConfig, ModelConfig),
        prog=prog,
        check=check_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(run_recipe(make_parser(), main))
