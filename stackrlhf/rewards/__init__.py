"""Rewards: texts (query + response) in, one float per text out, checked before an update sees them.

* `AdapterRewardScorer`: the reward adapter on the policy's own base model (StackLLaMA, shared base);
* `SharedBaseRewardScorer`: the same inside TRL's `GRPOTrainer` / `RLOOTrainer`, on the trainer's own peft model;
* `RewardScorer`: a separate sequence-classification reward model (StackLLaMA, as published);
* `VaderSentimentReward` / `ClassifierSentimentReward`: the sentiment quick start's rewards;
* `check_rewards`: the contract (as many finite floats as texts), raising `RewardError`;
* `check_reward_source` / `build_reward` / `build_sentiment_reward`: the recipes' one choice of reward source, as a
  `BuiltReward` (scorer, name, separate model);
* `as_trl_reward_func`: any of these as a reward function of TRL's `GRPOTrainer` / `RLOOTrainer`.

The names are imported on first use, so importing the contract does not load peft or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stackrlhf.lazy import lazy_exports

_EXPORTS = {
    "RewardError": "stackrlhf.rewards.contract",
    "RewardFunction": "stackrlhf.rewards.contract",
    "check_rewards": "stackrlhf.rewards.contract",
    "BuiltReward": "stackrlhf.rewards.build",
    "build_reward": "stackrlhf.rewards.build",
    "build_sentiment_reward": "stackrlhf.rewards.build",
    "check_reward_source": "stackrlhf.rewards.build",
    "as_trl_reward_func": "stackrlhf.rewards.trl_adapter",
    "AdapterRewardScorer": "stackrlhf.rewards.scorers",
    "RewardScorer": "stackrlhf.rewards.scorers",
    "SharedBaseRewardScorer": "stackrlhf.rewards.shared_base",
    "ClassifierSentimentReward": "stackrlhf.rewards.sentiment",
    "VaderSentimentReward": "stackrlhf.rewards.sentiment",
}

__all__ = [
    "AdapterRewardScorer",
    "BuiltReward",
    "ClassifierSentimentReward",
    "RewardError",
    "RewardFunction",
    "RewardScorer",
    "SharedBaseRewardScorer",
    "VaderSentimentReward",
    "as_trl_reward_func",
    "build_reward",
    "build_sentiment_reward",
    "check_reward_source",
    "check_rewards",
]

if TYPE_CHECKING:
    from stackrlhf.rewards.build import BuiltReward, build_reward, build_sentiment_reward, check_reward_source
    from stackrlhf.rewards.contract import RewardError, RewardFunction, check_rewards
    from stackrlhf.rewards.scorers import AdapterRewardScorer, RewardScorer
    from stackrlhf.rewards.sentiment import ClassifierSentimentReward, VaderSentimentReward
    from stackrlhf.rewards.shared_base import SharedBaseRewardScorer
    from stackrlhf.rewards.trl_adapter import as_trl_reward_func


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
