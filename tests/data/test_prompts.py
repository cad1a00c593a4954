"""Prompt-only data: bundled openings, a text file or a dataset column; cut, tokenized, budgeted; one-line errors."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from stackrlhf.data import PromptArguments, bundled_openings, prompt_budget, read_prompts, tokenize_prompts
from stackrlhf.errors import ConfigError
from stackrlhf.trainer.rl_loop import RLLoopArguments


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_the_bundled_openings_are_the_default(tokenizer):
    openings = bundled_openings()
    assert len(openings) == 64 and all(line == line.strip() and line for line in openings)
    assert read_prompts(PromptArguments(), tokenizer, seed=0) == openings


def test_prompts_from_a_local_dataset_are_cut_to_query_lengths(tmp_path, tokenizer):
    rows = [{"review": f"Review number {i}: this film has a long and winding plot about a dog."} for i in range(12)]
    rows.append({"review": "short"})
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = PromptArguments(
        prompts_dataset=str(path), prompts_column="review", min_prompt_chars=20, query_min_length=2, query_max_length=5
    )
    prompts = read_prompts(args, tokenizer, seed=0)
    assert len(prompts) == 12
    assert all(2 <= len(tokenizer(p, add_special_tokens=False)["input_ids"]) <= 5 for p in prompts)
    assert prompts == read_prompts(args, tokenizer, seed=0)


def test_a_dataset_skips_empty_texts_and_reads_other_values_as_text(tmp_path, tokenizer):
    path = tmp_path / "rows.csv"
    path.write_text("text,label\n  first prompt  ,1\n,0\n   ,0\nsecond,1\n")
    assert read_prompts(PromptArguments(prompts_dataset=str(path)), tokenizer, seed=0) == ["first prompt", "second"]
    path = tmp_path / "numbers.jsonl"
    path.write_text('{"text": 42}\n{"text": null}\n{"text": "words"}\n')
    assert read_prompts(PromptArguments(prompts_dataset=str(path)), tokenizer, seed=0) == ["42", "words"]


def test_a_prompts_file_gives_its_non_blank_lines(tmp_path, tokenizer):
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffOnce upon a time\n\n  The dog ran  \r\nLily saw\n".encode())
    assert read_prompts(PromptArguments(prompts_file=str(path)), tokenizer, seed=0) == [
        "Once upon a time",
        "The dog ran",
        "Lily saw",
    ]


def one_line_error(args, tokenizer, **kwargs):
    with pytest.raises(ConfigError) as caught:
        read_prompts(args, tokenizer, seed=0, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_prompts_file_that_is_not_utf8_names_its_line(tmp_path, tokenizer):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\nsecond line\ncaf\u00e9 au lait\n".encode("latin-1"))
    message = one_line_error(PromptArguments(prompts_file=str(path)), tokenizer)
    assert message == f"--prompts_file {path}, line 3: not UTF-8 text (byte 26)."


def test_a_missing_or_unreadable_prompts_file_is_one_line(tmp_path, tokenizer):
    missing = tmp_path / "missing.txt"
    assert one_line_error(PromptArguments(prompts_file=str(missing)), tokenizer) == (
        f"--prompts_file {missing}: no such file."
    )
    assert "cannot read it" in one_line_error(PromptArguments(prompts_file=str(tmp_path)), tokenizer)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("rows.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n', "rows.jsonl, row 2, field 'text': invalid UTF-8"),
        ("rows.csv", b"text\nfine\ncaf\xe9\n", "rows.csv, row 2, field 'text': invalid UTF-8"),
        ("rows.jsonl", b'{"text": "fine"}\n{"text": \n', "rows.jsonl, row 2: not valid JSON"),
        ("rows.jsonl", b'{"review": "fine"}\n', "rows.jsonl: no column 'text' (it has ['review'])"),
        ("rows.txt", b"fine\n", "rows.txt: unknown file type"),
        ("missing.jsonl", None, "missing.jsonl: no such file"),
    ],
)
def test_a_bad_prompts_dataset_is_one_line_naming_the_file_row_and_field(tmp_path, tokenizer, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert one_line_error(PromptArguments(prompts_dataset=str(path)), tokenizer).startswith(
        f"--prompts_dataset {tmp_path}/{message}"
    )


def test_too_few_prompts_name_the_source(tmp_path, tokenizer):
    path = tmp_path / "prompts.txt"
    path.write_text("one\ntwo\nthree\n")
    message = one_line_error(PromptArguments(prompts_file=str(path)), tokenizer, num_heldout=3)
    assert message.startswith(f"{path}: 3 prompts, but 3 are held out for samples")
    assert read_prompts(PromptArguments(prompts_file=str(path)), tokenizer, seed=0, num_heldout=2)[2] == "three"
    message = one_line_error(PromptArguments(prompts_file=str(path), min_prompt_chars=10), tokenizer)
    assert message == f"{path}: no prompts (--min_prompt_chars 10)."


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts_file": "a.txt", "prompts_dataset": "b.jsonl"}, "not both"),
        ({"query_min_length": 4}, "query_min_length < query_max_length"),
        ({"query_min_length": 5, "query_max_length": 5}, "got 5 and 5"),
    ],
)
def test_contradictory_prompt_arguments_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PromptArguments(**kwargs)


def test_tokenize_prompts_keeps_those_within_the_budget(tokenizer, caplog):
    texts = ["Once upon a time", "Once upon a time there was a very long story about a dog and a cat", "Hi"]
    limit = len(tokenizer(texts[0])["input_ids"])
    prompts = tokenize_prompts(texts, tokenizer, limit, "stories")
    assert prompts.texts == ["Once upon a time", "Hi"]
    assert all(ids.dtype == torch.long and ids.dim() == 1 for ids in prompts.input_ids)
    assert prompts.input_ids[0].tolist() == tokenizer(texts[0])["input_ids"]
    assert "stories: dropped 1 of 3 prompts longer than" in caplog.text
    with pytest.raises(ConfigError, match=r"stories: all 3 prompts are longer than 1 tokens"):
        tokenize_prompts(texts, tokenizer, 1, "stories")


def test_prompt_budget_leaves_room_for_the_response(tokenizer):
    config = SimpleNamespace(max_position_embeddings=512)
    assert prompt_budget(config, tokenizer, RLLoopArguments(output_max_length=128)) == 384
    assert prompt_budget(config, tokenizer, RLLoopArguments(output_max_length=128, max_prompt_length=64)) == 64
    with pytest.raises(ConfigError, match="leaves no room for a prompt in the model's 512-token context"):
        prompt_budget(config, tokenizer, RLLoopArguments(output_max_length=512))
    with pytest.raises(ConfigError, match="exceed the model's 512-token context"):
        prompt_budget(config, tokenizer, RLLoopArguments(output_max_length=128, max_prompt_length=400))
