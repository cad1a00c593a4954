"""Quick start, the classic TRL example: PPO teaches a small LM to write positive text.

TRL's gpt2-sentiment example (and the gpt-neox-20b one of the 20B-on-24GB write-up) continues movie-review openings
and rewards the positive logit of an IMDB sentiment classifier. Offline, with no arguments, this recipe continues
short story openings with the bundled stories260K model and rewards VADER's compound sentiment of the text (the
`vaderSentiment` lexicon ships in its wheel: no model, no network). `--reward_model NAME` uses any transformers
sentiment classifier instead (its positive logit), e.g. `lvwerra/distilbert-imdb` with Hub access. The policy is a LoRA
adapter with a value head; the reference is the same model with the adapter disabled.

    python recipes/ppo_sentiment.py
    accelerate launch recipes/ppo_sentiment.py --config gpt-neox-20b/sentiment
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from trl import ModelConfig

from stackrlhf.core import set_seed
from stackrlhf.data.prompts import PromptArguments, prompt_budget, read_prompts, tokenize_prompts
from stackrlhf.errors import ConfigError
from stackrlhf.models.loading import check_model_config, check_model_path, load_tokenizer
from stackrlhf.planner.verdict import report_memory_plan
from stackrlhf.recipes import RECIPE_HELP
from stackrlhf.recipes.ppo import load_policy
from stackrlhf.recipes.runner import recipe_parser, run_recipe
from stackrlhf.rewards.build import build_sentiment_reward
from stackrlhf.trainer.ppo_config import PPOConfig
from stackrlhf.trainer.ppo_trainer import PPOTrainer
from stackrlhf.trainer.reporting import tensor_bytes
from stackrlhf.trainer.rl_loop import RLLoopArguments, run_rl_loop, run_settings

REWARD_MODEL_HELP = (
    "A transformers sentiment classifier whose positive-class logit is the reward, e.g. lvwerra/distilbert-imdb "
    "(default: none, VADER's compound sentiment)."
)


@dataclass
class SentimentArguments(PromptArguments):
    """The prompts (`PromptArguments`: bundled story openings, a text file or a dataset's texts), how many of them are
    held out for samples, and how a quantized base keeps its other weights."""

    num_heldout_prompts: int = field(
        default=8, metadata={"help": "Prompts kept out of training for the before/after samples."}
    )
    upcast_non_quantized: bool = field(
        default=True,
        metadata={
            "help": "With --load_in_8bit/--load_in_4bit: upcast embeddings, lm_head and norms to float32 (peft's and "
            "TRL 0.11.4's default); false keeps them in --dtype, as the 20B write-up kept its embeddings 16-bit."
        },
    )


def check_arguments(
    sentiment_args: SentimentArguments,
    ppo_config: PPOConfig,
    model_args: ModelConfig,
    loop_args: RLLoopArguments,
) -> None:
    """The recipe's checks that need no model or data, run where the options are parsed (`--dry_run` too).

    Raises:
        ConfigError: conflicting model settings, a missing or broken local model or classifier directory, or a
            missing prompts file.
    """
    check_model_config(model_args, training=True)
    check_model_path(model_args.model_name_or_path, "model_name_or_path")
    if ppo_config.reward_model:
        check_model_path(ppo_config.reward_model, "reward_model")
    if sentiment_args.prompts_file and not Path(sentiment_args.prompts_file).expanduser().is_file():
        raise ConfigError(f"--prompts_file {sentiment_args.prompts_file}: no such file.")


def train_sentiment(
    sentiment_args: SentimentArguments,
    ppo_config: PPOConfig,
    model_args: ModelConfig,
    loop_args: RLLoopArguments,
    **loop_hooks: Any,
) -> dict[str, Any]:
    """Train the policy to write positive continuations; returns the run summary."""
    check_model_config(model_args, training=True)
    reward = build_sentiment_reward(ppo_config.reward_model, device=PartialState().device)
    set_seed(ppo_config.seed)
    tokenizer = load_tokenizer(model_args, padding_side="left")
    prompts = read_prompts(sentiment_args, tokenizer, ppo_config.seed, num_heldout=sentiment_args.num_heldout_prompts)
    model = load_policy(model_args, reward_adapter=None, upcast_non_quantized=sentiment_args.upcast_non_quantized)
    room = prompt_budget(model.pretrained_model.config, tokenizer, loop_args)
    heldout, train = prompts[: sentiment_args.num_heldout_prompts], prompts[sentiment_args.num_heldout_prompts :]
    extra_roles: dict[str, int] = {}
    if reward.separate_model is not None:  # a sentiment classifier
        extra_roles["reward model (separate)"] = tensor_bytes(reward.separate_model.parameters())
    trainer = PPOTrainer(ppo_config, model, ref_model=None, tokenizer=tokenizer)
    return run_rl_loop(
        trainer,
        tokenize_prompts(
            train, tokenizer, room, sentiment_args.prompts_file or sentiment_args.prompts_dataset or "prompts"
        ),
        reward.fn,
        reward.name,
        loop_args,
        sample_queries=heldout[: loop_args.num_sample_prompts],
        summary={"base_model": model_args.model_name_or_path, "design": "shared base (LoRA policy)"},
        extra_roles=extra_roles,
        settings=run_settings(sentiment_args, ppo_config, model_args, loop_args),
        **loop_hooks,
    )


def main(
    sentiment_args: SentimentArguments,
    ppo_config: PPOConfig,
    model_args: ModelConfig,
    loop_args: RLLoopArguments,
) -> dict[str, Any]:
    """Entry point of `recipes/ppo_sentiment.py` and `stackrlhf sentiment`."""
    report_memory_plan("sentiment", sentiment_args, ppo_config, model_args, loop_args)  # on CUDA: will it fit?
    return train_sentiment(sentiment_args, ppo_config, model_args, loop_args)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The recipe's parser: prompts, `PPOConfig`, TRL `ModelConfig` and loop options, with offline defaults."""
    return recipe_parser(
        subparsers,
        "sentiment",
        RECIPE_HELP["sentiment"],
        (SentimentArguments, PPOConfig, ModelConfig, RLLoopArguments),
        prog=prog,
        help_overrides={"reward_model": REWARD_MODEL_HELP},
        check=check_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(run_recipe(make_parser(), main))
