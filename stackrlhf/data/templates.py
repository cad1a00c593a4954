"""StackLLaMA's prompt template and the three dataset shapes derived from preference pairs.

A preference dataset has string columns ``question``, ``chosen`` and ``rejected`` (answers only). From it:

- SFT: ``text`` = ``"Question: {question}\\n\\nAnswer: {chosen}"``;
- reward modelling: ``chosen`` / ``rejected`` = the same template with either answer;
- PPO: ``query`` = ``"Question: {question}\\n\\nAnswer: "``, the prompt the policy completes;
- DPO: ``prompt`` = that same query, ``chosen`` / ``rejected`` = the answers alone (TRL's explicit-prompt format).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from datasets import Dataset, Features, Value

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROMPT_TEMPLATE = "Question: {question}\n\nAnswer: "
QUESTION_ANSWER_TEMPLATE = PROMPT_TEMPLATE + "{answer}"


def format_prompt(question: str) -> str:
    """The PPO query for `question`: ``"Question: {question}\\n\\nAnswer: "``."""
    return PROMPT_TEMPLATE.format(question=question)


def format_answer(question: str, answer: str) -> str:
    """The full training text: ``"Question: {question}\\n\\nAnswer: {answer}"``."""
    return QUESTION_ANSWER_TEMPLATE.format(question=question, answer=answer)


def to_sft_dataset(pairs: Dataset) -> Dataset:
    """SFT shape: one column ``text`` holding each question with its chosen answer."""
    return string_dataset(
        {"text": [format_answer(q, a) for q, a in zip(pairs["question"], pairs["chosen"], strict=True)]}
    )


def to_reward_dataset(pairs: Dataset) -> Dataset:
    """Reward-model shape: columns ``chosen`` and ``rejected``, each the question with that answer."""
    questions = list(pairs["question"])
    return string_dataset(
        {
            "chosen": [format_answer(q, a) for q, a in zip(questions, pairs["chosen"], strict=True)],
            "rejected": [format_answer(q, a) for q, a in zip(questions, pairs["rejected"], strict=True)],
        }
    )


def to_dpo_dataset(pairs: Dataset) -> Dataset:
    """DPO shape: columns ``prompt`` (the question's prompt, ending in ``"Answer: "``), ``chosen`` and ``rejected``
    (the answers alone), the explicit-prompt preference format of TRL's `DPOTrainer`."""
    return string_dataset(
        {
            "prompt": [format_prompt(q) for q in pairs["question"]],
            "chosen": list(pairs["chosen"]),
            "rejected": list(pairs["rejected"]),
        }
    )


def to_prompt_dataset(pairs: Dataset) -> Dataset:
    """PPO shape: one column ``query`` holding each question's prompt, ending in ``"Answer: "``."""
    return string_dataset({"query": [format_prompt(q) for q in pairs["question"]]})


def string_dataset(columns: dict[str, list[str]]) -> Dataset:
    """An in-memory dataset of string columns (typed as strings even when it has no rows)."""
    return Dataset.from_dict(columns, features=Features({name: Value("string") for name in columns}))


def prompts_within(prompts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_prompt_tokens: int) -> list[str]:
    """The prompts of at most `max_prompt_tokens` tokens, in order (to fit a small model's context)."""
    if not prompts:
        return []
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    return [prompt for prompt, length in zip(prompts, lengths, strict=True) if length <= max_prompt_tokens]
