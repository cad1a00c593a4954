"""Read the raw rows of a local data file (.jsonl, .json, .csv, .parquet; the text ones also gzip-compressed).

Local files are read here rather than through `datasets`, so that every row keeps its number and a broken row is
reported (or skipped) on its own instead of failing the whole file. Row numbers are 1-based: the line number for JSON
lines, the record number (header not counted) for CSV, JSON arrays and Parquet. `stackrlhf.data.sources` opens a
source by name (the bundled sample, a file, a folder of files, a saved or Hub dataset) with these readers.

Text is decoded as UTF-8 with undecodable bytes kept as lone surrogates, so a bad byte only spoils the field that
holds it (`formats.text_value` reports it as invalid UTF-8).
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from stackrlhf.errors import DataError, first_line

FILE_TYPES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_TEXT_TYPES = ("jsonl", "json", "csv")  # the ones that may also be gzip-compressed (".jsonl.gz" ...)
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass(frozen=True)
class RawRow:
    """One source row before conversion: its values, or (values None) the problem that kept it from being decoded.

    `number` counts within its file; `file` names that file in a source of several files (None otherwise).
    """

    number: int
    values: Mapping[str, Any] | None
    problem: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class SourceRows:
    """The rows of a source, with the name used in messages and the column names of its first decodable row."""

    name: str
    columns: list[str]
    rows: Iterator[RawRow]

    def where(self, row: RawRow) -> str:
        """How messages name the file `row` comes from: its own file in a source of several, else the source."""
        return row.file or self.name


def read_file(path: Path, *, name: str) -> SourceRows:
    """Read a local data file row by row; `name` is how messages refer to it.

    Raises:
        DataError: the file is missing or unreadable, has an unknown type, or is not valid JSON / CSV / Parquet as a
            whole (a bad JSON line is only a bad row).
    """
    if not path.is_file():
        raise DataError(f"{name}: no such file")
    file_type, compressed = _file_type(path)
    if file_type is None:
        raise DataError(
            f"{name}: unknown file type; expected one of {', '.join(FILE_TYPES)} "
            f"(or {', '.join(f'.{t}.gz' for t in _TEXT_TYPES)})"
        )
    try:
        source = _open_file(path, name, file_type, compressed)
    except (OSError, EOFError, pa.ArrowException) as err:
        raise _unreadable(name, err) from err
    return SourceRows(name, source.columns, _rows_or_unreadable(name, source.rows))


def _open_file(path: Path, name: str, file_type: str, compressed: bool) -> SourceRows:
    if file_type == "parquet":
        return _read_parquet(path, name)
    text = _open_text(path, compressed)
    if file_type == "csv":
        return _read_csv(text, name)
    if file_type == "json" and _starts_with_bracket(text):
        return _read_json_array(text, name)
    return with_columns(name, _json_lines(text))


def _rows_or_unreadable(name: str, rows: Iterator[RawRow]) -> Iterator[RawRow]:
    """`rows`, turning a read error part-way through (e.g. a truncated .gz file) into a `DataError`."""
    try:
        yield from rows
    except (OSError, EOFError, pa.ArrowException) as err:
        raise _unreadable(name, err) from err


def _unreadable(name: str, err: BaseException) -> DataError:
    return DataError(f"{name}: cannot read the file ({first_line(err)})")


def _file_type(path: Path) -> tuple[str | None, bool]:
    """(file type from the name's extension or None, whether it is gzip-compressed)."""
    name = path.name.lower()
    compressed = name.endswith(".gz")
    file_type = FILE_TYPES.get(Path(name.removesuffix(".gz")).suffix)
    if compressed and file_type not in _TEXT_TYPES:
        return None, True
    return file_type, compressed


def looks_like_hub_name(path: str) -> bool:
    """Whether a path that doesn't exist locally reads as ``"name"`` or ``"owner/name"`` rather than a file name."""
    return bool(_HUB_NAME.fullmatch(path)) and _file_type(Path(path))[0] is None and not path.endswith(".gz")


def _open_text(path: Path, compressed: bool) -> IO[str]:
    """The file as text: UTF-8 (an initial byte-order mark dropped), bad bytes kept as lone surrogates."""
    raw = gzip.open(path, "rb") if compressed else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline=None)


def _starts_with_bracket(text: IO[str]) -> bool:
    """Whether the first non-blank character of a .json file is ``[`` (an array rather than JSON lines)."""
    head = text.read(4096)
    while head and not head.strip():
        head = text.read(4096)
    text.seek(0)
    return head.lstrip().startswith("[")


def _json_lines(text: IO[str]) -> Iterator[RawRow]:
    """One row per non-blank line; undecodable lines and non-objects become rows with a problem."""
    with text:
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\n"))
            except json.JSONDecodeError as err:
                yield RawRow(number, None, f"not valid JSON ({err.msg} at column {err.colno})")
                continue
            yield _object_row(number, value)


def _read_json_array(text: IO[str], name: str) -> SourceRows:
    """A .json file holding one array of objects."""
    with text:
        try:
            values = json.load(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{name}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from err
    if not isinstance(values, list):
        raise DataError(f"{name}: expected an array of objects or one JSON object per line")
    return with_columns(name, (_object_row(number, value) for number, value in enumerate(values, start=1)))


def _object_row(number: int, value: Any) -> RawRow:
    if isinstance(value, dict):
        return RawRow(number, value)
    return RawRow(number, None, f"expected a JSON object, got {type(value).__name__}")


def _read_csv(text: IO[str], name: str) -> SourceRows:
    """A CSV file with a header row; every value is text."""
    reader = csv.DictReader(text)
    try:
        columns = list(reader.fieldnames or [])
    except csv.Error as err:
        raise DataError(f"{name}: not valid CSV ({err})") from err

    def rows() -> Iterator[RawRow]:
        with text:
            number = 0
            while True:
                number += 1
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:  # e.g. a field over the size limit; the reader can go on after it
                    yield RawRow(number, None, f"not valid CSV ({err})")
                    continue
                # A short row's absent values (None) and a long row's extra values (key None) are left out:
                # absent values read as missing fields.
                yield RawRow(number, {key: value for key, value in values.items() if None not in (key, value)})

    return SourceRows(name, columns, rows())


def _read_parquet(path: Path, name: str) -> SourceRows:
    parquet = pq.ParquetFile(path)
    columns = list(parquet.schema_arrow.names)
    if not columns:
        raise DataError(f"{name}: the Parquet file has no columns")

    def rows() -> Iterator[RawRow]:
        batches = (batch.to_pylist() for batch in parquet.iter_batches())
        for number, values in enumerate(itertools.chain.from_iterable(batches), start=1):
            yield RawRow(number, values)

    return SourceRows(name, columns, rows())


def with_columns(name: str, rows: Iterable[RawRow]) -> SourceRows:
    """Take the column names from the first decodable row, keeping every row (that one included) in order."""
    rows = iter(rows)
    seen: list[RawRow] = []
    for row in rows:
        seen.append(row)
        if row.values is not None:
            return SourceRows(name, list(row.values), itertools.chain(seen, rows))
    return SourceRows(name, [], iter(seen))
