"""DataArguments on the command line, and deterministic train/eval splits."""

import dataclasses
import json

import pytest
from trl import TrlParser

from stackrlhf.data import BUNDLED_DATASET, DataArguments, load_splits, split_pairs
from stackrlhf.data.formats import PAIR_FIELDS
from stackrlhf.data.templates import string_dataset
from stackrlhf.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def default_splits():
    return load_splits(DataArguments())


def numbered_pairs(count):
    return string_dataset({name: [f"{name} {i}" for i in range(count)] for name in PAIR_FIELDS})


def test_default_arguments_use_the_bundled_sample(default_splits):
    args = DataArguments()
    assert (args.dataset_name, args.dataset_format, args.dataset_split) == (BUNDLED_DATASET, "auto", "train")
    assert (args.dataset_path, args.dataset_config, args.dataset_data_dir) == (None, None, None)
    assert (args.skip_bad_rows, args.max_samples, args.eval_samples, args.dataset_seed) == (False, None, 200, 42)
    train, held_out = default_splits
    assert (train.num_rows, held_out.num_rows) == (2303 - 200, 200)
    assert train.column_names == held_out.column_names == ["question", "chosen", "rejected"]


def test_splits_are_deterministic_and_disjoint(default_splits):
    train, held_out = default_splits
    again_train, again_held_out = load_splits(DataArguments())
    assert train.to_list() == again_train.to_list() and held_out.to_list() == again_held_out.to_list()
    other_train, other_held_out = load_splits(DataArguments(dataset_seed=7))
    assert held_out.to_list() != other_held_out.to_list()
    as_key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    assert not {as_key(row) for row in train} & {as_key(row) for row in held_out}


def test_split_pairs_sizes():
    pairs = numbered_pairs(50)
    train, held_out = split_pairs(pairs, eval_samples=10, max_samples=30, seed=1)
    assert (train.num_rows, held_out.num_rows) == (20, 10)
    shuffled = pairs.shuffle(seed=1)["question"]
    assert held_out["question"] == shuffled[:10] and train["question"] == shuffled[10:30]
    train, held_out = split_pairs(pairs, eval_samples=0, seed=1)
    assert (train.num_rows, held_out.num_rows) == (50, 0)
    assert held_out.column_names == ["question", "chosen", "rejected"]


def test_max_samples_caps_train_and_eval_together():
    train, held_out = load_splits(DataArguments(max_samples=100, eval_samples=20))
    assert (train.num_rows, held_out.num_rows) == (80, 20)


@pytest.mark.parametrize(
    ("eval_samples", "max_samples", "message"),
    [
        (50, None, "eval_samples=50 leaves no training rows: only 50 usable rows$"),
        (60, 40, r"eval_samples=60 leaves no training rows: only 40 usable rows \(of 50, max_samples=40\)$"),
    ],
)
def test_too_few_rows_for_eval(eval_samples, max_samples, message):
    with pytest.raises(DataError, match=message):
        split_pairs(numbered_pairs(50), eval_samples=eval_samples, max_samples=max_samples)


def test_load_splits_reads_files_with_a_column_mapping(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"Q{i}?", "better": f"yes {i}", "worse": f"no {i}"} for i in range(10)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = DataArguments(dataset_name=str(path), column_mapping="prompt=question,better=chosen,worse=rejected")
    train, held_out = load_splits(dataclasses.replace(args, eval_samples=3))
    assert (train.num_rows, held_out.num_rows) == (7, 3)
    assert sorted([*train["question"], *held_out["question"]]) == sorted(row["prompt"] for row in rows)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dataset_format": "sharegpt"}, "dataset_format 'sharegpt'"),
        ({"column_mapping": "prompt"}, "expected 'source=target"),
        ({"max_samples": 0}, "max_samples must be at least 1"),
        ({"eval_samples": -1}, "eval_samples must not be negative"),
    ],
)
def test_impossible_arguments_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        DataArguments(**changes)


def test_arguments_parse_from_the_command_line():
    parser = TrlParser((DataArguments,))
    (data_args,) = parser.parse_args_into_dataclasses(
        [
            "--dataset_name", "prefs.csv",
            "--dataset_format", "columns",
            "--column_mapping", "prompt=question",
            "--skip_bad_rows",
            "--max_samples", "500",
            "--eval_samples", "50",
            "--dataset_seed", "3",
        ]
    )  # fmt: skip
    assert data_args == DataArguments(
        dataset_name="prefs.csv",
        dataset_format="columns",
        column_mapping="prompt=question",
        skip_bad_rows=True,
        max_samples=500,
        eval_samples=50,
        dataset_seed=3,
    )
    assert parser.parse_args_into_dataclasses([]) == (DataArguments(),)
    assert parser.parse_args_into_dataclasses(["--skip_bad_rows", "false"])[0].skip_bad_rows is False
    assert parser.parse_args_into_dataclasses(["--skip_bad_rows"])[0].skip_bad_rows is True


def test_argument_names_do_not_clash_with_trl_configs():
    from trl import DPOConfig, GRPOConfig, ModelConfig, RewardConfig, SFTConfig  # slow to import: keep it here

    for config in (SFTConfig, RewardConfig, DPOConfig, GRPOConfig):
        TrlParser((DataArguments, config, ModelConfig))  # argparse raises on a clashing option


def test_every_argument_is_explained():
    for field in dataclasses.fields(DataArguments):
        assert len(field.metadata.get("help", "")) > 40, field.name
