"""The RL prompts: stackrlhf's preference data as chatllama's example sampler, with the context checked up front."""

from __future__ import annotations

import random
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from stackrlhf.data import DataArguments, load_splits, to_prompt_dataset
from stackrlhf.errors import ConfigError


def load_prompts(data_args: DataArguments) -> list[str]:
    """The training rows of `data_args`' data as PPO queries: ``"Question: {q}\\n\\nAnswer: "``."""
    train_pairs, _ = load_splits(data_args)
    return list(to_prompt_dataset(train_pairs)["query"])


class PromptSampler:
    """chatllama's `ExamplesSampler`: `sample(n)` draws n distinct prompts with `random.sample` (seeded here)."""

    def __init__(self, prompts: Sequence[str], seed: int = 0) -> None:
        if not prompts:
            raise ConfigError("no prompts to train on.")
        self.prompts = list(prompts)
        self.random = random.Random(seed)

    def sample(self, n: int) -> list[str]:
        if n > len(self.prompts):
            raise ConfigError(f"trainer_config.num_examples {n}: only {len(self.prompts)} prompts to sample from.")
        return self.random.sample(self.prompts, n)


def check_prompt_lengths(
    prompts: Sequence[str], tokenizer: PreTrainedTokenizerBase, context_length: int, min_tokens: int
) -> None:
    """Every prompt must leave `min_tokens` (at least 1) tokens of the context for its completion.

    chatllama truncates prompts to the context and then fails mid-training with "prompt too long" (its issue #299);
    this fails before any model is trained.

    Raises:
        ConfigError: naming the first prompt that is too long, its length and the context.
    """
    limit = context_length - max(min_tokens, 1)
    for index, ids in enumerate(tokenizer(list(prompts), add_special_tokens=True)["input_ids"]):
        if len(ids) > limit:
            raise ConfigError(
                f"actor_config.max_sequence_length {context_length}: prompt {index} has {len(ids)} tokens, more than "
                f"the {limit} that leave min_tokens {min_tokens} for the completion; shorten or filter the prompts."
            )
