"""PPO, StackLLaMA's third stage, on one shared base model: policy, reference, value head and reward in one copy.

The base model (the merged SFT model; bf16, 8-bit or 4-bit) is loaded once. It carries

* the policy: a new LoRA adapter, with a value head on the last hidden state (`AutoModelForCausalLMWithValueHead`);
* the reference: the same base with the adapter disabled (`ref_model=None`), for the per-token KL penalty;
* the reward model: the reward recipe's LoRA adapter and score head (`--reward_adapter`), switched in with peft's
  multi-adapter API under `torch.no_grad` and switched back even if scoring fails.

`--reward_model PATH` instead scores with a separate sequence-classification model (optionally 8-bit), as the
published StackLLaMA scripts did. With no model arguments at all, the SFT and reward stages are first run on the
bundled data with the tiny model (or reused from the cache), so a bare `accelerate launch recipes/ppo_stackllama.py`
is a complete offline demo. For Llama-2-7B:

    accelerate launch recipes/ppo_stackllama.py --config llama-2-7b/ppo
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from typing import Any

from accelerate import PartialState
from trl import ModelConfig, get_quantization_config

from stackrlhf.core import set_seed
from stackrlhf.data import (
    DataArguments,
    load_splits,
    prompt_budget,
    prompts_within,
    to_prompt_dataset,
    tokenize_prompts,
)
from stackrlhf.errors import ConfigError
from stackrlhf.models.loading import (
    build_peft_config,
    check_model_config,
    check_model_path,
    load_tokenizer,
    skeleton_model,
)
from stackrlhf.models.modeling_value_head import AutoModelForCausalLMWithValueHead
from stackrlhf.planner.verdict import report_memory_plan
from stackrlhf.recipes import RECIPE_HELP
from stackrlhf.recipes.runner import recipe_parser, run_recipe
from stackrlhf.recipes.stages import offline_stages
from stackrlhf.rewards.build import build_reward, check_base_and_reward, check_reward_source
from stackrlhf.trainer.ppo_config import PPOConfig
from stackrlhf.trainer.ppo_trainer import PPOTrainer
from stackrlhf.trainer.reporting import tensor_bytes
from stackrlhf.trainer.rl_loop import RLLoopArguments, run_rl_loop, run_settings

logger = logging.getLogger(__name__)

REWARD_MODEL_HELP = (
    "A separate sequence-classification reward model (path or Hub name) instead of --reward_adapter, as StackLLaMA "
    "scored (default: none)."
)


@dataclass
class SharedBaseArguments:
    """How the one base model is shared: the reward adapter it carries (or, instead, a separate `--reward_model`, a
    field of `PPOConfig`) and the dtype its non-quantized weights keep."""

    reward_adapter: str | None = field(
        default=None,
        metadata={
            "help": "The reward recipe's LoRA adapter (with its score head), trained on the same base as "
            "--model_name_or_path; loaded as a second adapter on the policy's base model."
        },
    )
    reward_model_load_in_8bit: bool = field(
        default=False, metadata={"help": "Load the separate --reward_model in 8-bit (StackLLaMA did)."}
    )
    upcast_non_quantized: bool = field(
        default=True,
        metadata={
            "help": "With --load_in_8bit/--load_in_4bit: upcast the non-quantized weights (embeddings, lm_head, "
            "norms) to float32, as peft's prepare_model_for_kbit_training and TRL 0.11.4 do. false keeps them in "
            "--dtype (e.g. bfloat16): less memory (1.2 GiB for gpt-neox-20b) and 16-bit activations."
        },
    )


def check_arguments(base_args: SharedBaseArguments, ppo_config: PPOConfig, model_args: ModelConfig) -> None:
    """Reject contradictory or incomplete settings before anything loads.

    Raises:
        ConfigError: both or (with an explicit model) neither reward source, a reward adapter without LoRA, a
            reward adapter directory that is not one (or lacks its weights), a missing or broken local model
            directory, or 8-bit loading asked for a reward model that is not there.
    """
    check_reward_source(base_args.reward_adapter, ppo_config.reward_model)
    if base_args.reward_model_load_in_8bit and not ppo_config.reward_model:
        raise ConfigError("--reward_model_load_in_8bit applies to a separate --reward_model, and none is given.")
    if ppo_config.reward_model:
        check_model_path(ppo_config.reward_model, "reward_model")
    check_base_and_reward(
        model_args.model_name_or_path,
        base_args.reward_adapter,
        ppo_config.reward_model,
        use_peft=model_args.use_peft,
        base_role="PPO's base",
    )
    if model_args.model_name_or_path is None:
        return
    check_model_config(model_args, training=True)
    check_model_path(model_args.model_name_or_path, "model_name_or_path")


def check_parsed(
    data_args: DataArguments,
    ppo_config: PPOConfig,
    model_args: ModelConfig,
    base_args: SharedBaseArguments,
    loop_args: RLLoopArguments,
) -> None:
    """`check_arguments` on the recipe's parsed options, where they are parsed (`--dry_run` too)."""
    check_arguments(base_args, ppo_config, model_args)


def load_policy(
    model_args: ModelConfig, reward_adapter: str | None, *, upcast_non_quantized: bool = True
) -> AutoModelForCausalLMWithValueHead:
    """The base model once, with a new policy LoRA adapter, a value head and (optionally) the reward adapter;
    `upcast_non_quantized` as in `SharedBaseArguments`."""
    name = model_args.model_name_or_path
    peft_config = build_peft_config(model_args, skeleton_model(model_args)) if model_args.use_peft else None
    kwargs: dict[str, Any] = {
        "dtype": model_args.dtype or "float32",
        "peft_config": peft_config,
        "upcast_non_quantized": upcast_non_quantized,
    }
    if (quantization_config := get_quantization_config(model_args)) is not None:
        kwargs["quantization_config"] = quantization_config
    if reward_adapter:
        kwargs["reward_adapter"] = reward_adapter
    try:
        return AutoModelForCausalLMWithValueHead.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        what = f"--reward_adapter {reward_adapter}" if reward_adapter and "adapter" in str(err) else name
        raise ConfigError(f"cannot load {what}: {' '.join(str(err).split())[:300]}") from err


def train_ppo(
    data_args: DataArguments,
    ppo_config: PPOConfig,
    model_args: ModelConfig,
    base_args: SharedBaseArguments,
    loop_args: RLLoopArguments,
    **loop_hooks: Any,
) -> dict[str, Any]:
    """Run StackLLaMA's RL stage (building the offline SFT and reward stages first when no model is given).

    Returns:
        The run summary written to `stackrlhf_summary.json` in `loop_args.output_dir` ({} on non-main processes).
    """
    check_arguments(base_args, ppo_config, model_args)
    summary: dict[str, Any] = {}
    if model_args.model_name_or_path is None:
        stages = offline_stages()
        model_args.model_name_or_path = str(stages.sft_merged)
        base_args.reward_adapter = str(stages.reward_adapter)
        summary["stages"] = {name: str(path) for name, path in vars(stages).items()}
    check_model_config(model_args, training=True)
    summary |= {
        "base_model": model_args.model_name_or_path,
        "design": "shared base" if base_args.reward_adapter else "separate reward model",
        "reward_adapter": base_args.reward_adapter,
        "reward_model": ppo_config.reward_model,
        "quantization": "8bit" if model_args.load_in_8bit else "4bit" if model_args.load_in_4bit else model_args.dtype,
    }

    set_seed(ppo_config.seed)  # the new adapter's and value head's initial weights depend on it
    tokenizer = load_tokenizer(model_args, padding_side="left")
    model = load_policy(model_args, base_args.reward_adapter, upcast_non_quantized=base_args.upcast_non_quantized)
    train_pairs, eval_pairs = load_splits(data_args)
    room = prompt_budget(model.pretrained_model.config, tokenizer, loop_args)
    prompts = tokenize_prompts(to_prompt_dataset(train_pairs)["query"], tokenizer, room, data_args.dataset_name)

    reward = build_reward(
        model,
        tokenizer,
        reward_adapter=base_args.reward_adapter,
        reward_model=ppo_config.reward_model,
        reward_model_load_in_8bit=base_args.reward_model_load_in_8bit,
        batch_size=loop_args.reward_batch_size,
        max_length=room + loop_args.output_max_length,
        device=PartialState().device,
    )
    extra_roles: dict[str, int] = {}
    if reward.separate_model is not None:
        extra_roles["reward model (separate)"] = tensor_bytes(reward.separate_model.parameters())
    # built last: it seeds every generator (ppo_config.seed), so the run does not depend on what loaded before it
    trainer = PPOTrainer(ppo_config, model, ref_model=None, tokenizer=tokenizer)

    sample_queries = prompts_within(to_prompt_dataset(eval_pairs)["query"], tokenizer, room)
    sample_queries = sample_queries[: loop_args.num_sample_prompts]
    return run_rl_loop(
        trainer,
        prompts,
        reward.fn,
        reward.name,
        loop_args,
        sample_queries=sample_queries,
        summary=summary,
        extra_roles=extra_roles,
        settings=run_settings(data_args, ppo_config, model_args, base_args, loop_args),
        **loop_hooks,
    )


def main(
    data_args: DataArguments,
    ppo_config: PPOConfig,
    model_args: ModelConfig,
    base_args: SharedBaseArguments,
    loop_args: RLLoopArguments,
) -> dict[str, Any]:
    """Entry point of `recipes/ppo_stackllama.py` and `stackrlhf ppo`."""
    report_memory_plan("ppo", ppo_config, model_args, base_args, loop_args)  # on a CUDA machine: will it fit?
    result = train_ppo(data_args, ppo_config, model_args, base_args, loop_args)
    if result:
        print(f"PPO done: policy adapter, value head, stats.jsonl, plots and samples in {loop_args.output_dir}")
    return result


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The recipe's parser: data, `PPOConfig`, TRL `ModelConfig`, reward and loop options, with offline defaults."""
    return recipe_parser(
        subparsers,
        "ppo",
        RECIPE_HELP["ppo"],
        (DataArguments, PPOConfig, ModelConfig, SharedBaseArguments, RLLoopArguments),
        prog=prog,
        help_overrides={"reward_model": REWARD_MODEL_HELP},
        check=check_parsed,
    )


if __name__ == "__main__":
    raise SystemExit(run_recipe(make_parser(), main))
