"""Load any supported source as a preference dataset (question/chosen/rejected), strictly or skipping bad rows."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from datasets import Dataset

from stackrlhf.data.formats import PAIR_FIELDS, BadRow, parse_column_mapping, resolve_converter
from stackrlhf.data.sources import BUNDLED_DATASET, open_source
from stackrlhf.data.templates import string_dataset
from stackrlhf.errors import DataError

logger = logging.getLogger(__name__)

MAX_REPORTED_REASONS = 5


@dataclass(frozen=True)
class LoadedPairs:
    """A loaded preference dataset and what was left out of it.

    Attributes:
        pairs: string columns ``question``, ``chosen``, ``rejected``, in source order.
        source: the name messages use for the source.
        rows_read: rows found in the source, bad ones included.
        skipped: bad rows left out (only with skipping on).
        skip_reasons: why the first `MAX_REPORTED_REASONS` skipped rows were bad, e.g.
            ``"row 87, field 'chosen': empty last Assistant answer"``.
    """

    pairs: Dataset
    source: str
    rows_read: int
    skipped: int
    skip_reasons: tuple[str, ...]

    def summary(self) -> str:
        """One line: rows kept, and the skipped count with the first reasons when rows were skipped."""
        line = f"{self.source}: {len(self.pairs)} usable preference pairs of {self.rows_read} rows"
        if self.skipped:
            unlisted = self.skipped - len(self.skip_reasons)
            line += f"; skipped {self.skipped} bad rows: {'; '.join(self.skip_reasons)}"
            line += f"; and {unlisted} more" if unlisted else ""
        return line


def load_preference_pairs(
    name: str = BUNDLED_DATASET,
    *,
    dataset_format: str = "auto",
    column_mapping: str | Mapping[str, str] | None = None,
    config: str | None = None,
    data_dir: str | None = None,
    split: str = "train",
    skip_bad_rows: bool | None = None,
    streaming: bool = False,
    max_pairs: int | None = None,
) -> LoadedPairs:
    """Read a source and normalise every row to a preference pair.

    Args:
        name: `BUNDLED_DATASET`, a local .jsonl/.json/.csv/.parquet file (.jsonl.gz, .json.gz, .csv.gz too), a local
            folder of such files or one `datasets`' `save_to_disk` wrote, or a Hugging Face Hub dataset name.
        dataset_format: ``"auto"``, ``"stack_exchange"``, ``"hh"`` or ``"columns"`` (see `stackrlhf.data.formats`).
        column_mapping: source column -> ``question``/``chosen``/``rejected``, as a dict or ``"a=question,b=chosen"``.
        config, data_dir, split, streaming: which part of a folder or Hub dataset to read, and how (see
            `stackrlhf.data.sources.open_source`).
        skip_bad_rows: True skips bad rows (counted in the result and logged as one warning), False raises on the
            first one. None (the default) skips for the bundled sample, whose 9 rows that don't split into a clean
            pair are known, and is strict for any other source.

    Returns:
        The pairs, with the number of rows read and skipped.

    Raises:
        DataError: an unreadable source, missing columns, a bad row when strict, or no usable rows. The message is one
            line naming the source and, for a bad row, its 1-based row number, the field and the problem, e.g.
            ``"harmless.jsonl, row 17, field 'chosen': empty text"`` (in a folder of files, the file in it).
        ConfigError: a malformed column mapping, an unknown format, or a `config` or `data_dir` the source lacks.
    """
    mapping = parse_column_mapping(column_mapping)
    if skip_bad_rows is None:
        skip_bad_rows = name == BUNDLED_DATASET
    source = open_source(name, config=config, data_dir=data_dir, split=split, streaming=streaming)
    # No columns: the source is empty or none of its rows could be decoded (each is reported as a bad row below).
    convert = (
        resolve_converter(source.columns, dataset_format, mapping, source=source.name) if source.columns else None
    )
    columns: dict[str, list[str]] = {name: [] for name in PAIR_FIELDS}
    rows_read = skipped = 0
    reasons: list[str] = []
    for row in source.rows:
        if max_pairs is not None and len(columns["question"]) >= max_pairs:
            break
        rows_read += 1
        try:
            if row.problem:
                raise BadRow(row.problem)
            pair = convert(row.values)  # set: a source has columns as soon as it has one decodable row
        except BadRow as bad:
            reason = bad.describe(row.number)
            if not skip_bad_rows:
                raise DataError(f"{source.where(row)}, {reason}") from None
            reason = f"{row.file}, {reason}" if row.file else reason
            skipped += 1
            if len(reasons) < MAX_REPORTED_REASONS:
                reasons.append(reason)
            continue
        for name, value in zip(PAIR_FIELDS, pair, strict=True):
            columns[name].append(value)
    if not rows_read:
        raise DataError(f"{source.name}: no rows")
    loaded = LoadedPairs(string_dataset(columns), source.name, rows_read, skipped, tuple(reasons))
    if not loaded.pairs.num_rows:
        raise DataError(f"{loaded.summary()}; no usable rows left")
    if skipped:
        report_skipped_once(loaded.summary())
    return loaded


_REPORTED: set[str] = set()


def report_skipped_once(summary: str) -> None:
    """Warn about skipped rows once per run: a run reads its data several times (each offline stage, the RL loop,
    evaluation) and in each of its processes, but the same skipped rows are worth one line, from the first process."""
    if summary in _REPORTED or os.environ.get("RANK", "0") != "0":
        logger.debug(summary)
        return
    _REPORTED.add(summary)
    logger.warning(summary)
