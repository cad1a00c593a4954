"""Turn one source row into a preference pair: question, chosen answer, rejected answer.

Three row formats are understood:

- ``stack_exchange``: lvwerra/stack-exchange-paired rows, ``question`` with the preferred answer in ``response_j`` and
  the rejected one in ``response_k`` (other columns such as ``qid`` or ``metadata`` are ignored);
- ``hh``: Anthropic HH-RLHF rows, two full dialogues ``chosen`` and ``rejected`` that share every turn but the last
  Assistant answer (see `split_hh_dialogues`);
- ``columns``: any rows that have (possibly after a column mapping) ``question``, ``chosen`` and ``rejected``.

``auto`` picks one of them from the column names. Every text is stripped of surrounding whitespace, and a pair whose
two answers are identical is rejected: it teaches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, get_args

from stackrlhf.errors import ConfigError, DataError

DatasetFormat = Literal["auto", "stack_exchange", "hh", "columns"]
DATASET_FORMATS: tuple[str, ...] = get_args(DatasetFormat)
PAIR_FIELDS: tuple[str, ...] = ("question", "chosen", "rejected")

# Target field -> column name the format reads it from.
STACK_EXCHANGE_FIELDS = {"question": "question", "chosen": "response_j", "rejected": "response_k"}
COLUMNS_FIELDS = {"question": "question", "chosen": "chosen", "rejected": "rejected"}
HH_FIELDS = {"chosen": "chosen", "rejected": "rejected"}

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_MAPPING_EXAMPLE = "prompt=question,better=chosen,worse=rejected"


class PreferencePair(NamedTuple):
    """One normalised preference row: answers only, no prompt template."""

    question: str
    chosen: str
    rejected: str


class BadRow(Exception):
    """A row that cannot be used; the loader adds the source name and the row number."""

    def __init__(self, problem: str, field: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.field = field

    def describe(self, row: int) -> str:
        """``"row <n>, field '<field>': <problem>"`` (without the field part for a whole-row problem)."""
        field = f", field '{self.field}'" if self.field else ""
        return f"row {row}{field}: {self.problem}"


RowConverter = Callable[[Mapping[str, Any]], PreferencePair]


def parse_column_mapping(mapping: str | Mapping[str, str] | None) -> dict[str, str]:
    """Validate a mapping from source column names to ``question``/``chosen``/``rejected``.

    Args:
        mapping: ``{"prompt": "question", "better": "chosen"}``, the command-line form
            ``"prompt=question,better=chosen"`` (spaces around names are ignored), or None / ``""`` for no mapping.

    Returns:
        The mapping as a dict (empty for no mapping).

    Raises:
        ConfigError: a malformed string, a target other than question/chosen/rejected, or two columns mapped to the
            same target.
    """
    if not mapping:
        return {}
    if isinstance(mapping, str):
        items = []
        for item in mapping.split(","):
            source, sep, target = (part.strip() for part in item.partition("="))
            if not (sep and source and target):
                raise ConfigError(
                    f"column mapping {mapping!r}: expected 'source=target,...', e.g. {_MAPPING_EXAMPLE!r}"
                )
            items.append((source, target))
    else:
        items = list(mapping.items())
    parsed: dict[str, str] = {}
    for source, target in items:
        if target not in PAIR_FIELDS:
            raise ConfigError(
                f"column mapping: {source!r} maps to {target!r}; targets must be one of {', '.join(PAIR_FIELDS)}"
            )
        if target in parsed.values():
            raise ConfigError(f"column mapping: more than one column maps to {target!r}")
        parsed[source] = target
    return parsed


def resolve_converter(
    columns: Sequence[str],
    dataset_format: str = "auto",
    column_mapping: Mapping[str, str] | None = None,
    *,
    source: str,
) -> RowConverter:
    """Choose how to read rows with these `columns`, after renaming them with a parsed `column_mapping`.

    ``auto`` picks ``stack_exchange`` when the (renamed) columns include response_j or response_k, ``hh`` when
    they include chosen/rejected but no question, ``columns`` otherwise. Error messages name the source's own column
    names, not the mapped ones.

    Raises:
        ConfigError: an unknown format.
        DataError: the mapping names a column the source lacks, or the format's columns are missing.
    """
    if dataset_format not in DATASET_FORMATS:
        raise ConfigError(f"unknown dataset format {dataset_format!r}; choose one of {', '.join(DATASET_FORMATS)}")
    mapping = dict(column_mapping or {})
    unknown = [name for name in mapping if name not in columns]
    if unknown:
        raise DataError(
            f"{source}: the column mapping names {', '.join(map(repr, unknown))}, which the data lacks "
            f"(columns found: {', '.join(columns)})"
        )
    # Name after mapping -> source column; a mapped column wins over an unmapped one of the same name.
    renamed = {name: name for name in columns if name not in mapping} | {
        target: name for name, target in mapping.items()
    }
    if dataset_format == "auto":
        if {"response_j", "response_k"} & renamed.keys():
            dataset_format = "stack_exchange"
        elif {"chosen", "rejected"} <= renamed.keys() and "question" not in renamed:
            dataset_format = "hh"
        else:
            dataset_format = "columns"
    wanted = {"stack_exchange": STACK_EXCHANGE_FIELDS, "hh": HH_FIELDS, "columns": COLUMNS_FIELDS}[dataset_format]
    missing = [name for name in wanted.values() if name not in renamed]
    if missing:
        raise DataError(
            f"{source}: format {dataset_format!r} needs columns {', '.join(wanted.values())}; "
            f"found {', '.join(columns) or 'none'}; missing {', '.join(missing)} "
            f"(map yours with a column mapping such as {_MAPPING_EXAMPLE!r})"
        )
    fields = {target: renamed[name] for target, name in wanted.items()}
    if dataset_format == "hh":
        return lambda row: hh_pair(row, chosen_column=fields["chosen"], rejected_column=fields["rejected"])
    return lambda row: columns_pair(row, fields)


def text_value(row: Mapping[str, Any], column: str) -> str:
    """The stripped, non-empty string in ``row[column]``.

    Raises:
        BadRow: the column is absent, null, not a string, not valid UTF-8 (undecodable bytes or lone surrogates), or
            empty/whitespace-only.
    """
    if column not in row:
        raise BadRow("missing field", column)
    value = row[column]
    if value is None:
        raise BadRow("null value", column)
    if not isinstance(value, str):
        raise BadRow(f"expected text, got {type(value).__name__}", column)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRow(f"invalid UTF-8 at character {err.start}", column) from None
    if not value.strip():
        raise BadRow("empty text", column)
    return value.strip()


def columns_pair(row: Mapping[str, Any], fields: Mapping[str, str]) -> PreferencePair:
    """Read a pair from three text columns; `fields` maps question/chosen/rejected to the columns holding them."""
    pair = PreferencePair(*(text_value(row, fields[name]) for name in PAIR_FIELDS))
    if pair.chosen == pair.rejected:
        raise BadRow(f"same answer as '{fields['chosen']}'", fields["rejected"])
    return pair


def hh_pair(
    row: Mapping[str, Any], chosen_column: str = "chosen", rejected_column: str = "rejected"
) -> PreferencePair:
    """Read a pair from an HH-RLHF row holding two full dialogues; see `split_hh_dialogues`."""
    return split_hh_dialogues(
        text_value(row, chosen_column),
        text_value(row, rejected_column),
        chosen_column=chosen_column,
        rejected_column=rejected_column,
    )


def split_hh_dialogues(
    chosen: str, rejected: str, *, chosen_column: str = "chosen", rejected_column: str = "rejected"
) -> PreferencePair:
    """Split two HH-RLHF dialogues into the shared question and the two last Assistant answers.

    Each dialogue is cut at its last ``"\\n\\nAssistant:"``; the parts before it must be identical. The question is
    that shared part rendered as follows:

    - a single Human turn gives just the human's text: ``"\\n\\nHuman: Hi?"`` -> ``"Hi?"``;
    - a longer dialogue keeps one labelled turn per paragraph, e.g.
      ``"Human: Hi?\\n\\nAssistant: Hello.\\n\\nHuman: How are you?"`` (each turn's text stripped).

    Raises:
        BadRow: a dialogue without an Assistant turn, an empty last answer, dialogues that differ before their last
            Assistant turn, no question text, or identical answers.
    """
    prefix, chosen_answer = _split_last_answer(chosen, chosen_column)
    rejected_prefix, rejected_answer = _split_last_answer(rejected, rejected_column)
    if prefix != rejected_prefix:
        raise BadRow(f"the dialogue differs from '{chosen_column}' before the last Assistant turn", rejected_column)
    if chosen_answer == rejected_answer:
        raise BadRow(f"same last answer as '{chosen_column}'", rejected_column)
    question = render_hh_question(prefix)
    if not question:
        raise BadRow("no question before the last Assistant turn", chosen_column)
    return PreferencePair(question, chosen_answer, rejected_answer)


def render_hh_question(prefix: str) -> str:
    """Render the turns of an HH dialogue prefix as the question text (see `split_hh_dialogues`)."""
    lead, *rest = _HH_TURN.split(prefix)
    turns = [f"{speaker}: {text.strip()}".rstrip() for speaker, text in zip(rest[::2], rest[1::2], strict=True)]
    if lead.strip():  # text before the first turn marker, kept as its own paragraph
        turns.insert(0, lead.strip())
    elif len(turns) == 1 and rest[0] == "Human":
        return rest[1].strip()
    return "\n\n".join(turns)


def _split_last_answer(dialogue: str, column: str) -> tuple[str, str]:
    """(text before the last Assistant turn, that turn's stripped answer)."""
    cut = dialogue.rfind(HH_ASSISTANT)
    if cut < 0:
        raise BadRow("no '\\n\\nAssistant:' turn in the dialogue", column)
    answer = dialogue[cut + len(HH_ASSISTANT) :].strip()
    if not answer:
        raise BadRow("empty last Assistant answer", column)
    return dialogue[:cut], answer
