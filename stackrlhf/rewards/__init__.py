"""Rewards: texts (query + response) in, one float per text out, checked before an update sees them.

* `AdapterRewardScorer`: the reward adapter on the policy's own base model (StackLLaMA, shared base);
* `RewardScorer`: a separate sequence-classification reward model (StackLLaMA, as published);
* `VaderSentimentReward` / `ClassifierSentimentReward`: the sentiment quick start's rewards;
* `check_rewards`: the contract (as many finite floats as texts), raising `RewardError`.

The names are imported on first use, so importing the contract does not load peft or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stackrlhf.lazy import lazy_exports

_EXPORTS = {
    "RewardError": "stackrlhf.rewards.contract",
    "RewardFunction": "stackrlhf.rewards.contract",
    "check_rewards": "stackrlhf.rewards.contract",
    "AdapterRewardScorer": "stackrlhf.rewards.scorers",
    "RewardScorer": "stackrlhf.rewards.scorers",
    "ClassifierSentimentReward": "stackrlhf.rewards.sentiment",
    "VaderSentimentReward": "stackrlhf.rewards.sentiment",
}

__all__ = [
    "AdapterRewardScorer",
    "ClassifierSentimentReward",
    "RewardError",
    "RewardFunction",
    "RewardScorer",
    "VaderSentimentReward",
    "check_rewards",
]

if TYPE_CHECKING:
    from stackrlhf.rewards.contract import RewardError, RewardFunction, check_rewards
    from stackrlhf.rewards.scorers import AdapterRewardScorer, RewardScorer
    from stackrlhf.rewards.sentiment import ClassifierSentimentReward, VaderSentimentReward


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
