"""Row formats: HH dialogue splitting, text checks, column mappings and format detection."""

import pytest

from stackrlhf.data import PreferencePair, parse_column_mapping, split_hh_dialogues
from stackrlhf.data.formats import BadRow, render_hh_question, resolve_converter, text_value
from stackrlhf.errors import ConfigError, DataError


def test_hh_single_turn_question_is_the_humans_text():
    pair = split_hh_dialogues(
        "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for 8 minutes.",
        "\n\nHuman: How do I boil an egg?\n\nAssistant:  Microwave it. ",
    )
    assert pair == PreferencePair("How do I boil an egg?", "Put it in boiling water for 8 minutes.", "Microwave it.")


def test_hh_multi_turn_question_keeps_labelled_turns():
    shared = "\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?\n\nHuman:  What is 2 + 2? "
    pair = split_hh_dialogues(shared + "\n\nAssistant: 4.", shared + "\n\nAssistant: 5.")
    assert pair.question == "Human: Hi there.\n\nAssistant: Hello! How can I help?\n\nHuman: What is 2 + 2?"
    assert (pair.chosen, pair.rejected) == ("4.", "5.")


def test_hh_answers_keep_inner_paragraphs():
    shared = "\n\nHuman: List two fruits."
    pair = split_hh_dialogues(shared + "\n\nAssistant: 1. Apple\n\n2. Pear", shared + "\n\nAssistant: No.")
    assert pair.chosen == "1. Apple\n\n2. Pear"


def test_hh_question_rendering_of_unusual_prefixes():
    assert render_hh_question("Human: no leading blank line") == "no leading blank line"
    assert render_hh_question("Context.\n\nHuman: Hi") == "Context.\n\nHuman: Hi"
    assert render_hh_question("\n\nHuman: Hi\n\nAssistant:\n\nHuman: Still there?") == (
        "Human: Hi\n\nAssistant:\n\nHuman: Still there?"
    )


@pytest.mark.parametrize(
    ("chosen", "rejected", "field", "problem"),
    [
        ("\n\nHuman: Hi", "\n\nHuman: Hi\n\nAssistant: Yo", "chosen", "no .*Assistant:' turn"),
        ("\n\nHuman: Hi\n\nAssistant: ", "\n\nHuman: Hi\n\nAssistant: Yo", "chosen", "empty last Assistant answer"),
        ("\n\nHuman: Hi\n\nAssistant: Yo", "\n\nHuman: Hi\n\nAssistant:  ", "rejected", "empty last Assistant answer"),
        ("\n\nHuman: Hi\n\nAssistant: Yo", "\n\nHuman: Hey\n\nAssistant: Yo!", "rejected", "differs from 'chosen'"),
        ("\n\nHuman: Hi\n\nAssistant: Yo", "\n\nHuman: Hi\n\nAssistant:  Yo ", "rejected", "same last answer"),
        ("\n\nHuman:  \n\nAssistant: Yo", "\n\nHuman:  \n\nAssistant: Hey", "chosen", "no question"),
    ],
)
def test_hh_rows_that_do_not_split_cleanly_are_bad(chosen, rejected, field, problem):
    with pytest.raises(BadRow, match=problem) as caught:
        split_hh_dialogues(chosen, rejected)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({}, "missing field"),
        ({"text": None}, "null value"),
        ({"text": 42}, "expected text, got int"),
        ({"text": ["a list"]}, "expected text, got list"),
        ({"text": "bad \udcff byte"}, "invalid UTF-8"),
        ({"text": " \n\t"}, "empty text"),
    ],
)
def test_text_value_rejects_unusable_values(row, problem):
    with pytest.raises(BadRow, match=problem) as caught:
        text_value(row, "text")
    assert caught.value.describe(7) == f"row 7, field 'text': {caught.value.problem}"


def test_text_value_strips():
    assert text_value({"text": "  answer \n"}, "text") == "answer"


def test_column_mapping_dict_and_string_forms_agree():
    expected = {"prompt": "question", "better": "chosen", "worse": "rejected"}
    assert parse_column_mapping(expected) == expected
    assert parse_column_mapping("prompt=question,better=chosen,worse=rejected") == expected
    assert parse_column_mapping(" prompt = question , better=chosen, worse=rejected ") == expected
    assert parse_column_mapping(None) == parse_column_mapping("") == {}


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        ("prompt:question", "expected 'source=target"),
        ("prompt=question,", "expected 'source=target"),
        ("prompt=title", "targets must be one of question, chosen, rejected"),
        ({"a": "chosen", "b": "chosen"}, "more than one column maps to 'chosen'"),
    ],
)
def test_malformed_column_mappings_are_config_errors(mapping, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_column_mapping(mapping)


def test_auto_detects_stack_exchange_and_ignores_other_columns():
    convert = resolve_converter(["qid", "question", "date", "response_j", "response_k"], source="se.jsonl")
    row = {"qid": 1, "question": "Q?", "date": None, "response_j": "good", "response_k": "bad"}
    assert convert(row) == PreferencePair("Q?", "good", "bad")


def test_auto_detects_hh():
    convert = resolve_converter(["chosen", "rejected"], source="hh.jsonl")
    row = {"chosen": "\n\nHuman: Q?\n\nAssistant: good", "rejected": "\n\nHuman: Q?\n\nAssistant: bad"}
    assert convert(row) == PreferencePair("Q?", "good", "bad")


def test_auto_with_a_mapping_reads_plain_columns_and_names_source_columns_in_errors():
    mapping = parse_column_mapping("prompt=question,better=chosen,worse=rejected")
    convert = resolve_converter(["prompt", "better", "worse"], "auto", mapping, source="x.csv")
    assert convert({"prompt": "Q?", "better": "good", "worse": "bad"}) == PreferencePair("Q?", "good", "bad")
    with pytest.raises(BadRow) as caught:
        convert({"prompt": "Q?", "better": "", "worse": "bad"})
    assert caught.value.field == "better"


def test_mapped_column_wins_over_an_unmapped_one_of_the_same_name():
    convert = resolve_converter(["question", "title", "chosen", "rejected"], "auto", {"title": "question"}, source="x")
    assert convert({"question": "old", "title": "new", "chosen": "a", "rejected": "b"}).question == "new"


def test_identical_plain_answers_are_bad():
    convert = resolve_converter(["question", "chosen", "rejected"], source="x")
    with pytest.raises(BadRow, match="same answer as 'chosen'"):
        convert({"question": "Q?", "chosen": "same", "rejected": " same "})


def test_missing_columns_error_lists_found_and_missing():
    with pytest.raises(DataError) as caught:
        resolve_converter(["prompt", "better", "worse"], source="prefs.csv")
    message = str(caught.value)
    assert message.startswith("prefs.csv: format 'columns' needs columns question, chosen, rejected")
    assert "found prompt, better, worse" in message
    assert "missing question, chosen, rejected" in message


def test_explicit_format_checks_its_own_columns():
    with pytest.raises(DataError, match="format 'stack_exchange' needs .* missing response_j, response_k"):
        resolve_converter(["question", "chosen", "rejected"], "stack_exchange", source="x")
    with pytest.raises(DataError, match="format 'hh' .* missing rejected"):
        resolve_converter(["chosen", "other"], "hh", source="x")


def test_mapping_a_column_the_data_lacks_is_an_error():
    with pytest.raises(DataError, match="the column mapping names 'prompt', which the data lacks"):
        resolve_converter(["question", "chosen", "rejected"], "auto", {"prompt": "question"}, source="x")


def test_unknown_format_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown dataset format 'sharegpt'"):
        resolve_converter(["question"], "sharegpt", source="x")
