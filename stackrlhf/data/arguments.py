"""`DataArguments`: the data options of every recipe, parsed by `trl.TrlParser` beside TRL's own configs.

The source options follow TRL's `ScriptArguments` (``--dataset_name``, ``--dataset_config``, ``--dataset_streaming``)
and StackLLaMA's scripts (``--subset``), so their command lines carry over; no recipe parses `ScriptArguments` itself,
and the names clash with none of TRL's trainer configs, `ModelConfig` or transformers' `TrainingArguments`.

One split, not TRL's two: TRL's scripts train on ``--dataset_train_split`` and evaluate on ``--dataset_test_split``;
here (as in StackLLaMA, which read ``--split train`` and held its validation rows out of it) the evaluation rows are
held out of the one ``--dataset_split`` by a seeded shuffle (``--eval_samples``, ``--dataset_seed``), so every source
(a single file too, which has one split only) is split the same way and the same seed gives the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stackrlhf.data.formats import DATASET_FORMATS, DatasetFormat, parse_column_mapping
from stackrlhf.data.readers import looks_like_hub_name
from stackrlhf.data.sources import BUNDLED_DATASET, BUNDLED_FILE, check_parts, is_saved_dataset
from stackrlhf.errors import ConfigError, DataError


@dataclass
class DataArguments:
    """Where the preference data comes from, how to read it, and how to split it into training and evaluation rows.

    `dataset_path` is the old name of `dataset_name`: given (on the command line or as ``dataset_path:`` in a config),
    its value moves to `dataset_name` and it reads None again.
    """

    dataset_name: str = field(
        default=BUNDLED_DATASET,
        metadata={
            "help": f"Path or name of the dataset to load: a local .jsonl, .json, .csv or .parquet file (.jsonl.gz, "
            f".json.gz and .csv.gz too), a local folder of such files or one written by datasets' save_to_disk, or a "
            f"Hugging Face Hub dataset name such as lvwerra/stack-exchange-paired. The default, {BUNDLED_DATASET}, is "
            f"the bundled 2,312-row HH-RLHF harmless-base test split and needs no network. --dataset_path is its old "
            f"name."
        },
    )
    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "Old name of --dataset_name, still read on the command line and as dataset_path: in configs; give "
            "one of the two."
        },
    )
    dataset_format: DatasetFormat = field(
        default="auto",
        metadata={
            "help": "How rows are read. stack_exchange: columns question, response_j (preferred answer), response_k "
            "(rejected answer). hh: Anthropic HH-RLHF columns chosen and rejected, each a full '\\n\\nHuman: ... "
            "\\n\\nAssistant: ...' dialogue; the question is the shared dialogue before the last Assistant turn and "
            "the answers are the two last Assistant turns. columns: columns question, chosen, rejected. auto: "
            "stack_exchange if the columns include response_j or response_k, hh if they include "
            "chosen/rejected but no question, columns otherwise. Column names are read after --column_mapping."
        },
    )
    dataset_config: str | None = field(
        default=None,
        metadata={
            "aliases": ["--subset"],
            "help": "Dataset configuration name. Corresponds to the `name` argument of the `datasets.load_dataset` "
            "function. A name the dataset has no configuration of is taken as a folder inside it (load_dataset's "
            "data_dir), as StackLLaMA's --subset data/finetune; in a local folder, a subfolder of that name. Not for "
            "single files or save_to_disk folders. --subset is another name for it.",
        },
    )
    dataset_data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder inside the dataset to load (load_dataset's data_dir), e.g. data/finetune, data/reward or "
            "data/rl for lvwerra/stack-exchange-paired; for a dataset that has both a --dataset_config and folders. "
            "Not for single files or save_to_disk folders."
        },
    )
    dataset_split: str = field(
        default="train",
        metadata={
            "help": "Dataset split to read, e.g. train or test; the evaluation rows are held out of it "
            "(--eval_samples). A single file and a save_to_disk'd Dataset are one split and ignore it."
        },
    )
    column_mapping: str | None = field(
        default=None,
        metadata={
            "help": "Rename source columns to question, chosen and rejected before reading them, as "
            "'source=target' pairs separated by commas, e.g. 'prompt=question,better=chosen,worse=rejected'. "
            "Columns not named keep their names."
        },
    )
    dataset_streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream a Hub dataset instead of downloading it whole (lvwerra/stack-exchange-paired is about "
            "28 GB per folder): the first --max_samples usable rows are read in the source's order, then shuffled "
            "and split like any other data. Requires --max_samples."
        },
    )
    skip_bad_rows: bool = field(
        default=False,
        metadata={
            "help": "What to do with a row that cannot be used (missing field, null, empty or whitespace-only text, "
            "a number or list where text belongs, an undecodable line, invalid UTF-8, identical answers, HH "
            "dialogues that don't split into one question and two answers). Without this flag the run stops with "
            "an error naming the file, row and field; with it such rows are skipped, and how many and why is "
            "logged. The bundled sample's known bad rows (9 of its 2,312 don't split cleanly) are always skipped."
        },
    )
    max_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use only this many usable rows in all, training and evaluation rows together: the first ones "
            "after shuffling with --dataset_seed. Unset: use every usable row."
        },
    )
    eval_samples: int = field(
        default=200,
        metadata={
            "help": "Rows held out for evaluation (taken before the training rows from the shuffled data); must be "
            "fewer than the usable rows. 0 disables the held-out set."
        },
    )
    dataset_seed: int = field(
        default=42,
        metadata={"help": "Seed of the shuffle that picks the evaluation and training rows; same seed, same split."},
    )

    def __post_init__(self) -> None:
        """Move `dataset_path` to `dataset_name`; reject values that can never work, before any data is read."""
        if self.dataset_path is not None:
            if self.dataset_name not in (BUNDLED_DATASET, self.dataset_path):
                raise ConfigError(
                    f"dataset_name {self.dataset_name!r} and dataset_path {self.dataset_path!r} (its old name) "
                    "disagree; give dataset_name only."
                )
            self.dataset_name, self.dataset_path = self.dataset_path, None
        if self.dataset_format not in DATASET_FORMATS:
            raise ConfigError(f"dataset_format {self.dataset_format!r}: choose one of {', '.join(DATASET_FORMATS)}")
        parse_column_mapping(self.column_mapping)
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples must be at least 1, got {self.max_samples}")
        if self.dataset_streaming and self.max_samples is None:
            raise ConfigError("dataset_streaming needs max_samples: how many rows to read from the stream")
        if self.eval_samples < 0:
            raise ConfigError(f"eval_samples must not be negative, got {self.eval_samples}")


def check_dataset_name(args: DataArguments) -> None:
    """A local `dataset_name` exists, and a single file or saved dataset gets no `dataset_config` or
    `dataset_data_dir` (a Hub name passes: loading it tells); run where the options are parsed, so a typo is reported
    before any model loads.

    Raises:
        DataError: a path that is not the bundled sample, not a Hub name and not on disk.
        ConfigError: `dataset_config` or `dataset_data_dir` for the bundled sample, a single local file or a folder
            that `save_to_disk` wrote.
    """
    local = BUNDLED_FILE if args.dataset_name == BUNDLED_DATASET else Path(args.dataset_name).expanduser()
    if local.is_file() or is_saved_dataset(local):
        check_parts(args.dataset_name, local, args.dataset_config, args.dataset_data_dir)
    elif not local.exists() and not looks_like_hub_name(args.dataset_name):
        raise DataError(f"{args.dataset_name}: no such file")
