"""The RL loop of StackLLaMA's third stage, shared by the StackLLaMA and sentiment recipes.

Each PPO step, on every process:

1. take the next `batch_size` prompts of a seeded per-epoch shuffle (so the data position is just the step number);
2. `trainer.generate` responses, batched, with `output_min_length <= max_new_tokens < output_max_length` drawn by a
   `LengthSampler`;
3. score `query + response` with the reward function, check every reward is finite, subtract `reward_baseline`;
4. `trainer.step(queries, responses, rewards)`, then `log_stats` (trackers) and one line of `stats.jsonl`;
5. every `save_steps` steps, a resumable checkpoint (`stackrlhf.trainer.checkpointing`) that records the run's
   settings (`run_settings`): a resumed run must have the same ones.

A run starts by checking that `output_dir` is writable and removing what killed writers left staged there. At the end
the policy (adapter + value head) and tokenizer are saved in `output_dir`, with plots, sample generations before and
after training, `stackrlhf_summary.json` and a printed table (`reporting.finish_run`).

The trainer is any `stackrlhf.trainer.protocol.RLTrainer`; `PPOTrainer` is one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from stackrlhf.atomic import write_files_atomically
from stackrlhf.core import LengthSampler
from stackrlhf.data.prompts import Prompts
from stackrlhf.errors import ConfigError
from stackrlhf.outputs import prepare_output_dir, writing
from stackrlhf.rewards.contract import RewardFunction, check_rewards
from stackrlhf.trainer.checkpointing import (
    LATEST,
    load_ppo_checkpoint,
    resolve_checkpoint,
    rng_state,
    save_ppo_checkpoint,
    set_rng_state,
)
from stackrlhf.trainer.protocol import RLTrainer
from stackrlhf.trainer.reporting import STATS_FILE, StatsLog, finish_run, read_samples, role_bytes, write_samples

logger = logging.getLogger(__name__)

TRAJECTORY_SETTINGS = (
    # PPO (PPOConfig)
    "steps",
    "total_ppo_epochs",
    "batch_size",
    "mini_batch_size",
    "gradient_accumulation_steps",
    "ppo_epochs",
    "learning_rate",
    "seed",
    "adap_kl_ctrl",
    "init_kl_coef",
    "kl_penalty",
    "target",
    "horizon",
    "gamma",
    "lam",
    "cliprange",
    "cliprange_value",
    "vf_coef",
    "max_grad_norm",
    "early_stopping",
    "target_kl",
    "ratio_threshold",
    "use_score_scaling",
    "use_score_norm",
    "score_clip",
    "whiten_rewards",
    # the loop (RLLoopArguments)
    "output_min_length",
    "output_max_length",
    "max_prompt_length",
    "generation_batch_size",
    "reward_baseline",
    # the model (ModelConfig; the LoRA shape is checked against the saved parameters instead)
    "model_name_or_path",
    "model_revision",
    "dtype",
    "load_in_8bit",
    "load_in_4bit",
    "bnb_4bit_quant_type",
    "use_bnb_nested_quant",
    "use_peft",
    "lora_alpha",
    "lora_dropout",
    "use_rslora",
    "use_dora",
    "upcast_non_quantized",
    # the reward
    "reward_adapter",
    "reward_model",
    "reward_model_load_in_8bit",
    # the data (DataArguments, PromptArguments)
    "dataset_name",
    "dataset_format",
    "dataset_config",
    "dataset_data_dir",
    "dataset_split",
    "column_mapping",
    "max_samples",
    "eval_samples",
    "dataset_seed",
    "skip_bad_rows",
    "prompts_file",
    "prompts_dataset",
    "prompts_column",
    "min_prompt_chars",
    "query_min_length",
    "query_max_length",
    "num_heldout_prompts",
)
"""Settings that change what a run computes, by their option names: a checkpoint records them, and a run resumes it
only with the same values. (Outputs, logging, sample generations and reward batching do not count.)"""

EARLIER_SETTING_NAMES = {"dataset_name": "dataset_path", "dataset_config": "dataset_subset"}
"""Settings that checkpoints of earlier versions recorded under another name."""


def with_earlier_names(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` plus each renamed one under its `EARLIER_SETTING_NAMES` name too, so that resuming a checkpoint
    that recorded e.g. ``dataset_path`` compares it with this run's ``dataset_name``."""
    return settings | {old: settings[new] for new, old in EARLIER_SETTING_NAMES.items() if new in settings}


def run_settings(*configs: Any) -> dict[str, Any]:
    """The `TRAJECTORY_SETTINGS` that `configs` (a recipe's parsed dataclasses) have, each from the first with it."""
    settings: dict[str, Any] = {}
    for name in TRAJECTORY_SETTINGS:
        for config in configs:
            if hasattr(config, name):
                settings[name] = getattr(config, name)
                break
    return settings


@dataclass
class RLLoopArguments:
    """Options of the RL loop: generation lengths, reward baseline, outputs, checkpoints."""

    output_dir: str = field(
        default="outputs/ppo",
        metadata={"help": "Where the policy adapter, value head, stats.jsonl, plots, samples and checkpoints go."},
    )
    output_min_length: int = field(
        default=32, metadata={"help": "Shortest response budget in tokens (LengthSampler lower bound)."}
    )
    output_max_length: int = field(
        default=128, metadata={"help": "Response budget upper bound in tokens (excluded, as in StackLLaMA)."}
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Drop prompts longer than this many tokens (StackLLaMA kept those under 512). Default and upper "
            "bound: the model's context minus output_max_length."
        },
    )
    generation_batch_size: int = field(
        default=16, metadata={"help": "Prompts per batched `generate` call (StackLLaMA's batched_gen)."}
    )
    reward_baseline: float = field(
        default=0.0, metadata={"help": "Subtracted from every reward before the PPO step (StackLLaMA's option)."}
    )
    reward_batch_size: int = field(default=16, metadata={"help": "Texts per reward-model forward pass."})
    save_steps: int = field(
        default=0, metadata={"help": "Write a resumable checkpoint every this many PPO steps (0: never)."}
    )
    save_total_limit: int | None = field(
        default=None, metadata={"help": "Keep only the newest this many checkpoints, at least 1 (default: keep all)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint directory to resume from, or 'latest' for the newest intact one in --output_dir. "
            "It must have been written with this run's settings."
        },
    )
    num_sample_prompts: int = field(
        default=4, metadata={"help": "Held-out prompts whose generations are saved before and after training."}
    )
    sample_max_new_tokens: int = field(default=48, metadata={"help": "Length budget of those sample generations."})

    def __post_init__(self) -> None:
        if not 0 < self.output_min_length < self.output_max_length:
            raise ConfigError(
                f"need 0 < output_min_length < output_max_length, got {self.output_min_length} and "
                f"{self.output_max_length}."
            )
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ConfigError(f"max_prompt_length must be at least 1, got {self.max_prompt_length}.")
        for name in ("generation_batch_size", "reward_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.save_steps < 0:
            raise ConfigError(f"save_steps must be 0 (off) or positive, got {self.save_steps}.")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError(
                f"save_total_limit must be at least 1 (or unset: keep every checkpoint), got {self.save_total_limit}."
            )


def prompt_indices(step: int, num_prompts: int, batch_size: int, seed: int, rank: int, world_size: int) -> np.ndarray:
    """The prompts of PPO step `step` on process `rank`: a fresh seeded shuffle per pass over the data.

    Raises:
        ConfigError: fewer prompts than one global batch (`batch_size * world_size`).
    """
    global_batch = batch_size * world_size
    steps_per_epoch = num_prompts // global_batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{num_prompts} prompts are fewer than one batch ({batch_size} x {world_size} processes); "
            "lower --batch_size or give more data."
        )
    epoch, offset = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_prompts)
    start = offset * global_batch + rank * batch_size
    return order[start : start + batch_size]


@contextlib.contextmanager
def preserved_rng(seed: int) -> Iterator[None]:
    """Run the block with generators seeded by `seed`, then put every generator back as it was, so that optional
    work (sample generations) never changes the training run."""
    saved = rng_state()
    torch.manual_seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        set_rng_state(saved)


def generate_samples(
    trainer: RLTrainer,
    queries: Sequence[str],
    reward_fn: RewardFunction,
    max_new_tokens: int,
    generation_kwargs: dict[str, Any],
) -> list[dict[str, Any]]:
    """Generate one response per query (seeded sampling that leaves the training RNG untouched) and score it."""
    if not queries:
        return []
    with preserved_rng(1234):
        ids = [trainer.tokenizer(q, return_tensors="pt")["input_ids"][0].to(trainer.current_device) for q in queries]
        kwargs = generation_kwargs | {"max_new_tokens": max_new_tokens}
        responses = trainer.generate(ids, return_prompt=False, batch_size=len(ids), **kwargs)
    texts = trainer.tokenizer.batch_decode(responses, skip_special_tokens=True)
    scores = reward_fn([q + r for q, r in zip(queries, texts, strict=True)])
    return [{"query": q, "response": r, "reward": s} for q, r, s in zip(queries, texts, scores, strict=True)]


def run_rl_loop(
    trainer: RLTrainer,
    prompts: Prompts,
    reward_fn: RewardFunction,
    reward_name: str,
    args: RLLoopArguments,
    *,
    sample_queries: Sequence[str] = (),
    generation_kwargs: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    extra_roles: dict[str, int] | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `trainer`'s policy for `config.total_ppo_epochs` PPO steps on `prompts` against `reward_fn`.

    Args:
        trainer: an `RLTrainer`, e.g. a `PPOTrainer` over a value-head policy.
        prompts: the training prompts (each process draws its own share of every step's global batch).
        reward_fn: texts (query + response) -> rewards.
        reward_name: how errors and the summary name the reward.
        args: loop options.
        sample_queries: held-out prompts generated and scored before and after training.
        generation_kwargs: for `generate`; default: sampling with top_k 0 and top_p 1 (StackLLaMA's).
        summary: fields merged into `stackrlhf_summary.json` (e.g. the stages' checkpoints).
        extra_roles: parameter bytes of models outside the policy (a separate reward model) for the memory table.
        on_step: called as `on_step(step, stats)` at the end of each step, after its checkpoint (tests interrupt
            runs here).
        settings: the recipe's settings that shape the run (`run_settings` of its dataclasses), recorded in every
            checkpoint with the trainer's and `args`' own and compared on resume.

    Returns:
        The run summary (also written to `stackrlhf_summary.json` in `args.output_dir`).

    Raises:
        ConfigError: the checkpoint to resume is missing, damaged, or was written with other settings.
        OutputError: an output cannot be written (outputs written before are left as they were).
    """
    config, accelerator, tokenizer = trainer.config, trainer.accelerator, trainer.tokenizer
    output_dir = Path(args.output_dir)
    generation_kwargs = generation_kwargs or {
        "top_k": 0,
        "top_p": 1.0,
        "do_sample": True,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    length_sampler = LengthSampler(args.output_min_length, args.output_max_length)
    total_steps = config.total_ppo_epochs

    settings = run_settings(config, args) | (settings or {})
    is_main = accelerator.is_main_process
    prepare_output_dir(output_dir, clean=is_main)
    accelerator.wait_for_everyone()  # every process looks for checkpoints after the cleanup

    start_step, samples = 0, {}
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    if checkpoint is not None:
        verified = args.resume_from_checkpoint.lower() in LATEST  # resolve_checkpoint checked its files
        resumed = load_ppo_checkpoint(trainer, checkpoint, settings=with_earlier_names(settings), verify=not verified)
        start_step, samples = resumed["step"], read_samples(output_dir)
        if "before" not in samples and "samples_before" in resumed["extra"]:
            samples["before"] = resumed["extra"]["samples_before"]
        logger.info("Resumed from %s at step %d of %d.", checkpoint, start_step, total_steps)
    stats_log = StatsLog(output_dir / STATS_FILE, resume_step=start_step) if is_main else None
    if "before" not in samples:  # every process: under ZeRO-3, generating and scoring gather weights collectively
        samples["before"] = generate_samples(
            trainer, sample_queries, reward_fn, args.sample_max_new_tokens, generation_kwargs
        )
    if is_main:
        write_samples(output_dir, samples)
    extra = {"total_steps": total_steps, "samples_before": samples.get("before")}

    progress = tqdm(
        range(start_step, total_steps), initial=start_step, total=total_steps, desc="PPO", disable=not is_main
    )
    for step in progress:
        started = time.perf_counter()
        indices = prompt_indices(
            step,
            len(prompts.texts),
            config.batch_size,
            config.seed,
            accelerator.process_index,
            accelerator.num_processes,
        )
        queries = [prompts.input_ids[i].to(trainer.current_device) for i in indices]
        query_texts = [prompts.texts[i] for i in indices]
        responses = trainer.generate(
            queries,
            return_prompt=False,
            length_sampler=length_sampler,
            batch_size=args.generation_batch_size,
            **generation_kwargs,
        )
        response_texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        texts = [q + r for q, r in zip(query_texts, response_texts, strict=True)]
        scores = check_rewards(reward_fn(texts), texts, reward_name, step)
        rewards = [torch.tensor(score - args.reward_baseline) for score in scores]
        stats = trainer.step(queries, responses, rewards)
        trainer.log_stats(stats, {"query": query_texts, "response": response_texts}, rewards)

        all_scores = accelerator.gather(torch.tensor(scores, device=trainer.current_device)).cpu().tolist()
        seconds = time.perf_counter() - started
        if stats_log is not None:
            record = stats_log.write(step, stats, all_scores, seconds)
            progress.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record.get('objective/kl', 0):.3f}")
        if args.save_steps and (step + 1) % args.save_steps == 0 and step + 1 < total_steps:
            save_ppo_checkpoint(trainer, output_dir, step + 1, extra, args.save_total_limit, settings)
        if on_step is not None:
            on_step(step, stats)

    # Saving and sample generation are collective under ZeRO-3 (weights are gathered): every process takes part.
    if is_main:
        with writing("the final policy", output_dir):
            write_files_atomically(output_dir, trainer.save_pretrained)
    else:
        trainer.save_pretrained(output_dir)  # this process's part of the gather; only the main process writes
    samples["after"] = generate_samples(
        trainer, sample_queries, reward_fn, args.sample_max_new_tokens, generation_kwargs
    )
    if not is_main:
        accelerator.wait_for_everyone()
        return {}
    memory = role_bytes(accelerator.unwrap_model(trainer.model), trainer.optimizer)
    result = finish_run(
        output_dir,
        reward_name,
        samples,
        memory,
        accelerator.num_processes,
        summary=summary,
        extra_roles=extra_roles,
    )
    accelerator.wait_for_everyone()
    return result
