"""Open a data source by the name `--dataset_name` gives, as TRL's scripts take it: the bundled sample, a local file,
a local folder (of data files, or written by `datasets`' `save_to_disk`), or a Hugging Face Hub dataset.

A folder of data files is resolved as `datasets.load_dataset(folder, name=..., data_dir=...)` resolves it (split
names from file and folder names, configurations from its README), but its files are then read by
`readers.read_file`, so a bad row is named by file and row as in a single file. A saved dataset and a Hub dataset are
read through `datasets`: their rows are numbered from the start of the split.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow as pa
import yaml
from datasets.exceptions import DatasetsError

from stackrlhf.data.readers import RawRow, SourceRows, looks_like_hub_name, read_file, with_columns
from stackrlhf.errors import ConfigError, DataError, first_line, one_line

BUNDLED_DATASET = "stackrlhf/hh-rlhf-harmless"
"""Name of the bundled HH-RLHF harmless-base test split (2,312 rows), so that default runs need no network."""
BUNDLED_FILE = Path(__file__).parent / "bundled" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")
"""A folder holding one of these was written by `save_to_disk` (a `DatasetDict`, a `Dataset`)."""
_BATCH_SIZE = 1000


def open_source(
    name: str,
    *,
    config: str | None = None,
    data_dir: str | None = None,
    split: str = "train",
    streaming: bool = False,
) -> SourceRows:
    """Open the source `name` and return its rows, lazily.

    Args:
        name: `BUNDLED_DATASET`; a local file (.jsonl, .json, .csv or .parquet, the first three also as .gz; a .json
            file holds an array of objects or JSON lines); a local folder of such files, or one `save_to_disk` wrote;
            or a Hub dataset name (``"name"`` or ``"owner/name"``, not a local path).
        config: the configuration (`load_dataset`'s ``name``); where the source has none of that name, a folder
            inside it (``data_dir``), as StackLLaMA's ``--subset data/finetune``. Folders of files and Hub datasets.
        data_dir: a folder inside the source (`load_dataset`'s ``data_dir``). Folders of files and Hub datasets.
        split: the split to read. A single file and a saved `Dataset` are one split each and ignore it.
        streaming: read a Hub dataset row by row instead of downloading it whole (local sources are read row by row
            anyway).

    Raises:
        DataError: a missing or unreadable file, an unknown file type, a folder without data files, an unknown split
            (the message lists the ones there are), or a Hub dataset that cannot be loaded.
        ConfigError: `config` or `data_dir` for a single file or a saved dataset, or naming neither a configuration
            nor a folder of a local folder.
    """
    if name == BUNDLED_DATASET:
        check_parts(name, BUNDLED_FILE, config, data_dir)
        return read_file(BUNDLED_FILE, name=BUNDLED_FILE.name)
    local = Path(name).expanduser()
    if is_saved_dataset(local):
        return _open_saved(local, name, config, data_dir, split)
    if local.is_dir():
        return _open_folder(local, name, config, data_dir, split)
    if not local.exists() and looks_like_hub_name(name):
        return _open_hub(name, config, data_dir, split, streaming)
    check_parts(name, local, config, data_dir)
    return read_file(local, name=name)


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder that `save_to_disk` wrote (a `DatasetDict` or a `Dataset`)."""
    return path.is_dir() and any((path / saved).is_file() for saved in SAVED_DATASET_FILES)


def check_parts(name: str, local: Path, config: str | None, data_dir: str | None) -> None:
    """`config` and `data_dir` are unset when `local` (the path `name` gives) is a single file or a saved dataset,
    which have neither configurations nor folders to choose from.

    Raises:
        ConfigError: one of them is set: ``--dataset_config X: prefs.jsonl is a single file, ...``.
    """
    for option, value in (("dataset_config", config), ("dataset_data_dir", data_dir)):
        if value is None:
            continue
        if local.is_dir():
            what = "was written by save_to_disk; choose among its splits with --dataset_split"
        else:
            what = "is a single file; give the file to read as --dataset_name"
        raise ConfigError(f"--{option} {value}: {name} {what} (it has no configurations or folders to choose from).")


def _open_folder(folder: Path, name: str, config: str | None, data_dir: str | None, split: str) -> SourceRows:
    """The files of one split of a local folder, read one after the other; rows are named by their file."""
    if config and data_dir is None and (folder / config).is_dir():
        config, data_dir = None, config  # a subfolder: StackLLaMA's --subset
    if data_dir and not (folder / data_dir).is_dir():
        raise ConfigError(f"--dataset_data_dir {data_dir}: no folder {data_dir!r} in {name}.")
    if config and config not in (configs := _config_names(folder)):
        folders = sorted(path.name for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
        raise ConfigError(
            f"--dataset_config {config}: {name} has no configuration or folder of that name (configurations: "
            f"{', '.join(configs) or 'none'}; folders: {', '.join(folders) or 'none'})."
        )
    try:
        builder = datasets.load_dataset_builder(str(folder), config, data_dir=data_dir)
    except FileNotFoundError as err:  # no data files (datasets' EmptyDatasetError and DataFilesNotFoundError)
        raise DataError(f"{name}: no data files found in it ({first_line(err)})") from err
    except yaml.YAMLError as err:
        raise DataError(f"{name}: the YAML header of its README.md is not valid ({one_line(err)})") from err
    except ValueError as err:
        configs = _config_names(folder)
        if config is None and len(configs) > 1:
            raise ConfigError(
                f"{name} has several configurations; choose one with --dataset_config: {', '.join(configs)}."
            ) from err
        raise DataError(f"{name}: cannot read the folder with datasets ({first_line(err)})") from err
    files = {str(split_name): list(paths) for split_name, paths in (builder.config.data_files or {}).items()}
    if split not in files:
        raise DataError(f"{name}: no split {split!r}; it has {', '.join(files) or 'none'}")
    root = folder.resolve()
    return _chain_files(name, [(Path(path), _shown(name, root, Path(path))) for path in files[split]])


def _config_names(folder: Path) -> list[str]:
    """The configurations `datasets` finds in a local folder (``default`` without a README declaring any); none where
    it cannot tell (a malformed README: reading the folder then reports it)."""
    try:
        return datasets.get_dataset_config_names(str(folder))
    except (OSError, ValueError, yaml.YAMLError):
        return []


def _shown(name: str, root: Path, path: Path) -> str:
    """How messages name `path`, a file of the folder `name` (resolved: `root`): ``name/train/part-0.jsonl``."""
    try:
        return str(Path(name) / path.resolve().relative_to(root))
    except ValueError:  # not under the folder (a README's configuration may point elsewhere)
        return str(path)


def _chain_files(name: str, files: list[tuple[Path, str]]) -> SourceRows:
    """The rows of each file (path, name in messages) in turn, each row tagged with its file; a file is opened when
    its rows are reached. The columns are those of the first file that has any."""
    sources = (read_file(path, name=shown) for path, shown in files)
    opened: list[SourceRows] = []
    for source in sources:
        opened.append(source)
        if source.columns:
            break
    columns = opened[-1].columns if opened else []
    rows = (
        RawRow(row.number, row.values, row.problem, source.name)
        for source in itertools.chain(opened, sources)
        for row in source.rows
    )
    return SourceRows(name, columns, rows)


def _open_saved(folder: Path, name: str, config: str | None, data_dir: str | None, split: str) -> SourceRows:
    """A folder `save_to_disk` wrote: a `DatasetDict` (its `split`) or a `Dataset` (all of it)."""
    check_parts(name, folder, config, data_dir)
    try:
        saved = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, pa.ArrowException) as err:
        raise DataError(f"{name}: cannot read the saved dataset ({first_line(err)})") from err
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise DataError(f"{name}: no split {split!r}; it has {', '.join(saved) or 'none'}")
        saved = saved[split]
    return _dataset_rows(name, saved)


def _open_hub(name: str, config: str | None, data_dir: str | None, split: str, streaming: bool) -> SourceRows:
    """A split of a Hugging Face Hub dataset, via `datasets.load_dataset`."""
    try:
        try:
            dataset = datasets.load_dataset(name, config, data_dir=data_dir, split=split, streaming=streaming)
        except ValueError as err:
            if config is None or data_dir is not None or f"BuilderConfig '{config}' not found" not in str(err):
                raise
            # No configuration of that name: a folder inside the dataset, as StackLLaMA's --subset data/finetune.
            dataset = datasets.load_dataset(name, None, data_dir=config, split=split, streaming=streaming)
    except (OSError, ValueError, DatasetsError) as err:  # not found, offline, unknown split ...
        raise DataError(f"{name}: not a local file, and loading it with datasets failed ({first_line(err)})") from err
    return _dataset_rows(name, dataset)


def _dataset_rows(name: str, dataset: datasets.Dataset | datasets.IterableDataset) -> SourceRows:
    """The rows of a `datasets` split, numbered from 1, read in batches."""

    def rows() -> Iterator[RawRow]:
        batches = dataset.iter(batch_size=_BATCH_SIZE)
        records = (
            dict(zip(batch, values, strict=True)) for batch in batches for values in zip(*batch.values(), strict=True)
        )
        for number, values in enumerate(records, start=1):
            yield RawRow(number, values)

    if dataset.column_names is None:  # a stream that does not declare its features: read them off the first row
        return with_columns(name, rows())
    return SourceRows(name, list(dataset.column_names), rows())
