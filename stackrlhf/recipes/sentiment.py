"""Quick start, the classic TRL example: PPO teaches a small LM to write positive text.

TRL's gpt2-sentiment example (and the gpt-neox-20b one of the 20B-on-24GB write-up) continues movie-review openings
and rewards the positive logit of an IMDB sentiment classifier. Offline, with no arguments, this recipe continues
short story openings with the bundled stories260K model and rewards VADER's compound sentiment of the text (the
`vaderSentiment` lexicon ships in its wheel: no model, no network). `--reward_model NAME` uses any transformers
sentiment classifier instead (its positive logit), e.g. `lvwerra/distilbert-imdb` with Hub access. The policy is a LoRA
adapter with a value head; the reference is the same model with the adapter disabled.

    python recipes/ppo_sentiment.py
    accelerate launch recipes/ppo_sentiment.py --config recipes/configs/ppo_sentiment_gpt_neox_20b.yaml
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import PartialState
from datasets import load_dataset
from transformers import PreTrainedTokenizerBase
from trl import ModelConfig

from stackrlhf.core import set_seed
from stackrlhf.errors import ConfigError
from stackrlhf.models.loading import check_model_config, load_tokenizer
from stackrlhf.planner.verdict import report_memory_plan
from stackrlhf.recipes.ppo import load_policy
from stackrlhf.recipes.runner import recipe_parser, run_recipe
from stackrlhf.rewards.sentiment import ClassifierSentimentReward, VaderSentimentReward
from stackrlhf.trainer.ppo_config import PPOConfig
from stackrlhf.trainer.ppo_trainer import PPOTrainer
from stackrlhf.trainer.rl_loop import RLLoopArguments, prompt_budget, run_rl_loop, tokenize_prompts

REWARD_MODEL_HELP = (
    "A transformers sentiment classifier whose positive-class logit is the reward, e.g. lvwerra/distilbert-imdb "
    "(default: none, VADER's compound sentiment)."
)


@dataclass
class SentimentArguments:
    """The prompts: story openings (bundled), one prompt per line of a text file, or the openings of a dataset's texts
    (TRL's example took the first 2-7 tokens of IMDB reviews)."""

    prompts_file: str | None = field(
        default=None,
        metadata={"help": "A UTF-8 text file with one prompt per line. Default: the bundled story openings."},
    )
    prompts_dataset: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset (e.g. imdb) or a local .jsonl/.json/.csv/.parquet file whose texts are cut into "
            "prompts (its train split); see --prompts_column and --query_min_length."
        },
    )
    prompts_column: str = field(default="text", metadata={"help": "The text column of --prompts_dataset."})
    min_prompt_chars: int = field(
        default=0, metadata={"help": "Skip texts shorter than this many characters (TRL's example: 200)."}
    )
    query_min_length: int | None = field(
        default=None,
        metadata={"help": "Cut each text to its first N tokens, N drawn in [query_min_length, query_max_length)."},
    )
    query_max_length: int | None = field(default=None, metadata={"help": "See --query_min_length (excluded)."})
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

    def __post_init__(self) -> None:
        if self.prompts_file and self.prompts_dataset:
            raise ConfigError("give either --prompts_file or --prompts_dataset, not both.")
        lengths = (self.query_min_length, self.query_max_length)
        if any(value is not None for value in lengths) and not (
            None not in lengths and 0 < self.query_min_length < self.query_max_length
        ):
            raise ConfigError(
                f"need 0 < query_min_length < query_max_length, got {self.query_min_length} and "
                f"{self.query_max_length}."
            )


def bundled_openings() -> list[str]:
    """The bundled story openings (written for this project, one per line)."""
    text = resources.files("stackrlhf.data").joinpath("bundled/stories/openings.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_prompts(args: SentimentArguments, tokenizer: PreTrainedTokenizerBase, seed: int) -> list[str]:
    """The prompts: bundled openings, `prompts_file` lines or `prompts_dataset` texts, filtered and cut to
    `query_*_length` tokens (lengths drawn with `seed`).

    Raises:
        ConfigError: a missing or unreadable source, a missing column, or fewer prompts than held-out ones plus one.
    """
    source = args.prompts_file or args.prompts_dataset or "bundled openings"
    if args.prompts_dataset:
        prompts = _dataset_texts(args.prompts_dataset, args.prompts_column)
    elif args.prompts_file:
        path = Path(args.prompts_file)
        try:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError as err:
            raise ConfigError(f"--prompts_file {path}: no such file.") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"--prompts_file {path}: not UTF-8 text (byte {err.start}).") from err
    else:
        prompts = bundled_openings()
    prompts = [text for text in prompts if len(text) >= args.min_prompt_chars]
    if args.query_min_length is not None:
        rng = np.random.default_rng(seed)
        prompts = [
            tokenizer.decode(
                tokenizer(text, add_special_tokens=False)["input_ids"][
                    : rng.integers(args.query_min_length, args.query_max_length)
                ]
            )
            for text in prompts
        ]
    if len(prompts) <= args.num_heldout_prompts:
        raise ConfigError(
            f"{source}: {len(prompts)} prompts, but {args.num_heldout_prompts} are held out for samples; give more "
            "prompts or lower --num_heldout_prompts."
        )
    return prompts


def _dataset_texts(name: str, column: str) -> list[str]:
    suffixes = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    path = Path(name)
    try:
        if path.suffix in suffixes:
            if not path.is_file():
                raise ConfigError(f"--prompts_dataset {name}: no such file.")
            dataset = load_dataset(suffixes[path.suffix], data_files=str(path), split="train")
        else:
            dataset = load_dataset(name, split="train")
    except (OSError, ValueError) as err:
        raise ConfigError(f"--prompts_dataset {name}: cannot load it ({' '.join(str(err).split())[:200]})") from err
    if column not in dataset.column_names:
        raise ConfigError(f"--prompts_dataset {name}: no column {column!r} (it has {dataset.column_names}).")
    return [str(text).strip() for text in dataset[column] if text and str(text).strip()]


def train_sentiment(
    sentiment_args: SentimentArguments,
    ppo_config: PPOConfig,
    model_args: ModelConfig,
    loop_args: RLLoopArguments,
    **loop_hooks: Any,
) -> dict[str, Any]:
    """Train the policy to write positive continuations; returns the run summary."""
    check_model_config(model_args, training=True)
    if ppo_config.reward_model:
        reward_fn = ClassifierSentimentReward(ppo_config.reward_model, device=PartialState().device)
        reward_name = f"positive logit of {ppo_config.reward_model}"
    else:
        reward_fn, reward_name = VaderSentimentReward(), "VADER compound sentiment"
    set_seed(ppo_config.seed)
    tokenizer = load_tokenizer(model_args, padding_side="left")
    prompts = read_prompts(sentiment_args, tokenizer, ppo_config.seed)
    model = load_policy(model_args, reward_adapter=None, upcast_non_quantized=sentiment_args.upcast_non_quantized)
    room = prompt_budget(model.pretrained_model.config, tokenizer, loop_args)
    heldout, train = prompts[: sentiment_args.num_heldout_prompts], prompts[sentiment_args.num_heldout_prompts :]
    trainer = PPOTrainer(ppo_config, model, ref_model=None, tokenizer=tokenizer)
    return run_rl_loop(
        trainer,
        tokenize_prompts(
            train, tokenizer, room, sentiment_args.prompts_file or sentiment_args.prompts_dataset or "prompts"
        ),
        reward_fn,
        reward_name,
        loop_args,
        sample_queries=heldout[: loop_args.num_sample_prompts],
        summary={"base_model": model_args.model_name_or_path, "design": "shared base (LoRA policy)"},
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
        "Quick start: PPO makes a small LM write positive text (TRL's gpt2-sentiment example). Offline by default: "
        "stories260K continues story openings, VADER scores the sentiment; --reward_model takes a classifier.",
        (SentimentArguments, PPOConfig, ModelConfig, RLLoopArguments),
        prog=prog,
        help_overrides={"reward_model": REWARD_MODEL_HELP},
    )


if __name__ == "__main__":
    raise SystemExit(run_recipe(make_parser(), main))
