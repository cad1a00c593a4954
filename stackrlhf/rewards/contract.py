"""The reward contract every reward source meets: texts (query + response) in, one float per text out.

`check_rewards` enforces it before an update sees the scores: as many rewards as texts, every one finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from stackrlhf.errors import StackRLHFError

RewardFunction = Callable[[Sequence[str]], list[float]]


class RewardError(StackRLHFError):
    """A reward that PPO cannot use (NaN or infinite)."""


def check_rewards(scores: Sequence[float], texts: Sequence[str], source: str, step: int) -> list[float]:
    """Return `scores` as floats, or raise `RewardError` naming the first non-finite one and its text.

    Raised before the PPO update, so the weights, the optimizer and every saved checkpoint stay as they were.
    """
    scores = [float(score) for score in scores]
    if len(scores) != len(texts):
        raise RewardError(f"{source} returned {len(scores)} rewards for {len(texts)} texts at step {step}.")
    for index, (score, text) in enumerate(zip(scores, texts, strict=True)):
        if not math.isfinite(score):
            preview = " ".join(text.split())[:80]
            raise RewardError(
                f"{source} returned {score} for sample {index} of step {step} ({preview!r}); stopped before the "
                "update, checkpoints are intact. Check the reward model's weights and dtype."
            )
    return scores
