"""Bad rows: one single-line DataError naming file, row and field, or skipped and counted with skip_bad_rows."""

import gzip
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stackrlhf.data import load_preference_pairs
from stackrlhf.data.loading import MAX_REPORTED_REASONS
from stackrlhf.errors import DataError


def se_line(question="Q?", chosen="Good.", rejected="Bad."):
    return json.dumps({"question": question, "response_j": chosen, "response_k": rejected}).encode() + b"\n"


GOOD = se_line()

# (name, bytes of the bad third line, expected message after "<file>, ")
JSONL_CASES = [
    ("missing field", b'{"question": "Q?", "response_j": "Good."}\n', "row 3, field 'response_k': missing field"),
    ("null", se_line(rejected=None), "row 3, field 'response_k': null value"),
    ("empty text", se_line(question=" \n "), "row 3, field 'question': empty text"),
    ("number", se_line(chosen=42), "row 3, field 'response_j': expected text, got int"),
    ("list", se_line(chosen=["Good."]), "row 3, field 'response_j': expected text, got list"),
    ("identical answers", se_line(rejected="Good."), "row 3, field 'response_k': same answer as 'response_j'"),
    (
        "invalid UTF-8",
        b'{"question": "Q\xff?", "response_j": "Good.", "response_k": "Bad."}\n',
        "row 3, field 'question': invalid UTF-8 at character 1",
    ),
    (
        "undecodable line",
        b'{"question": "Q?", "response_j": \n',
        "row 3: not valid JSON (Expecting value at column 34)",
    ),
    ("not an object", b'["Q?", "Good.", "Bad."]\n', "row 3: expected a JSON object, got list"),
]


@pytest.mark.parametrize("file_name", ["prefs.jsonl", "prefs.jsonl.gz"])
@pytest.mark.parametrize(("kind", "bad_line", "expected"), JSONL_CASES, ids=[case[0] for case in JSONL_CASES])
def test_bad_jsonl_row_is_one_error_line(tmp_path, kind, bad_line, expected, file_name):
    path = tmp_path / file_name
    data = GOOD + GOOD + bad_line + GOOD
    path.write_bytes(gzip.compress(data) if file_name.endswith(".gz") else data)
    with pytest.raises(DataError) as caught:
        load_preference_pairs(str(path))
    assert str(caught.value) == f"{path}, {expected}"
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("kind", "bad_line", "expected"), JSONL_CASES, ids=[case[0] for case in JSONL_CASES])
def test_bad_jsonl_row_is_skipped_and_counted(tmp_path, caplog, kind, bad_line, expected):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(GOOD + GOOD + bad_line + GOOD)
    with caplog.at_level(logging.WARNING, logger="stackrlhf.data"):
        loaded = load_preference_pairs(str(path), skip_bad_rows=True)
    assert (loaded.pairs.num_rows, loaded.rows_read, loaded.skipped) == (3, 4, 1)
    assert loaded.skip_reasons == (expected,)
    assert loaded.summary() == f"{path}: 3 usable preference pairs of 4 rows; skipped 1 bad rows: {expected}"
    assert [record.getMessage() for record in caplog.records] == [loaded.summary()]


def test_blank_lines_are_ignored_but_counted_as_lines(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(GOOD + b"\n" + se_line(chosen="") + GOOD)
    with pytest.raises(DataError, match=r"prefs\.jsonl, row 3, field 'response_j': empty text$"):
        load_preference_pairs(str(path))


def test_bad_csv_rows(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_bytes(
        b"question,response_j,response_k\n"
        b"Q?,Good.,Bad.\n"
        b"Q?,,Bad.\n"  # empty cell
        b"Q?,Good.\n"  # short row
        b'"Q\xfe?",Good.,Bad.\n'  # invalid UTF-8
        b'"multi\nline?",Good.,Bad.\n'
    )
    with pytest.raises(DataError, match=r"prefs\.csv, row 2, field 'response_j': empty text$"):
        load_preference_pairs(str(path))
    loaded = load_preference_pairs(str(path), skip_bad_rows=True)
    assert loaded.pairs["question"] == ["Q?", "multi\nline?"]
    assert loaded.skip_reasons == (
        "row 2, field 'response_j': empty text",
        "row 3, field 'response_k': missing field",
        "row 4, field 'question': invalid UTF-8 at character 1",
    )


def test_bad_parquet_rows(tmp_path):
    path = tmp_path / "prefs.parquet"
    rows = [{"question": "Q?", "chosen": "Good.", "rejected": "Bad."}] * 3
    pq.write_table(pa.Table.from_pylist(rows[:1] + [{**rows[0], "chosen": None}] + rows[2:]), path)
    with pytest.raises(DataError, match=r"prefs\.parquet, row 2, field 'chosen': null value$"):
        load_preference_pairs(str(path))
    assert load_preference_pairs(str(path), skip_bad_rows=True).skipped == 1

    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"question": ["Q?"], "chosen": [1], "rejected": [2]}), numbers)
    with pytest.raises(DataError, match=r"numbers\.parquet, row 1, field 'chosen': expected text, got int$"):
        load_preference_pairs(str(numbers))


def test_bad_element_of_a_json_array(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps([{"question": "Q?", "chosen": "Good.", "rejected": "Bad."}, {"question": "Q?"}]))
    with pytest.raises(DataError, match=r"prefs\.json, row 2, field 'chosen': missing field$"):
        load_preference_pairs(str(path))


def test_no_usable_rows_is_an_error_even_when_skipping(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b"not json\n" + se_line(chosen="") + b"\n")
    with pytest.raises(DataError) as caught:
        load_preference_pairs(str(path), skip_bad_rows=True)
    assert str(caught.value) == (
        f"{path}: 0 usable preference pairs of 2 rows; skipped 2 bad rows: "
        "row 1: not valid JSON (Expecting value at column 1); row 2, field 'response_j': empty text; "
        "no usable rows left"
    )


def test_only_the_first_reasons_are_listed(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(GOOD + se_line(question="") * (MAX_REPORTED_REASONS + 3))
    loaded = load_preference_pairs(str(path), skip_bad_rows=True)
    assert loaded.skipped == MAX_REPORTED_REASONS + 3
    assert len(loaded.skip_reasons) == MAX_REPORTED_REASONS
    assert loaded.summary().endswith("; and 3 more")
