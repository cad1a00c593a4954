"""Prompt-only data: the prompts an RL stage completes, with no answers to compare.

* `PromptArguments`: where the prompts come from (bundled story openings, a text file with one prompt per line, or
  the texts of a dataset column) and how they are cut (TRL's sentiment example took the first 2-7 tokens of IMDB
  reviews);
* `read_prompts`: those prompts as strings; `bundled_openings`: the bundled story openings;
* `prompt_budget` / `tokenize_prompts`: the longest prompt that leaves room for a response in the model's context,
  and the prompts of at most that many tokens, tokenized (`Prompts`) for the RL loop.

Errors are one line naming the source and, where it applies, the line or row and field.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stackrlhf.data.formats import BadRow, text_value
from stackrlhf.data.sources import open_source
from stackrlhf.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from stackrlhf.trainer.rl_loop import RLLoopArguments

logger = logging.getLogger(__name__)


@dataclass
class PromptArguments:
    """The prompts: story openings (bundled), one prompt per line of a text file, or the openings of a dataset's texts
    (TRL's example took the first 2-7 tokens of IMDB reviews)."""

    prompts_file: str | None = field(
        default=None,
        metadata={"help": "A UTF-8 text file with one prompt per line. Default: the bundled story openings."},
    )
    prompts_dataset: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset (e.g. imdb) or a local .jsonl/.json/.csv/.parquet file whose texts are cut into "
            "prompts (its train split); see --prompts_column and --query_min_length."
        },
    )
    prompts_column: str = field(default="text", metadata={"help": "The text column of --prompts_dataset."})
    min_prompt_chars: int = field(
        default=0, metadata={"help": "Skip texts shorter than this many characters (TRL's example: 200)."}
    )
    query_min_length: int | None = field(
        default=None,
        metadata={"help": "Cut each text to its first N tokens, N drawn in [query_min_length, query_max_length)."},
    )
    query_max_length: int | None = field(default=None, metadata={"help": "See --query_min_length (excluded)."})

    def __post_init__(self) -> None:
        if self.prompts_file and self.prompts_dataset:
            raise ConfigError("give either --prompts_file or --prompts_dataset, not both.")
        lengths = (self.query_min_length, self.query_max_length)
        if any(value is not None for value in lengths) and not (
            None not in lengths and 0 < self.query_min_length < self.query_max_length
        ):
            raise ConfigError(
                f"need 0 < query_min_length < query_max_length, got {self.query_min_length} and "
                f"{self.query_max_length}."
            )


def bundled_openings() -> list[str]:
    """The bundled story openings (written for this project, one per line)."""
    text = resources.files("stackrlhf.data").joinpath("bundled/stories/openings.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_prompts(
    args: PromptArguments, tokenizer: PreTrainedTokenizerBase, seed: int, *, num_heldout: int = 0
) -> list[str]:
    """The prompts: bundled openings, `prompts_file` lines or `prompts_dataset` texts, filtered and cut to
    `query_*_length` tokens (lengths drawn with `seed`).

    Args:
        args: the source and cut.
        tokenizer: counts the tokens of `query_*_length` (and decodes the cut prompts).
        seed: seed of the drawn lengths; the same seed gives the same prompts.
        num_heldout: prompts the caller keeps out of training (`--num_heldout_prompts`); at least one more is needed.

    Raises:
        ConfigError: a missing or unreadable source (a file that is not UTF-8 names its line), a missing column, or
            no more prompts than `num_heldout`.
    """
    source = args.prompts_file or args.prompts_dataset or "bundled openings"
    if args.prompts_dataset:
        prompts = _dataset_texts(args.prompts_dataset, args.prompts_column)
    elif args.prompts_file:
        prompts = _file_lines(Path(args.prompts_file))
    else:
        prompts = bundled_openings()
    prompts = [text for text in prompts if len(text) >= args.min_prompt_chars]
    if args.query_min_length is not None:
        rng = np.random.default_rng(seed)
        prompts = [
            tokenizer.decode(
                tokenizer(text, add_special_tokens=False)["input_ids"][
                    : rng.integers(args.query_min_length, args.query_max_length)
                ]
            )
            for text in prompts
        ]
    if not prompts:
        shorter = f" (--min_prompt_chars {args.min_prompt_chars})" if args.min_prompt_chars else ""
        raise ConfigError(f"{source}: no prompts{shorter}.")
    if len(prompts) <= num_heldout:
        raise ConfigError(
            f"{source}: {len(prompts)} prompts, but {num_heldout} are held out for samples; give more "
            "prompts or lower --num_heldout_prompts."
        )
    return prompts


def _file_lines(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped (an initial byte-order mark dropped)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(f"--prompts_file {path}: no such file.") from err
    except OSError as err:
        raise ConfigError(f"--prompts_file {path}: cannot read it ({err.strerror or err}).") from err
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"--prompts_file {path}, line {line}: not UTF-8 text (byte {err.start}).") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def _dataset_texts(name: str, column: str) -> list[str]:
    """The non-blank texts of `column` of a local data file or a `datasets` source (its train split), stripped;
    a non-string value is read as its string."""
    try:
        source = open_source(name)
    except DataError as err:
        raise ConfigError(f"--prompts_dataset {err}") from err
    if source.columns and column not in source.columns:
        raise ConfigError(f"--prompts_dataset {name}: no column {column!r} (it has {source.columns}).")
    texts = []
    try:
        for row in source.rows:
            if row.problem:
                raise BadRow(row.problem)
            value = row.values.get(column)
            if value is not None and str(value).strip():
                texts.append(text_value({column: str(value)}, column))
    except BadRow as bad:
        raise ConfigError(f"--prompts_dataset {source.where(row)}, {bad.describe(row.number)}") from None
    except DataError as err:
        raise ConfigError(f"--prompts_dataset {err}") from err
    return texts


@dataclass
class Prompts:
    """Tokenized prompts: `texts[i]` and its ids `input_ids[i]` (1-D LongTensor, no padding)."""

    texts: list[str]
    input_ids: list[torch.Tensor]


def tokenize_prompts(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_prompt_length: int, source: str
) -> Prompts:
    """Tokenize `texts`, dropping (with a warning) those longer than `max_prompt_length` tokens.

    Raises:
        ConfigError: no prompt is short enough.
    """
    import torch  # here, so that importing `stackrlhf.data` does not load torch

    kept_texts, kept_ids, longest = [], [], 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        longest = max(longest, len(ids))
        if 0 < len(ids) <= max_prompt_length:
            kept_texts.append(text)
            kept_ids.append(torch.tensor(ids, dtype=torch.long))
    dropped = len(texts) - len(kept_texts)
    if not kept_texts:
        raise ConfigError(
            f"{source}: all {len(texts)} prompts are longer than {max_prompt_length} tokens (longest {longest}); "
            "raise --max_prompt_length, lower --output_max_length or use shorter prompts."
        )
    if dropped:
        logger.warning(
            "%s: dropped %d of %d prompts longer than %d tokens (longest %d).",
            source,
            dropped,
            len(texts),
            max_prompt_length,
            longest,
        )
    return Prompts(kept_texts, kept_ids)


def prompt_budget(model_config: Any, tokenizer: PreTrainedTokenizerBase, args: RLLoopArguments) -> int:
    """The longest prompt kept: `args.max_prompt_length`, at most the room left in the model's context once
    `output_max_length` response tokens are reserved.

    Raises:
        ConfigError: the responses alone fill the context.
    """
    context = getattr(model_config, "max_position_embeddings", None) or tokenizer.model_max_length
    room = context - args.output_max_length
    if room < 1:
        raise ConfigError(
            f"output_max_length {args.output_max_length} leaves no room for a prompt in the model's {context}-token "
            "context; lower --output_max_length."
        )
    if args.max_prompt_length is not None and args.max_prompt_length > room:
        raise ConfigError(
            f"max_prompt_length {args.max_prompt_length} + output_max_length {args.output_max_length} exceed the "
            f"model's {context}-token context."
        )
    return args.max_prompt_length or room
