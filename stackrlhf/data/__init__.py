"""Preference data for StackLLaMA-style RLHF.

Every source (Stack Exchange paired rows, Anthropic HH-RLHF dialogues, any file or Hub dataset with a column mapping,
or the bundled HH-RLHF sample) becomes a dataset of preference rows with string columns ``question``, ``chosen`` and
``rejected``, from which the SFT, reward-model and PPO shapes are derived::

    train, held_out = load_splits(DataArguments())
    sft_train = to_sft_dataset(train)  # "text": "Question: ...\\n\\nAnswer: <chosen>"

Prompt-only data (an RL stage's prompts, no answers) comes from `read_prompts` (`PromptArguments`: the bundled story
openings, a text file or a dataset column) and is tokenized for the RL loop by `tokenize_prompts`.
"""

from stackrlhf.data.arguments import DataArguments
from stackrlhf.data.formats import DATASET_FORMATS, PreferencePair, parse_column_mapping, split_hh_dialogues
from stackrlhf.data.loading import LoadedPairs, load_preference_pairs
from stackrlhf.data.prompts import (
    PromptArguments,
    Prompts,
    bundled_openings,
    prompt_budget,
    read_prompts,
    tokenize_prompts,
)
from stackrlhf.data.sources import BUNDLED_DATASET
from stackrlhf.data.splits import load_splits, split_pairs
from stackrlhf.data.templates import (
    PROMPT_TEMPLATE,
    QUESTION_ANSWER_TEMPLATE,
    format_answer,
    format_prompt,
    prompts_within,
    to_dpo_dataset,
    to_prompt_dataset,
    to_reward_dataset,
    to_sft_dataset,
)

__all__ = [
    "BUNDLED_DATASET",
    "DATASET_FORMATS",
    "PROMPT_TEMPLATE",
    "QUESTION_ANSWER_TEMPLATE",
    "DataArguments",
    "LoadedPairs",
    "PreferencePair",
    "PromptArguments",
    "Prompts",
    "bundled_openings",
    "format_answer",
    "format_prompt",
    "load_preference_pairs",
    "load_splits",
    "parse_column_mapping",
    "prompt_budget",
    "prompts_within",
    "read_prompts",
    "split_hh_dialogues",
    "split_pairs",
    "to_dpo_dataset",
    "to_prompt_dataset",
    "to_reward_dataset",
    "to_sft_dataset",
    "tokenize_prompts",
]
