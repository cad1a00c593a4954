"""`DataArguments`: the data options of every recipe, parsed by `trl.TrlParser` beside TRL's own configs.

Field names avoid those of TRL's ScriptArguments, SFTConfig, RewardConfig and ModelConfig and of transformers'
TrainingArguments (``dataset_name``, ``dataset_config``, ``seed``, ``data_seed``, ``max_length`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stackrlhf.data.formats import DATASET_FORMATS, DatasetFormat, parse_column_mapping
from stackrlhf.data.readers import BUNDLED_DATASET, looks_like_hub_name
from stackrlhf.errors import ConfigError, DataError


@dataclass
class DataArguments:
    """Where the preference data comes from, how to read it, and how to split it into training and evaluation rows."""

    dataset_path: str = field(
        default=BUNDLED_DATASET,
        metadata={
            "help": f"The preference data: a local .jsonl, .json, .csv or .parquet file (.jsonl.gz, .json.gz and "
            f".csv.gz too), a local `datasets` folder, or a Hugging Face Hub dataset name such as "
            f"lvwerra/stack-exchange-paired. The default, {BUNDLED_DATASET}, is the bundled 2,312-row HH-RLHF "
            f"harmless-base test split and needs no network."
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
    dataset_subset: str | None = field(
        default=None,
        metadata={"help": "Configuration (subset) name of a Hub dataset; not used for local files."},
    )
    dataset_data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder inside a Hub dataset to load, e.g. data/finetune, data/reward or data/rl for "
            "lvwerra/stack-exchange-paired; not used for local files."
        },
    )
    dataset_split: str = field(
        default="train",
        metadata={"help": "Split of a Hub dataset or local dataset folder to load; not used for single files."},
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
        """Reject values that can never work, before any data is read."""
        if self.dataset_format not in DATASET_FORMATS:
            raise ConfigError(f"dataset_format {self.dataset_format!r}: choose one of {', '.join(DATASET_FORMATS)}")
        parse_column_mapping(self.column_mapping)
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples must be at least 1, got {self.max_samples}")
        if self.dataset_streaming and self.max_samples is None:
            raise ConfigError("dataset_streaming needs max_samples: how many rows to read from the stream")
        if self.eval_samples < 0:
            raise ConfigError(f"eval_samples must not be negative, got {self.eval_samples}")


def check_dataset_path(args: DataArguments) -> None:
    """A local `dataset_path` exists (a Hub name passes: loading it tells); run where the options are parsed, so a
    typo is reported before any model loads.

    Raises:
        DataError: a path that is not the bundled sample, not a Hub name and not on disk.
    """
    if args.dataset_path == BUNDLED_DATASET or looks_like_hub_name(args.dataset_path):
        return
    if not Path(args.dataset_path).expanduser().exists():
        raise DataError(f"{args.dataset_path}: no such file")
