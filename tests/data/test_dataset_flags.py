"""The data-source flags as TRL's and StackLLaMA's scripts spell them: `--dataset_name` for every kind of source (a
file of each type, a folder of files, a `save_to_disk` folder, a Hub name), `--dataset_config`/`--subset`,
`--dataset_split`, and the old `--dataset_path` on the command line and in YAML configs."""

import csv
import dataclasses
import gzip
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from trl import TrlParser

from stackrlhf.data import DataArguments, load_preference_pairs, load_splits
from stackrlhf.data.arguments import check_dataset_name
from stackrlhf.errors import ConfigError, DataError
from stackrlhf.recipes import sft
from stackrlhf.recipes.runner import parse_args, run_recipe


def se_rows(tag, count=6):
    """`count` Stack Exchange paired rows whose questions carry `tag`."""
    return [
        {"question": f"{tag} question {i}?", "response_j": f"Good answer {i}.", "response_k": f"Bad answer {i}."}
        for i in range(count)
    ]


def write_rows(path, rows):
    """Write `rows` in the format the file name asks for (.jsonl, .json, .csv, .parquet; the text ones also .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.removesuffix(".gz")
    with (gzip.open if path.name.endswith(".gz") else open)(path, "wt", newline="", encoding="utf-8") as file:
        if name.endswith(".jsonl"):
            file.writelines(json.dumps(row) + "\n" for row in rows)
        elif name.endswith(".json"):
            json.dump(rows, file)
        elif name.endswith(".csv"):
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def parse(*argv):
    """DataArguments from a command line, as a recipe's parser reads them."""
    (data_args,) = TrlParser((DataArguments,)).parse_args_into_dataclasses([str(arg) for arg in argv])
    check_dataset_name(data_args)
    return data_args


def questions(data_args, eval_samples=2):
    """The questions of the training and evaluation rows together, sorted, after checking both are non-empty."""
    train, held_out = load_splits(dataclasses.replace(data_args, eval_samples=eval_samples))
    assert train.num_rows and held_out.num_rows == eval_samples
    return sorted([*train["question"], *held_out["question"]])


def expected(rows):
    return sorted(row["question"] for row in rows)


@pytest.mark.parametrize(
    "file_name",
    ["prefs.jsonl", "prefs.json", "prefs.csv", "prefs.parquet", "prefs.jsonl.gz", "prefs.json.gz", "prefs.csv.gz"],
)
def test_dataset_name_reads_a_file_of_each_type(tmp_path, file_name):
    rows = se_rows(file_name)
    path = write_rows(tmp_path / file_name, rows)
    assert questions(parse("--dataset_name", path)) == expected(rows)


def test_a_folder_of_files_reads_the_split_its_file_names_give(tmp_path):
    train, test = se_rows("train"), se_rows("test", 4)
    write_rows(tmp_path / "prefs" / "train.jsonl", train)
    write_rows(tmp_path / "prefs" / "test.jsonl", test)
    assert questions(parse("--dataset_name", tmp_path / "prefs")) == expected(train)
    assert questions(parse("--dataset_name", tmp_path / "prefs", "--dataset_split", "test")) == expected(test)


def test_a_folder_of_shards_reads_them_all_and_names_the_file_of_a_bad_row(tmp_path):
    rows = se_rows("shard", 8)
    write_rows(tmp_path / "shards" / "part-0.jsonl.gz", rows[:4])
    write_rows(tmp_path / "shards" / "part-1.jsonl.gz", [*rows[4:6], {"question": "Q?", "response_j": "A."}])
    data_args = parse("--dataset_name", tmp_path / "shards")
    with pytest.raises(DataError) as raised:
        load_splits(data_args)
    assert str(raised.value) == f"{tmp_path}/shards/part-1.jsonl.gz, row 3, field 'response_k': missing field"
    loaded = load_preference_pairs(str(tmp_path / "shards"), skip_bad_rows=True)
    assert sorted(loaded.pairs["question"]) == expected(rows[:6])
    assert loaded.skip_reasons == (f"{tmp_path}/shards/part-1.jsonl.gz, row 3, field 'response_k': missing field",)


def test_a_save_to_disk_folder_reads_the_split(tmp_path):
    train, test = se_rows("train"), se_rows("test", 4)
    saved = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}
    )
    saved.save_to_disk(tmp_path / "saved")
    saved["test"].save_to_disk(tmp_path / "one")
    assert questions(parse("--dataset_name", tmp_path / "saved")) == expected(train)
    assert questions(parse("--dataset_name", tmp_path / "saved", "--dataset_split", "test")) == expected(test)
    assert questions(parse("--dataset_name", tmp_path / "one")) == expected(test)  # one split: the whole of it
    with pytest.raises(ConfigError, match=r"^--dataset_config train: .*saved was written by save_to_disk; choose"):
        parse("--dataset_name", tmp_path / "saved", "--dataset_config", "train")


def stack_exchange_like(root):
    """A folder laid out like lvwerra/stack-exchange-paired: data/finetune and data/rl, with train/test files."""
    rows = {}
    for folder in ("finetune", "rl"):
        for split in ("train", "test"):
            rows[folder, split] = write_rows(root / "data" / folder / f"{split}.jsonl", se_rows(f"{folder} {split}"))
    return rows


@pytest.mark.parametrize("flag", ["--dataset_config", "--subset", "--dataset_data_dir"])
def test_a_subfolder_is_read_as_load_dataset_reads_it_with_data_dir(tmp_path, flag):
    stack_exchange_like(tmp_path / "se")
    data_args = parse("--dataset_name", tmp_path / "se", flag, "data/rl", "--dataset_split", "test")
    reference = datasets.load_dataset(
        str(tmp_path / "se"), data_dir="data/rl", split="test", cache_dir=str(tmp_path / "cache")
    )
    assert questions(data_args) == sorted(reference["question"]) == expected(se_rows("rl test"))


def test_dataset_config_names_a_configuration_of_a_folder_as_load_dataset_does(tmp_path):
    root = tmp_path / "graded"
    for config in ("easy", "hard"):
        write_rows(root / f"{config}-rows" / "part.jsonl", se_rows(config))
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        + "".join(
            f"- config_name: {config}\n  data_files:\n  - split: train\n    path: {config}-rows/*.jsonl\n"
            for config in ("easy", "hard")
        )
        + "---\n"
    )
    reference = datasets.load_dataset(str(root), "hard", split="train", cache_dir=str(tmp_path / "cache"))
    assert questions(parse("--dataset_name", root, "--dataset_config", "hard")) == sorted(reference["question"])
    with pytest.raises(ConfigError, match=r"graded has several configurations; choose one with --dataset_config: "):
        load_splits(parse("--dataset_name", root))


def test_a_bad_dataset_config_names_the_configurations_and_folders_there_are(tmp_path):
    stack_exchange_like(tmp_path / "se")
    with pytest.raises(ConfigError) as raised:
        load_splits(parse("--dataset_name", tmp_path / "se", "--dataset_config", "reward"))
    assert str(raised.value) == (
        f"--dataset_config reward: {tmp_path}/se has no configuration or folder of that name "
        "(configurations: default; folders: data)."
    )
    with pytest.raises(ConfigError, match=r"^--dataset_data_dir data/reward: no folder 'data/reward' in "):
        load_splits(parse("--dataset_name", tmp_path / "se", "--dataset_data_dir", "data/reward"))


@pytest.mark.parametrize("kind", ["folder", "saved"])
def test_an_unknown_split_lists_the_splits_there_are(tmp_path, kind):
    if kind == "folder":
        write_rows(tmp_path / "prefs" / "train.jsonl", se_rows("train"))
        write_rows(tmp_path / "prefs" / "test.jsonl", se_rows("test"))
    else:
        datasets.DatasetDict(
            {split: datasets.Dataset.from_list(se_rows(split)) for split in ("train", "test")}
        ).save_to_disk(tmp_path / "prefs")
    with pytest.raises(DataError) as raised:
        load_splits(parse("--dataset_name", tmp_path / "prefs", "--dataset_split", "validation"))
    assert str(raised.value) == f"{tmp_path}/prefs: no split 'validation'; it has train, test"


@pytest.mark.parametrize(
    ("readme", "expected"),
    [
        (None, "no data files found in it (The directory at "),
        ("---\nconfigs: [\n---\n", "the YAML header of its README.md is not valid (while parsing a flow node "),
    ],
)
def test_a_folder_that_cannot_be_read_is_one_line(tmp_path, readme, expected):
    (tmp_path / "prefs").mkdir()
    if readme is not None:
        write_rows(tmp_path / "prefs" / "train.jsonl", se_rows("train"))
        (tmp_path / "prefs" / "README.md").write_text(readme)
    with pytest.raises(DataError) as raised:
        load_splits(parse("--dataset_name", tmp_path / "prefs"))
    assert str(raised.value).startswith(f"{tmp_path}/prefs: {expected}") and "\n" not in str(raised.value)


@pytest.mark.parametrize("name", ["stackrlhf/hh-rlhf-harmless", "{tmp}/prefs.jsonl"])
def test_a_single_file_takes_no_dataset_config(tmp_path, name):
    write_rows(tmp_path / "prefs.jsonl", se_rows("file"))
    name = name.format(tmp=tmp_path)
    with pytest.raises(ConfigError) as raised:
        parse("--dataset_name", name, "--dataset_config", "data/rl")
    assert str(raised.value).startswith(f"--dataset_config data/rl: {name} is a single file; give the file to read")


def test_a_missing_local_file_is_reported_where_the_options_are_parsed(tmp_path):
    with pytest.raises(DataError, match=r"^.*missing\.jsonl: no such file$"):
        parse("--dataset_name", tmp_path / "missing.jsonl")


class FakeHub:
    """Stands in for `datasets.load_dataset`: records each call; a configuration not in `configs` is refused as
    datasets refuses it."""

    def __init__(self, rows, configs=("default",)):
        self.rows, self.configs, self.calls = rows, configs, []

    def __call__(self, path, name=None, **kwargs):
        self.calls.append((path, name, kwargs))
        if name is not None and name not in self.configs:
            raise ValueError(f"BuilderConfig '{name}' not found. Available: {list(self.configs)}")
        return datasets.Dataset.from_list(self.rows)


def test_a_hub_name_reaches_load_dataset_with_the_config_and_split(monkeypatch):
    hub = FakeHub(se_rows("hub"), configs=("harmless-base",))
    monkeypatch.setattr(datasets, "load_dataset", hub)
    data_args = parse(
        "--dataset_name", "Anthropic/hh-rlhf", "--dataset_config", "harmless-base", "--dataset_split", "test"
    )
    assert questions(data_args) == expected(se_rows("hub"))
    assert hub.calls == [
        ("Anthropic/hh-rlhf", "harmless-base", {"data_dir": None, "split": "test", "streaming": False})
    ]


def test_a_stackllama_subset_is_a_folder_of_the_hub_dataset(monkeypatch):
    hub = FakeHub(se_rows("hub"))
    monkeypatch.setattr(datasets, "load_dataset", hub)
    data_args = parse("--dataset_name", "lvwerra/stack-exchange-paired", "--subset", "data/finetune")
    assert questions(data_args) == expected(se_rows("hub"))
    assert hub.calls == [
        ("lvwerra/stack-exchange-paired", "data/finetune", {"data_dir": None, "split": "train", "streaming": False}),
        ("lvwerra/stack-exchange-paired", None, {"data_dir": "data/finetune", "split": "train", "streaming": False}),
    ]


def test_a_hub_split_that_does_not_exist_is_one_line_listing_the_splits(monkeypatch):
    def unknown_split(path, name=None, **kwargs):
        raise ValueError(f"Unknown split \"{kwargs['split']}\". Should be one of ['train', 'test'].")

    monkeypatch.setattr(datasets, "load_dataset", unknown_split)
    with pytest.raises(DataError) as raised:
        load_splits(parse("--dataset_name", "someone/prefs", "--dataset_split", "dev"))
    assert str(raised.value) == (
        "someone/prefs: not a local file, and loading it with datasets failed "
        "(Unknown split \"dev\". Should be one of ['train', 'test'].)"
    )


def test_dataset_path_is_the_old_name_of_dataset_name_on_the_command_line(tmp_path):
    path = write_rows(tmp_path / "prefs.csv", se_rows("csv"))
    old = parse("--dataset_path", path, "--eval_samples", "3")
    assert old == parse("--dataset_name", path, "--eval_samples", "3")
    assert (old.dataset_name, old.dataset_path) == (str(path), None)
    assert questions(old) == expected(se_rows("csv"))
    assert parse("--dataset_name", path, "--dataset_path", path).dataset_name == str(path)
    with pytest.raises(ConfigError, match=r"dataset_name '.*other\.csv' and dataset_path '.*prefs\.csv' \(its old"):
        parse("--dataset_name", tmp_path / "other.csv", "--dataset_path", path)


def test_an_old_config_with_dataset_path_still_parses_and_reads_its_data(tmp_path):
    path = write_rows(tmp_path / "prefs.jsonl", se_rows("yaml"))
    config = tmp_path / "old.yaml"
    config.write_text(f"dataset_path: {path}\neval_samples: 2\n")
    data_args, *_ = parse_args(sft.make_parser(), ["--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert (data_args.dataset_name, data_args.dataset_path, data_args.eval_samples) == (str(path), None, 2)
    assert questions(data_args) == expected(se_rows("yaml"))


def test_a_recipe_dry_run_resolves_the_dataset_flags(tmp_path, capsys):
    stack_exchange_like(tmp_path / "se")
    argv = ["--dataset_name", str(tmp_path / "se"), "--subset", "data/finetune", "--dataset_split", "test"]
    assert run_recipe(sft.make_parser(), sft.main, [*argv, "--output_dir", str(tmp_path / "out"), "--dry_run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)["DataArguments"]
    assert resolved["dataset_name"] == str(tmp_path / "se") and resolved["dataset_path"] is None
    assert (resolved["dataset_config"], resolved["dataset_split"]) == ("data/finetune", "test")


def test_a_recipe_dry_run_reports_a_config_for_a_single_file_in_one_line(tmp_path, capsys):
    path = write_rows(tmp_path / "prefs.jsonl", se_rows("file"))
    argv = ["--dataset_name", str(path), "--dataset_config", "default", "--dry_run"]
    assert run_recipe(sft.make_parser(), sft.main, argv) == 2
    assert capsys.readouterr().err == (
        f"error: --dataset_config default: {path} is a single file; give the file to read as --dataset_name (it has "
        "no configurations or folders to choose from).\n"
    )
