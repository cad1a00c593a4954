"""Any stackrlhf reward as a reward function of TRL's `GRPOTrainer` and `RLOOTrainer` (TRL 1.16).

TRL calls a custom reward function with keyword arguments only, one entry per completion::

    reward_func(prompts=prompts, completions=completions, completion_ids=completion_ids, trainer_state=state,
                log_extra=..., log_metric=..., **dataset_columns) -> list[float | None]

and logs its mean and spread as ``rewards/<reward_func.__name__>/mean`` and ``.../std``. Prompts and completions are
strings, or for a conversational dataset lists of ``{"role": ..., "content": ...}`` messages (a completion holds the
one assistant message generated). `as_trl_reward_func` turns them into the texts a stackrlhf reward scores,
``prompt + completion`` as the RL loop joins query and response, and checks the scores with `check_rewards`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stackrlhf.rewards.contract import RewardFunction, check_rewards

Message = Mapping[str, Any]
TRLRewardFunc = Callable[..., list[float]]


def as_trl_reward_func(fn: RewardFunction, name: str) -> TRLRewardFunc:
    """Wrap `fn` (texts -> one float per text) in TRL's reward-function signature.

    Args:
        fn: a stackrlhf reward, e.g. `VaderSentimentReward()` or `build_reward(...).fn`.
        name: the function's `__name__`, which TRL logs the reward under (``rewards/<name>/mean``).

    Returns:
        `reward_func(prompts, completions, **kwargs) -> list[float]`, one finite float per completion. The text
        scored is the prompt followed by the completion; for conversational data, the content of the prompt's last
        message (the user turn the completion answers) followed by that of the completion's last assistant message.
        Other keyword arguments TRL passes are ignored, except `trainer_state`, whose `global_step` error messages
        report.

    Raises:
        RewardError (when called): a non-finite reward, or not one per completion; the step is not taken.
    """

    def reward_func(
        prompts: Sequence[str | list[Message]], completions: Sequence[str | list[Message]], **kwargs: Any
    ) -> list[float]:
        texts = [
            _text(prompt) + _text(completion, role="assistant")
            for prompt, completion in zip(prompts, completions, strict=True)
        ]
        step = getattr(kwargs.get("trainer_state"), "global_step", 0)
        return check_rewards(fn(texts), texts, name, step)

    reward_func.__name__ = reward_func.__qualname__ = name
    return reward_func


def _text(value: str | list[Message], role: str | None = None) -> str:
    """A standard-format string as it is; for a list of messages, the content of the last one (of `role`, if given)."""
    if isinstance(value, str):
        return value
    messages = [message for message in value if role is None or message.get("role") == role]
    if not messages:
        return ""
    content = messages[-1].get("content") or ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")  # content blocks
