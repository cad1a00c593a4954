"""The three training shapes and StackLLaMA's template strings."""

from datasets import Dataset

from stackrlhf.data import (
    PROMPT_TEMPLATE,
    QUESTION_ANSWER_TEMPLATE,
    format_answer,
    format_prompt,
    to_prompt_dataset,
    to_reward_dataset,
    to_sft_dataset,
)

PAIRS = Dataset.from_dict(
    {"question": ["How?", "Why?"], "chosen": ["Like this.", "Because."], "rejected": ["No idea.", "Dunno."]}
)


def test_template_strings_are_stackllamas():
    assert PROMPT_TEMPLATE == "Question: {question}\n\nAnswer: "
    assert QUESTION_ANSWER_TEMPLATE == "Question: {question}\n\nAnswer: {answer}"
    assert format_prompt("How?") == "Question: How?\n\nAnswer: "
    assert format_answer("How?", "Like this.") == "Question: How?\n\nAnswer: Like this."


def test_sft_shape_pairs_each_question_with_its_chosen_answer():
    sft = to_sft_dataset(PAIRS)
    assert sft.column_names == ["text"]
    assert sft["text"] == ["Question: How?\n\nAnswer: Like this.", "Question: Why?\n\nAnswer: Because."]


def test_reward_shape_templates_both_answers():
    reward = to_reward_dataset(PAIRS)
    assert reward.column_names == ["chosen", "rejected"]
    assert reward[0] == {
        "chosen": "Question: How?\n\nAnswer: Like this.",
        "rejected": "Question: How?\n\nAnswer: No idea.",
    }
    assert reward[1] == {
        "chosen": "Question: Why?\n\nAnswer: Because.",
        "rejected": "Question: Why?\n\nAnswer: Dunno.",
    }


def test_prompt_shape_ends_with_the_answer_cue():
    prompts = to_prompt_dataset(PAIRS)
    assert prompts.column_names == ["query"]
    assert prompts["query"] == ["Question: How?\n\nAnswer: ", "Question: Why?\n\nAnswer: "]


def test_empty_pairs_give_empty_string_columns():
    empty = PAIRS.select([])
    for shaped, columns in [
        (to_sft_dataset(empty), ["text"]),
        (to_reward_dataset(empty), ["chosen", "rejected"]),
        (to_prompt_dataset(empty), ["query"]),
    ]:
        assert shaped.num_rows == 0
        assert shaped.column_names == columns
        assert all(feature.dtype == "string" for feature in shaped.features.values())


def test_prompts_within_keeps_short_prompts_in_order(tiny_model_dir):
    from transformers import AutoTokenizer

    from stackrlhf.data import prompts_within

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = ["a b", "a b c d e f g h i j", "c"]
    assert prompts_within(prompts, tokenizer, 5) == ["a b", "c"]
    assert prompts_within([], tokenizer, 5) == []
