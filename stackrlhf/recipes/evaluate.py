"""Evaluate a PPO policy against its reference: mean reward of each on held-out prompts and the policy's win rate.

The policy is a PPO output directory (LoRA adapter + value head). Its reference is the same base model with the
adapter disabled, so both generate from one model in memory. Each held-out prompt gets `--samples_per_prompt` responses
from each, the k-th of both drawn with the same seed (`--seed` + k), and all are scored by the run's reward (read from
its `stackrlhf_summary.json`) or by `--reward_adapter` / `--reward_model`. The win rate is over every (prompt, k) pair
and counts ties as half a win. The offline demo has 42 held-out prompts: with 4 samples each the win rate rests on 168
comparisons (standard error at most 0.04 for independent ones), where one sample per prompt left it within the noise
of a single run (0.08).

    python recipes/evaluate_policy.py --policy_path outputs/ppo
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from trl import ModelConfig

from stackrlhf.core import set_seed
from stackrlhf.data import DataArguments, load_splits, prompts_within, to_prompt_dataset
from stackrlhf.errors import ConfigError
from stackrlhf.models.loading import check_adapter_dir, check_model_path, load_tokenizer, read_adapter, read_json
from stackrlhf.models.modeling_value_head import AutoModelForCausalLMWithValueHead
from stackrlhf.recipes import RECIPE_HELP
from stackrlhf.recipes.runner import recipe_parser, run_recipe
from stackrlhf.recipes.validation import check_output_file
from stackrlhf.rewards.build import build_reward, check_reward_source
from stackrlhf.rewards.contract import check_rewards
from stackrlhf.trainer.reporting import SUMMARY_FILE

EVALUATION_FILE = "evaluation.json"


@dataclass
class EvaluateArguments:
    """What to evaluate, with which reward, on how many prompts."""

    policy_path: str = field(
        default="outputs/ppo", metadata={"help": "A PPO output directory (policy LoRA adapter + value head)."}
    )
    reward_adapter: str | None = field(
        default=None, metadata={"help": "Reward LoRA adapter on the policy's base. Default: the PPO run's reward."}
    )
    reward_model: str | None = field(
        default=None, metadata={"help": "A separate sequence-classification reward model. Default: the run's."}
    )
    num_prompts: int = field(default=100, metadata={"help": "Held-out prompts to evaluate on."})
    max_prompt_length: int = field(default=64, metadata={"help": "Skip prompts longer than this many tokens."})
    max_new_tokens: int = field(default=48, metadata={"help": "Response length budget in tokens."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generation and scoring batch."})
    do_sample: bool = field(default=True, metadata={"help": "Sample responses (top_k 0, top_p 1); false: greedy."})
    samples_per_prompt: int = field(
        default=4,
        metadata={"help": "Responses per prompt from each of policy and reference (seeds --seed, --seed + 1, ...)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the sampling (the same for policy and reference)."})
    output_file: str | None = field(
        default=None, metadata={"help": f"Where to write the JSON report. Default: POLICY_PATH/{EVALUATION_FILE}."}
    )


def check_arguments(eval_args: EvaluateArguments, data_args: DataArguments) -> None:
    """The recipe's checks that need no model or data, run where the options are parsed (`--dry_run` too). A
    `--policy_path` that does not exist yet passes (a dry run may precede the PPO run); loading it tells.

    Raises:
        ConfigError: a policy directory that is no adapter, both reward sources or a broken one, a report
            file that cannot be written, or fewer than one sample per prompt.
    """
    if eval_args.samples_per_prompt < 1:
        raise ConfigError(f"--samples_per_prompt must be at least 1, got {eval_args.samples_per_prompt}.")
    if Path(eval_args.policy_path).exists():
        if read_adapter(eval_args.policy_path) is None:
            raise ConfigError(
                f"--policy_path {eval_args.policy_path}: no adapter_config.json, so not a PPO output directory."
            )
        check_adapter_dir(eval_args.policy_path, "policy_path")
    check_reward_source(eval_args.reward_adapter, eval_args.reward_model)
    if eval_args.reward_model:
        check_model_path(eval_args.reward_model, "reward_model")
    if eval_args.output_file:
        check_output_file(eval_args.output_file, "output_file")
    elif Path(eval_args.policy_path).is_dir():
        check_output_file(Path(eval_args.policy_path, EVALUATION_FILE), "policy_path")


def reward_source(args: EvaluateArguments) -> tuple[str | None, str | None]:
    """`(reward_adapter, reward_model)`: the arguments', else the PPO run's own (its summary file), checked by
    `check_reward_source`.

    Raises:
        ConfigError: no reward given and none recorded, both given, or a reward adapter that is not one.
    """
    reward_adapter, reward_model = args.reward_adapter, args.reward_model
    if not (reward_adapter or reward_model):
        summary_path = Path(args.policy_path, SUMMARY_FILE)
        summary = read_json(summary_path) if summary_path.is_file() else {}
        reward_adapter, reward_model = summary.get("reward_adapter"), summary.get("reward_model")
        if not (reward_adapter or reward_model):
            raise ConfigError(
                f"{args.policy_path}: no reward recorded in {SUMMARY_FILE}; pass --reward_adapter or --reward_model."
            )
    check_reward_source(reward_adapter, reward_model)
    return reward_adapter, reward_model


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[str], args: EvaluateArguments, seed: int) -> list[str]:
    """One response per prompt from `model` (a transformers or peft causal LM), batched, left-padded."""
    torch.manual_seed(seed)
    responses = []
    for start in range(0, len(prompts), args.batch_size):
        batch = tokenizer(prompts[start : start + args.batch_size], return_tensors="pt", padding=True)
        batch = batch.to(model.device)
        output = model.generate(
            **batch,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            top_k=0,
            top_p=1.0,
            pad_token_id=tokenizer.pad_token_id,
        )
        responses += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return responses


def evaluate_policy(args: EvaluateArguments, data_args: DataArguments) -> dict[str, Any]:
    """Generate with policy and reference on held-out prompts, score both, write and return the report."""
    adapter = read_adapter(args.policy_path)
    if adapter is None:
        raise ConfigError(f"--policy_path {args.policy_path}: no adapter_config.json, so not a PPO output directory.")
    reward_adapter, reward_model = reward_source(args)
    set_seed(args.seed)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        args.policy_path, **({"reward_adapter": reward_adapter} if reward_adapter else {})
    )
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=adapter.tokenizer_source), padding_side="left")
    reward = build_reward(
        model,
        tokenizer,
        reward_adapter=reward_adapter,
        reward_model=reward_model,
        batch_size=args.batch_size,
        max_length=args.max_prompt_length + args.max_new_tokens + 1,
    )

    _, eval_pairs = load_splits(data_args)
    held_out = to_prompt_dataset(eval_pairs)["query"]
    fitting = prompts_within(held_out, tokenizer, args.max_prompt_length)
    prompts = fitting[: args.num_prompts]
    if not prompts:
        raise ConfigError(f"no held-out prompt is at most {args.max_prompt_length} tokens; raise --max_prompt_length.")
    lm = model.pretrained_model.eval()
    lm.set_adapter("default")
    policy_responses, reference_responses = [], []
    for sample in range(args.samples_per_prompt):  # the same seed for both: the same sampling noise
        policy_responses += generate(lm, tokenizer, prompts, args, args.seed + sample)
        with lm.disable_adapter():
            reference_responses += generate(lm, tokenizer, prompts, args, args.seed + sample)
    queries = prompts * args.samples_per_prompt

    rewards = {}
    for name, responses in tqdm({"policy": policy_responses, "reference": reference_responses}.items(), desc="score"):
        texts = [q + r for q, r in zip(queries, responses, strict=True)]
        rewards[name] = np.array(check_rewards(reward.fn(texts), texts, reward.name, step=0))
    wins = (rewards["policy"] > rewards["reference"]) + 0.5 * (rewards["policy"] == rewards["reference"])
    report = {
        "policy": args.policy_path,
        "base_model": adapter.base_model,
        "reward_adapter": reward_adapter,
        "reward_model": reward_model,
        "num_prompts": len(prompts),
        "held_out_prompts": len(held_out),
        "prompts_too_long": len(held_out) - len(fitting),
        "num_comparisons": len(queries),
        "policy_mean_reward": float(rewards["policy"].mean()),
        "reference_mean_reward": float(rewards["reference"].mean()),
        "win_rate": float(wins.mean()),
        "settings": asdict(args),
        "samples": [
            {"query": q, "policy": p, "policy_reward": float(rp), "reference": r, "reference_reward": float(rr)}
            for q, p, rp, r, rr in zip(
                queries, policy_responses, rewards["policy"], reference_responses, rewards["reference"], strict=True
            )
        ],
    }
    output_file = Path(args.output_file or Path(args.policy_path, EVALUATION_FILE))
    output_file.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def main(eval_args: EvaluateArguments, data_args: DataArguments) -> dict[str, Any]:
    """Entry point of `recipes/evaluate_policy.py` and `stackrlhf evaluate`."""
    report = evaluate_policy(eval_args, data_args)
    if report["num_prompts"] < eval_args.num_prompts:  # say why fewer prompts than asked
        print(
            f"--num_prompts {eval_args.num_prompts}: evaluating {report['num_prompts']}, all there are: of the "
            f"{report['held_out_prompts']} held-out prompts (--eval_samples), {report['prompts_too_long']} are longer "
            f"than --max_prompt_length {eval_args.max_prompt_length} tokens."
        )
    print(
        f"{report['num_prompts']} held-out prompts x {eval_args.samples_per_prompt} samples: mean reward policy "
        f"{report['policy_mean_reward']:.4f}, reference "
        f"{report['reference_mean_reward']:.4f}; policy win rate {report['win_rate']:.3f} "
        f"(report: {eval_args.output_file or Path(eval_args.policy_path, EVALUATION_FILE)})"
    )
    return report


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The recipe's parser: what to evaluate, the data of the held-out prompts, run options."""
    return recipe_parser(
        subparsers,
        "evaluate",
        RECIPE_HELP["evaluate"],
        (EvaluateArguments, DataArguments),
        prog=prog,
        check=check_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(run_recipe(make_parser(), main))
