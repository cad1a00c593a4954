"""GRPO or RLOO (TRL 1.16's `GRPOTrainer` / `RLOOTrainer`) on StackLLaMA's prompts, on one shared base model.

The base model (the merged SFT model; any dtype, 8-bit or 4-bit) is loaded once. TRL wraps it in a `PeftModel` from
`--use_peft`'s LoRA settings; that one copy then carries

* the policy: the new LoRA adapter, ``"default"``;
* the reference (`--beta` > 0): the same model with the adapter disabled, as TRL does for a peft policy;
* the reward model: the reward recipe's LoRA adapter and score head (`--reward_adapter`), loaded into the trainer's
  `PeftModel` as a frozen second adapter ``"reward"``. Each reward batch switches to it under `torch.no_grad` in eval
  mode and back to ``"default"`` (train mode and `requires_grad` restored) in a `finally`
  (`stackrlhf.rewards.shared_base`).

`--reward_model PATH` instead scores with a separate sequence-classification model. Either reward reaches TRL through
the reward-function contract (`stackrlhf.rewards.as_trl_reward_func`: prompt + completion texts in, one checked float
each out). Each prompt gets `--num_generations` completions; GRPO's advantage is the reward minus its group's mean
(over the group's spread), RLOO's the reward minus the mean of the group's other completions (with the KL penalty
in the reward). `--algorithm rloo` takes the options the two trainers share, plus `--normalize_advantages`.

With no model arguments, the SFT and reward stages run first on the bundled data with the tiny model (or come from
the cache), so a bare `python recipes/grpo_stackllama.py` is a complete offline demo. It writes, like the PPO recipe,
the policy adapter, `stats.jsonl` (one line per logged step), `plots/training.png`, `samples.json` (held-out prompts'
generations before and after training) and `stackrlhf_summary.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOConfig, GRPOTrainer, ModelConfig, RLOOConfig, RLOOTrainer

from stackrlhf.data import DataArguments, load_splits, prompts_within, to_prompt_dataset
from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import resolve_model_name_or_path
from stackrlhf.models.loading import (
    build_peft_config,
    check_model_config,
    check_model_path,
    load_model,
    load_tokenizer,
    read_adapter,
    skeleton_model,
)
from stackrlhf.outputs import writing
from stackrlhf.planner.verdict import report_memory_plan
from stackrlhf.recipes import RECIPE_HELP
from stackrlhf.recipes.runner import recipe_parser, run_recipe
from stackrlhf.recipes.setup import label_progress, save_trained_model
from stackrlhf.recipes.stages import offline_stages
from stackrlhf.recipes.validation import check_trainer_checkpoint
from stackrlhf.rewards.build import build_reward, check_base_and_reward, check_reward_source
from stackrlhf.rewards.contract import RewardFunction
from stackrlhf.rewards.shared_base import SharedBaseRewardScorer
from stackrlhf.rewards.trl_adapter import as_trl_reward_func
from stackrlhf.trainer.reporting import (
    STATS_FILE,
    StatsLog,
    format_bytes,
    format_table,
    plot_stats,
    read_stats,
    summarize,
    write_samples,
    write_summary,
)
from stackrlhf.trainer.rl_loop import preserved_rng

logger = logging.getLogger(__name__)

Algorithm = Literal["grpo", "rloo"]
TRAINERS = {"grpo": GRPOTrainer, "rloo": RLOOTrainer}
PLOTTED = {
    "reward_mean": "mean reward",
    "objective/kl": "KL to the reference (nats per token)",
    "loss": "loss",
    "completions/mean_length": "completion length (tokens)",
}
RENAMED = {"reward": "reward_mean", "kl": "objective/kl"}
"""TRL's log names that `stats.jsonl` spells as the PPO recipe does (so `summarize` reads both)."""


@dataclass
class GroupRLArguments:
    """The algorithm, the reward and what the run reports besides TRL's logs."""

    algorithm: Algorithm = field(
        default="grpo",
        metadata={"help": "grpo: TRL's GRPOTrainer; rloo: TRL's RLOOTrainer, with the options both trainers share."},
    )
    reward_adapter: str | None = field(
        default=None,
        metadata={
            "help": "The reward recipe's LoRA adapter (with its score head), trained on --model_name_or_path; loaded "
            "as a second adapter on the policy's base model."
        },
    )
    reward_model: str | None = field(
        default=None,
        metadata={"help": "A separate sequence-classification reward model (path or Hub name) instead."},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Drop prompts longer than this many tokens. Default and upper bound: the model's context minus "
            "--max_completion_length."
        },
    )
    reward_batch_size: int = field(default=16, metadata={"help": "Texts per reward-model forward pass."})
    normalize_advantages: bool = field(
        default=False, metadata={"help": "--algorithm rloo: normalize the advantages (RLOOConfig's option)."}
    )
    num_sample_prompts: int = field(
        default=4, metadata={"help": "Held-out prompts whose generations are saved before and after training."}
    )
    sample_max_new_tokens: int = field(default=48, metadata={"help": "Length budget of those sample generations."})

    def __post_init__(self) -> None:
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ConfigError(f"max_prompt_length must be at least 1, got {self.max_prompt_length}.")
        if self.reward_batch_size < 1:
            raise ConfigError(f"reward_batch_size must be at least 1, got {self.reward_batch_size}.")


def check_arguments(
    data_args: DataArguments, train_args: GRPOConfig, model_args: ModelConfig, rl_args: GroupRLArguments
) -> None:
    """Reject contradictory or incomplete settings before anything loads (every parse runs it, `--dry_run` too).

    Raises:
        ConfigError: both or (with an explicit model) neither reward source, a reward without a model, a LoRA adapter
            as the base, a reward adapter without `--use_peft` or trained on another base, a missing or broken
            local model, evaluation during training, a bad `--resume_from_checkpoint`, or GRPO-only options with
            `--algorithm rloo` (`--normalize_advantages` without it).
    """
    check_reward_source(rl_args.reward_adapter, rl_args.reward_model)
    if rl_args.reward_model:
        check_model_path(rl_args.reward_model, "reward_model")
    check_trainer_checkpoint(train_args.resume_from_checkpoint)
    if train_args.eval_strategy != "no":
        raise ConfigError(
            f"--eval_strategy {train_args.eval_strategy.value}: this recipe has no evaluation set; its held-out "
            "prompts are sampled before and after training. Set --eval_strategy no."
        )
    if rl_args.algorithm == "rloo" and (changed := grpo_only_options(train_args)):
        raise ConfigError(f"--algorithm rloo: RLOOTrainer has no {', '.join('--' + name for name in changed)}.")
    if rl_args.algorithm == "grpo" and rl_args.normalize_advantages:
        raise ConfigError(
            "--normalize_advantages is RLOO's option (GRPO scales by --scale_rewards): add --algorithm rloo."
        )
    check_base_and_reward(
        model_args.model_name_or_path,
        rl_args.reward_adapter,
        rl_args.reward_model,
        use_peft=model_args.use_peft,
        base_role="the shared base",
    )
    if model_args.model_name_or_path is None:
        return
    check_model_config(model_args, training=True)
    check_model_path(model_args.model_name_or_path, "model_name_or_path")
    if rl_args.reward_adapter:
        check_same_base(rl_args.reward_adapter, model_args.model_name_or_path)


def check_same_base(reward_adapter: str, model_name_or_path: str) -> None:
    """The reward adapter must have been trained on the policy's base: its LoRA weights and score head only mean
    something there. A Hub adapter passes (its loading tells).

    Raises:
        ConfigError: the adapter's `base_model_name_or_path` names another model.
    """
    adapter = read_adapter(reward_adapter) if Path(reward_adapter).expanduser().is_dir() else None
    if adapter is not None and _canonical(adapter.base_model) != _canonical(model_name_or_path):
        raise ConfigError(
            f"--reward_adapter {reward_adapter} was trained on {adapter.base_model}, not on --model_name_or_path "
            f"{model_name_or_path}: train the reward on the policy's base, or give a separate --reward_model."
        )


def _canonical(name: str) -> str:
    """A model's name for comparison: an existing local directory's resolved path, else the name itself."""
    path = Path(resolve_model_name_or_path(name)).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def grpo_only_options(args: GRPOConfig) -> list[str]:
    """The options of `args` that RLOOConfig lacks and that differ from GRPOConfig's defaults."""
    rloo = {f.name for f in dataclasses.fields(RLOOConfig)}
    changed = []
    for option in dataclasses.fields(GRPOConfig):
        if not option.init or option.name in rloo:
            continue
        default = option.default_factory() if option.default_factory is not dataclasses.MISSING else option.default
        if getattr(args, option.name) != default:
            changed.append(option.name)
    return changed


def rloo_config(args: GRPOConfig, normalize_advantages: bool) -> RLOOConfig:
    """`args` as an RLOOConfig: every option the two share, and `normalize_advantages`.

    `generation_batch_size` is left for RLOOConfig to derive again from `steps_per_generation` (GRPOConfig set both,
    and RLOOConfig refuses both given).
    """
    rloo = {f.name for f in dataclasses.fields(RLOOConfig) if f.init}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(GRPOConfig) if f.init and f.name in rloo}
    values["generation_batch_size"] = None
    return RLOOConfig(**values, normalize_advantages=normalize_advantages)


@dataclass
class LateReward:
    """The reward function handed to TRL's trainer before its `PeftModel` exists; `fn` is set once it does (a
    reward adapter loads into that model)."""

    fn: RewardFunction | None = None

    def __call__(self, texts: Sequence[str]) -> list[float]:
        if self.fn is None:
            raise RuntimeError("the reward was called before the trainer's model was given its reward adapter.")
        return self.fn(texts)


class StatsCallback(TrainerCallback):
    """Write one `stats.jsonl` line per TRL log that carries a reward (every `--logging_steps` steps): the step
    (from 0), `reward_mean` and `reward_std`, `objective/kl`, TRL's other scalars under their names, the
    completions per step and the seconds since the previous line. A resumed run first drops the lines of the steps
    it redoes."""

    def __init__(self, output_dir: str, completions_per_step: int) -> None:
        self.path = Path(output_dir) / STATS_FILE
        self.completions_per_step = completions_per_step
        self.last = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero:
            StatsLog(self.path, resume_step=state.global_step or None)
        self.last = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        now = time.perf_counter()
        record: dict[str, Any] = {"step": state.global_step - 1, "samples": self.completions_per_step}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record[RENAMED.get(key, key)] = float(value)
        record["seconds"] = now - self.last
        self.last = now
        with writing(self.path.name, self.path.parent), self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def build_group_reward(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, rl_args: GroupRLArguments, max_length: int
) -> tuple[RewardFunction, str, torch.nn.Module | None]:
    """The reward (texts -> floats), its name and, for a separate reward model, that model.

    A reward adapter loads into `model`, the trainer's policy (`SharedBaseRewardScorer`); a `--reward_model` is its
    own model (`build_reward`).
    """
    if rl_args.reward_adapter:
        scorer = SharedBaseRewardScorer(
            model, tokenizer, rl_args.reward_adapter, batch_size=rl_args.reward_batch_size, max_length=max_length
        )
        return scorer, f"reward adapter {rl_args.reward_adapter}", None
    reward = build_reward(
        model,
        tokenizer,
        reward_model=rl_args.reward_model,
        batch_size=rl_args.reward_batch_size,
        max_length=max_length,
        device=next(model.parameters()).device,
    )
    return reward.fn, reward.name, reward.separate_model


def generate_samples(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    reward_fn: RewardFunction,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """One sampled completion per query (seeded; the training RNG is left as it was), scored, as PPO's samples."""
    if not queries:
        return []
    was_training = model.training
    model.eval()
    try:
        with preserved_rng(1234), torch.no_grad():
            batch = tokenizer(list(queries), return_tensors="pt", padding=True).to(next(model.parameters()).device)
            sampling = {"do_sample": True, "top_k": 0, "top_p": 1.0, "pad_token_id": tokenizer.pad_token_id}
            output = model.generate(**batch, max_new_tokens=max_new_tokens, **sampling)
    finally:
        model.train(was_training)
    texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    scores = reward_fn([query + text for query, text in zip(queries, texts, strict=True)])
    return [{"query": q, "response": r, "reward": s} for q, r, s in zip(queries, texts, scores, strict=True)]


def memory_roles(
    model: PeftModel, reward_fn: RewardFunction, separate_model: torch.nn.Module | None, beta: float
) -> dict[str, int]:
    """Parameter bytes per role on the shared base, and the copies of the base this design does not hold."""
    policy = model.active_adapter
    reward = reward_fn.adapter_name if isinstance(reward_fn, SharedBaseRewardScorer) else None
    roles = {"base (shared)": 0, "policy adapter": 0}
    if reward:
        roles["reward adapter + head"] = sum(p.numel() * p.element_size() for p in reward_fn.score.parameters())
    for name, param in model.named_parameters():
        size = param.numel() * param.element_size()
        if f".{policy}." in name:
            roles["policy adapter"] += size
        elif reward and f".{reward}." in name:
            roles["reward adapter + head"] += size
        else:
            roles["base (shared)"] += size
    if separate_model is not None:
        roles["reward model (separate)"] = sum(p.numel() * p.element_size() for p in separate_model.parameters())
    copies = (["reference"] if beta else []) + (["reward"] if reward else [])
    if copies:
        roles[f"not held: separate {' + '.join(copies)} cop{'ies' if len(copies) > 1 else 'y'}"] = (
            len(copies) * roles["base (shared)"]
        )
    if torch.cuda.is_available():
        roles["CUDA peak allocated"] = torch.cuda.max_memory_allocated()
    return roles


def end_of_run_table(result: dict[str, Any], samples: dict[str, list[dict[str, Any]]]) -> str:
    """The printed summary: steps, mean reward of the first and last 20% of steps, KL, time, memory per role."""
    name = result["algorithm"].upper()
    rows = [
        (f"{name} steps", str(result.get("steps", 0))),
        ("mean reward, first 20% of steps", f"{result.get('reward_first', float('nan')):.4f}"),
        ("mean reward, last 20% of steps", f"{result.get('reward_last', float('nan')):.4f}"),
        ("KL to reference, last step (nats)", f"{result.get('kl_last', float('nan')):.4f}"),
        ("time in training steps", f"{result.get('seconds', 0.0):.1f} s"),
    ]
    rows += [(f"memory: {role}", format_bytes(size)) for role, size in result["memory_bytes"].items()]
    lines = [format_table(rows, (f"{name} run", "value"))]
    for before, after in zip(samples.get("before", []), samples.get("after", []), strict=False):
        lines.append(f"\nprompt: {' '.join(before['query'].split())[:100]}")
        lines.append(f"  before ({before['reward']:+.3f}): {' '.join(before['response'].split())[:100]}")
        lines.append(f"  after  ({after['reward']:+.3f}): {' '.join(after['response'].split())[:100]}")
    return "\n".join(lines)


def train_group_rl(
    data_args: DataArguments, train_args: GRPOConfig, model_args: ModelConfig, rl_args: GroupRLArguments
) -> dict[str, Any]:
    """Run GRPO or RLOO (building the offline SFT and reward stages first when no model is given).

    Returns:
        The run summary written to `stackrlhf_summary.json` in `train_args.output_dir` ({} on other processes).
    """
    check_arguments(data_args, train_args, model_args, rl_args)
    summary: dict[str, Any] = {"stage": rl_args.algorithm, "algorithm": rl_args.algorithm}
    if model_args.model_name_or_path is None:
        stages = offline_stages()
        model_args.model_name_or_path = str(stages.sft_merged)
        rl_args.reward_adapter = str(stages.reward_adapter)
        summary["stages"] = {name: str(path) for name, path in vars(stages).items()}
    check_model_config(model_args, training=True)
    peft_config = build_peft_config(model_args, skeleton_model(model_args)) if model_args.use_peft else None
    train_pairs, eval_pairs = load_splits(data_args)
    tokenizer = load_tokenizer(model_args, padding_side="left")
    model = load_model(model_args)

    context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    room = context - train_args.max_completion_length
    if room < 1 or (rl_args.max_prompt_length or 0) > room:
        raise ConfigError(
            f"max_prompt_length {rl_args.max_prompt_length} + max_completion_length "
            f"{train_args.max_completion_length} exceed the model's {context}-token context."
        )
    room = rl_args.max_prompt_length or room
    prompts = prompts_within(to_prompt_dataset(train_pairs)["query"], tokenizer, room)
    if not prompts:
        raise ConfigError(f"{data_args.dataset_name}: no training prompt of at most {room} tokens.")
    sample_queries = prompts_within(to_prompt_dataset(eval_pairs)["query"], tokenizer, room)
    sample_queries = sample_queries[: rl_args.num_sample_prompts]

    args = train_args if rl_args.algorithm == "grpo" else rloo_config(train_args, rl_args.normalize_advantages)
    reward = LateReward()
    trl_name = "reward_adapter" if rl_args.reward_adapter else "reward_model"
    completions_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    trainer = TRAINERS[rl_args.algorithm](
        model=model,
        reward_funcs=as_trl_reward_func(reward, trl_name),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[StatsCallback(args.output_dir, completions_per_step)],
    )
    policy = trainer.model
    with preserved_rng(args.seed):  # the trainer seeded every generator: loading the reward leaves them as they are
        reward.fn, reward_name, separate_model = build_group_reward(
            policy, tokenizer, rl_args, room + args.max_completion_length
        )
    summary |= {
        "base_model": model_args.model_name_or_path,
        "design": "shared base" if rl_args.reward_adapter else "separate reward model",
        "reward_adapter": rl_args.reward_adapter,
        "reward_model": rl_args.reward_model,
        "reference": "policy adapter disabled" if args.beta else "none (beta 0)",
        "quantization": "8bit" if model_args.load_in_8bit else "4bit" if model_args.load_in_4bit else model_args.dtype,
        "prompts": len(prompts),
        "num_generations": args.num_generations,
        "torch_threads": torch.get_num_threads(),
    }

    main = trainer.accelerator.is_main_process
    samples = {"before": generate_samples(policy, tokenizer, sample_queries, reward.fn, rl_args.sample_max_new_tokens)}
    label_progress(trainer, rl_args.algorithm.upper())
    trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    samples["after"] = generate_samples(policy, tokenizer, sample_queries, reward.fn, rl_args.sample_max_new_tokens)
    if not main:
        return {}
    output_dir = Path(args.output_dir)
    if isinstance(policy, PeftModel):
        policy.save_pretrained(output_dir, selected_adapters=[policy.active_adapter])  # not the reward adapter
    else:
        save_trained_model(trainer, str(output_dir))
    tokenizer.save_pretrained(output_dir)
    write_samples(output_dir, samples)
    records = read_stats(output_dir / STATS_FILE)
    title = f"{rl_args.algorithm.upper()}: {reward_name}"
    plot = plot_stats(records, output_dir / "plots" / "training.png", title, PLOTTED, "step") if records else None
    result = {
        **summary,
        "reward": reward_name,
        **summarize(records),
        "steps": trainer.state.global_step,
        "memory_bytes": memory_roles(policy, reward.fn, separate_model, args.beta),
        "plot": str(plot) if plot else None,
        "processes": trainer.accelerator.num_processes,
    }
    write_summary(output_dir, result)
    print(end_of_run_table(result, samples))
    return result


def main(
    data_args: DataArguments, train_args: GRPOConfig, model_args: ModelConfig, rl_args: GroupRLArguments
) -> dict[str, Any]:
    """Entry point of `recipes/grpo_stackllama.py` and `stackrlhf grpo`."""
    report_memory_plan("grpo", train_args, model_args, rl_args)  # on a CUDA machine: will it fit? one line
    result = train_group_rl(data_args, train_args, model_args, rl_args)
    if result:
        print(
            f"{rl_args.algorithm.upper()} done: policy adapter, stats.jsonl, plots and samples in "
            f"{train_args.output_dir}"
        )
    return result


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The recipe's parser: data, TRL `GRPOConfig`, TRL `ModelConfig` and the recipe's options, with offline
    defaults."""
    return recipe_parser(
        subparsers,
        "grpo",
        RECIPE_HELP["grpo"],
        (DataArguments, GRPOConfig, ModelConfig, GroupRLArguments),
        prog=prog,
        check=check_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(run_recipe(make_parser(), main))
