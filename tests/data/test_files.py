"""Local files of every supported type, the Hub path, and whole-file errors."""

import csv
import gzip
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stackrlhf.data import (
    DataArguments,
    load_preference_pairs,
    load_splits,
    to_prompt_dataset,
    to_reward_dataset,
    to_sft_dataset,
)
from stackrlhf.errors import ConfigError, DataError

SE_ROWS = [
    {
        "qid": 1,
        "question": "How do I reverse a list in Python?",
        "date": "2020-01-01",
        "metadata": ["https://stackoverflow.com/q/1"],
        "response_j": "Use `reversed(xs)` or `xs[::-1]`.",
        "response_k": "You can't.",
    },
    {
        "qid": 2,
        "question": "What does `git stash` do?",
        "date": "2020-01-02",
        "metadata": ["https://stackoverflow.com/q/2"],
        "response_j": "It shelves your uncommitted changes.",
        "response_k": "It deletes them.",
    },
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path, rows, opener=open):
    with opener(path, "wt", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_se_file(path):
    """Write SE_ROWS in the format the file name asks for."""
    name = path.name
    if name.endswith(".jsonl"):
        return write_jsonl(path, SE_ROWS)
    if name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as file:
            file.writelines(json.dumps(row) + "\n" for row in SE_ROWS)
        return path
    if name.endswith(".json"):
        path.write_text(json.dumps(SE_ROWS, indent=2), encoding="utf-8")
        return path
    if name.endswith(".csv"):
        return write_csv(path, [{k: v for k, v in row.items() if k != "metadata"} for row in SE_ROWS])
    if name.endswith(".csv.gz"):
        return write_csv(path, [{k: v for k, v in row.items() if k != "metadata"} for row in SE_ROWS], gzip.open)
    pq.write_table(pa.Table.from_pylist(SE_ROWS), path)
    return path


@pytest.mark.parametrize("file_name", ["se.jsonl", "se.jsonl.gz", "se.json", "se.csv", "se.csv.gz", "se.parquet"])
def test_stack_exchange_file_converts_to_the_three_shapes(tmp_path, file_name):
    loaded = load_preference_pairs(str(write_se_file(tmp_path / file_name)))
    assert (loaded.rows_read, loaded.skipped) == (2, 0)
    assert loaded.pairs.column_names == ["question", "chosen", "rejected"]
    assert loaded.pairs[0] == {
        "question": "How do I reverse a list in Python?",
        "chosen": "Use `reversed(xs)` or `xs[::-1]`.",
        "rejected": "You can't.",
    }
    assert to_sft_dataset(loaded.pairs)["text"] == [
        "Question: How do I reverse a list in Python?\n\nAnswer: Use `reversed(xs)` or `xs[::-1]`.",
        "Question: What does `git stash` do?\n\nAnswer: It shelves your uncommitted changes.",
    ]
    assert to_reward_dataset(loaded.pairs)[1] == {
        "chosen": "Question: What does `git stash` do?\n\nAnswer: It shelves your uncommitted changes.",
        "rejected": "Question: What does `git stash` do?\n\nAnswer: It deletes them.",
    }
    assert to_prompt_dataset(loaded.pairs)["query"] == [
        "Question: How do I reverse a list in Python?\n\nAnswer: ",
        "Question: What does `git stash` do?\n\nAnswer: ",
    ]


def test_json_file_may_hold_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "se.json", SE_ROWS)
    assert load_preference_pairs(str(path)).pairs.num_rows == 2


def test_hh_file_is_detected(tmp_path):
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [{"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}],
    )
    assert load_preference_pairs(str(path)).pairs[0] == {"question": "Hi?", "chosen": "Hello!", "rejected": "Go away."}


@pytest.mark.parametrize(
    "mapping",
    [{"prompt": "question", "better": "chosen", "worse": "rejected"}, "prompt=question,better=chosen,worse=rejected"],
)
def test_column_mapping_on_a_file(tmp_path, mapping):
    path = write_csv(tmp_path / "prefs.csv", [{"prompt": "Q?", "better": "Yes.", "worse": "No.", "id": "7"}])
    loaded = load_preference_pairs(str(path), column_mapping=mapping)
    assert loaded.pairs[0] == {"question": "Q?", "chosen": "Yes.", "rejected": "No."}


def test_unmapped_columns_error_names_the_file_as_given_and_the_columns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "prefs.csv", [{"prompt": "Q?", "better": "Yes.", "worse": "No."}])
    with pytest.raises(DataError, match=r"^prefs\.csv: format 'columns' needs .* found prompt, better, worse"):
        load_preference_pairs("prefs.csv")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file$"):
        load_preference_pairs(str(tmp_path / "nope.jsonl"))


def test_unknown_extension(tmp_path):
    path = tmp_path / "prefs.txt"
    path.write_text("hello\n")
    with pytest.raises(DataError, match=r"prefs\.txt: unknown file type; expected one of \.jsonl, \.json, \.csv"):
        load_preference_pairs(str(path))


@pytest.mark.parametrize("file_name", ["empty.jsonl", "empty.csv", "empty.json"])
def test_empty_file(tmp_path, file_name):
    path = tmp_path / file_name
    path.write_text("\n")
    with pytest.raises(DataError, match=f"{file_name}: no rows$"):
        load_preference_pairs(str(path))


def test_whole_file_json_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"question": "Q?",\n')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON \(.* at line 2"):
        load_preference_pairs(str(path))


def test_truncated_gzip_file(tmp_path):
    data = gzip.compress(("".join(json.dumps(row) + "\n" for row in SE_ROWS * 200)).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: cannot read the file \("):
        load_preference_pairs(str(path))


def test_a_config_is_for_folders_and_hub_datasets_only(tmp_path):
    path = write_se_file(tmp_path / "se.jsonl")
    with pytest.raises(ConfigError, match=r"^--dataset_config default: .*se\.jsonl is a single file; give the file"):
        load_preference_pairs(str(path), config="default")


def test_hub_dataset_is_loaded_through_datasets(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_list(SE_ROWS + [{**SE_ROWS[0], "response_k": None}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_preference_pairs(
        "lvwerra/stack-exchange-paired", data_dir="data/rl", split="train", skip_bad_rows=True
    )
    assert calls == [
        ("lvwerra/stack-exchange-paired", None, {"data_dir": "data/rl", "split": "train", "streaming": False})
    ]
    assert (loaded.pairs.num_rows, loaded.skipped) == (2, 1)
    assert loaded.skip_reasons == ("row 3, field 'response_k': null value",)


def test_hub_failure_is_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/prefs' on the Hub (OfflineModeIsEnabled)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as caught:
        load_preference_pairs("someone/prefs")
    assert str(caught.value) == (
        "someone/prefs: not a local file, and loading it with datasets failed "
        "(Couldn't reach 'someone/prefs' on the Hub (OfflineModeIsEnabled))"
    )


def test_local_dataset_folder_streams_only_the_rows_it_needs(tmp_path):
    folder = tmp_path / "se-paired"
    (folder / "data" / "rl").mkdir(parents=True)
    rows = [{**row, "question": f"{row['question']} {i}"} for i in range(20) for row in SE_ROWS]
    write_jsonl(folder / "data" / "rl" / "part-0.jsonl", rows)
    args = DataArguments(
        dataset_name=str(folder), dataset_data_dir="data/rl", dataset_streaming=True, max_samples=5, eval_samples=1
    )
    train, held_out = load_splits(args)
    assert (train.num_rows, held_out.num_rows) == (4, 1)
    assert sorted([*train["question"], *held_out["question"]]) == sorted(row["question"] for row in rows[:5])


def test_streaming_needs_max_samples():
    with pytest.raises(ConfigError, match="dataset_streaming needs max_samples"):
        DataArguments(dataset_name="lvwerra/stack-exchange-paired", dataset_streaming=True)
