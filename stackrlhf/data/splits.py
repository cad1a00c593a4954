"""Deterministic training/evaluation splits of a preference dataset."""

from __future__ import annotations

import logging

from datasets import Dataset

from stackrlhf.data.arguments import DataArguments
from stackrlhf.data.loading import load_preference_pairs
from stackrlhf.errors import DataError

logger = logging.getLogger(__name__)


def split_pairs(
    pairs: Dataset, *, eval_samples: int, max_samples: int | None = None, seed: int = 42
) -> tuple[Dataset, Dataset]:
    """Shuffle `pairs` with `seed`, keep the first `max_samples` rows, and hold out the first `eval_samples` of them.

    Returns:
        (train, eval): disjoint datasets with the columns of `pairs`; the same inputs always give the same split.

    Raises:
        DataError: `eval_samples` would leave no training rows.
    """
    total = pairs.num_rows if max_samples is None else min(max_samples, pairs.num_rows)
    if eval_samples >= total:
        raise DataError(
            f"eval_samples={eval_samples} leaves no training rows: only {total} usable rows"
            + (f" (of {pairs.num_rows}, max_samples={max_samples})" if total < pairs.num_rows else "")
        )
    shuffled = pairs.shuffle(seed=seed, keep_in_memory=True)
    train = shuffled.select(range(eval_samples, total))
    held_out = shuffled.select(range(eval_samples))
    return train, held_out


def load_splits(args: DataArguments) -> tuple[Dataset, Dataset]:
    """Load the preference data `args` describes and split it into (train, eval) with `split_pairs`.

    Both come from the one split `args.dataset_split` (TRL's scripts read a second, ``--dataset_test_split``, for
    evaluation): the evaluation rows are held out of it by the seeded shuffle, so a single file (one split only) and
    a Hub dataset are split alike, and the same `dataset_seed` always holds out the same rows.

    Both datasets have string columns ``question``, ``chosen`` and ``rejected``; turn them into training shapes with
    `to_sft_dataset`, `to_reward_dataset` or `to_prompt_dataset`. Skipped bad rows are logged as a warning; use
    `load_preference_pairs` directly to get their count.

    Raises:
        DataError: unreadable data, a bad row when not skipping, no usable rows, or too few rows for `eval_samples`.
    """
    loaded = load_preference_pairs(
        args.dataset_name,
        dataset_format=args.dataset_format,
        column_mapping=args.column_mapping,
        config=args.dataset_config,
        data_dir=args.dataset_data_dir,
        split=args.dataset_split,
        skip_bad_rows=args.skip_bad_rows or None,  # None: strict, except for the bundled sample's known bad rows
        streaming=args.dataset_streaming,
        max_pairs=args.max_samples if args.dataset_streaming else None,
    )
    train, held_out = split_pairs(
        loaded.pairs, eval_samples=args.eval_samples, max_samples=args.max_samples, seed=args.dataset_seed
    )
    logger.info("%s; %d training and %d evaluation rows", loaded.summary(), train.num_rows, held_out.num_rows)
    return train, held_out
