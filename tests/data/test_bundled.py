"""The bundled HH-RLHF harmless-base test split: 2,312 rows, 9 of which don't split into a clean pair."""

import logging

import pytest

from stackrlhf.data import BUNDLED_DATASET, load_preference_pairs
from stackrlhf.errors import DataError

BUNDLED_ROWS = 2312
BAD_BUNDLED_ROWS = 9  # rows 87, 517, 926, 1104: empty chosen answer; 1255, 1689, 1951, 1953, 2037: dialogues diverge


@pytest.fixture(scope="module")
def bundled():
    return load_preference_pairs(BUNDLED_DATASET)


def test_bundled_sample_loads_offline_skipping_its_bad_rows(bundled):
    assert (bundled.rows_read, bundled.skipped) == (BUNDLED_ROWS, BAD_BUNDLED_ROWS)
    assert bundled.pairs.num_rows == BUNDLED_ROWS - BAD_BUNDLED_ROWS
    assert bundled.source == "harmless-base-test.jsonl.gz"
    assert bundled.skip_reasons[:2] == (
        "row 87, field 'chosen': empty last Assistant answer",
        "row 517, field 'chosen': empty last Assistant answer",
    )
    assert "row 1255, field 'rejected': the dialogue differs from 'chosen' before the last Assistant turn" in (
        bundled.skip_reasons
    )


def test_bundled_skips_are_logged_once_per_run(caplog):
    with caplog.at_level(logging.WARNING, logger="stackrlhf.data"):
        for _ in range(3):  # a run reads its data once per stage
            load_preference_pairs(BUNDLED_DATASET)
    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith("harmless-base-test.jsonl.gz: 2303 usable preference pairs of 2312 rows; skipped 9")


def test_bundled_pairs_are_clean(bundled):
    pairs = bundled.pairs.to_list()
    assert all(row["question"] and row["chosen"] and row["rejected"] for row in pairs)
    assert all(row["chosen"] != row["rejected"] for row in pairs)
    assert all(row[key] == row[key].strip() for row in pairs for key in row)
    assert not any(row["question"].startswith("\n") for row in pairs)
    single_turn = [row["question"] for row in pairs if "\n\nAssistant:" not in row["question"]]
    multi_turn = [row["question"] for row in pairs if "\n\nAssistant:" in row["question"]]
    assert single_turn and not any(question.startswith("Human:") for question in single_turn)
    assert multi_turn and all(question.startswith("Human: ") for question in multi_turn)


def test_bundled_sample_strict_names_the_first_bad_row():
    with pytest.raises(DataError) as caught:
        load_preference_pairs(BUNDLED_DATASET, skip_bad_rows=False)
    assert str(caught.value) == "harmless-base-test.jsonl.gz, row 87, field 'chosen': empty last Assistant answer"
