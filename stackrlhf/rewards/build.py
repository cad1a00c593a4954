"""The one place a recipe's reward is chosen: the reward adapter on the shared base, or a separate reward model.

* `check_reward_source`: the either/or check and the reward adapter's directory checks, before anything loads;
* `build_reward`: the scorer of the chosen source, with the name logs and summaries give it and, for a separate
  model, that model (so the recipe can count its bytes);
* `build_sentiment_reward`: the sentiment quick start's choice, VADER or a sentiment classifier.

The PPO and evaluation recipes both go through these, so a flag means the same in each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from stackrlhf.errors import ConfigError
from stackrlhf.models.loading import check_adapter_dir, read_adapter
from stackrlhf.rewards.contract import RewardFunction
from stackrlhf.rewards.scorers import AdapterRewardScorer, RewardScorer
from stackrlhf.rewards.sentiment import ClassifierSentimentReward, VaderSentimentReward


@dataclass(frozen=True)
class BuiltReward:
    """A reward ready to score texts.

    Attributes:
        fn: texts (query + response) -> one float per text.
        name: how logs, errors and summaries name it, e.g. ``"reward adapter outputs/reward"``.
        separate_model: the reward's own model when it does not ride on the policy's base (a separate reward model
            or sentiment classifier), else None.
    """

    fn: RewardFunction
    name: str
    separate_model: torch.nn.Module | None = None


def check_reward_source(reward_adapter: str | None, reward_model: str | None) -> None:
    """Reject both reward sources at once, and a `reward_adapter` that is not a reward model's LoRA adapter.

    A `reward_adapter` that does not exist locally passes if it reads as a Hub id (``owner/name``); loading it tells.

    Raises:
        ConfigError: both sources given; a missing local path, an adapter directory without adapter_config.json, with
            a broken one, without weights or with truncated ones (see `check_adapter_dir`), or an adapter of another
            task than sequence classification.
    """
    if reward_adapter and reward_model:
        raise ConfigError("give either --reward_adapter (shared base) or --reward_model (separate model), not both.")
    if not reward_adapter:
        return
    adapter = check_adapter_dir(reward_adapter, "reward_adapter")
    if adapter is not None and adapter.task != "sequence_classification":
        raise ConfigError(
            f"--reward_adapter {reward_adapter}: a {adapter.task} adapter, not a reward model's (SEQ_CLS with a score "
            "head)."
        )


def build_reward(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    reward_adapter: str | None = None,
    reward_model: str | None = None,
    reward_model_load_in_8bit: bool = False,
    batch_size: int,
    max_length: int,
    device: str | torch.device | None = None,
) -> BuiltReward:
    """The reward of exactly one source, as `check_reward_source` allows.

    Args:
        model: the policy, an `AutoModelForCausalLMWithValueHead`; loaded with `reward_adapter` when that is the
            source, whose scorer switches to the reward adapter and back to the policy's on every batch.
        tokenizer: the policy's tokenizer (the scorer pads its own copy on the right).
        reward_adapter: the reward recipe's LoRA adapter, already loaded on `model`.
        reward_model: a separate sequence-classification reward model (path or Hub name).
        reward_model_load_in_8bit: load `reward_model` in 8-bit (it then stays where bitsandbytes put it).
        batch_size: texts per reward forward pass.
        max_length: longest scored text in tokens (prompt + response + EOS); longer ones lose tokens on the left.
        device: where a non-8-bit `reward_model` runs; None: where it loaded.

    Raises:
        ConfigError: both sources or neither, or a reward adapter that `check_reward_source` refuses.
    """
    check_reward_source(reward_adapter, reward_model)
    scorer_kwargs = {"batch_size": batch_size, "max_length": max_length}
    if reward_adapter:
        return BuiltReward(AdapterRewardScorer(model, tokenizer, **scorer_kwargs), f"reward adapter {reward_adapter}")
    if not reward_model:
        raise ConfigError("no reward: give --reward_adapter PATH (shared base) or --reward_model PATH (separate).")
    scorer = RewardScorer.from_pretrained(reward_model, load_in_8bit=reward_model_load_in_8bit, **scorer_kwargs)
    if device is not None and not reward_model_load_in_8bit:
        scorer.model.to(device)
    return BuiltReward(scorer, f"reward model {reward_model}", separate_model=scorer.model)


def build_sentiment_reward(classifier: str | None, device: str | torch.device = "cpu") -> BuiltReward:
    """The sentiment quick start's reward: the positive logit of `classifier` (a transformers sentiment model,
    run on `device`), or with None VADER's compound sentiment (no model).

    Raises:
        ConfigError: the classifier cannot be loaded or has no single positive label.
    """
    if classifier:
        reward = ClassifierSentimentReward(classifier, device=device)
        return BuiltReward(reward, f"positive logit of {classifier}", separate_model=reward.model)
    return BuiltReward(VaderSentimentReward(), "VADER compound sentiment")


def check_base_and_reward(
    model_name_or_path: str | None,
    reward_adapter: str | None,
    reward_model: str | None,
    *,
    use_peft: bool,
    base_role: str,
) -> None:
    """The policy base and its reward belong together: no model means the offline stages provide both (so no reward
    either); a model needs a reward; the base must be a full model (it is the reference), and a reward adapter shares
    it with a LoRA policy. `base_role` names the base in messages ("PPO's base").

    Raises:
        ConfigError: a reward without a base, a base without a reward, an adapter as the base, or a reward adapter
            without `use_peft`.
    """
    if model_name_or_path is None:
        if reward_adapter or reward_model:
            raise ConfigError(
                "a reward is given but no policy base: pass --model_name_or_path (the merged SFT model) as well."
            )
        return
    if not (reward_adapter or reward_model):
        raise ConfigError(
            f"--model_name_or_path {model_name_or_path} needs a reward: --reward_adapter PATH (a LoRA "
            "adapter from the reward recipe) or --reward_model PATH (a sequence-classification model)."
        )
    if read_adapter(model_name_or_path) is not None:
        raise ConfigError(
            f"--model_name_or_path {model_name_or_path} is a LoRA adapter; {base_role} must be a full model (the "
            f"reference). Merge it first: stackrlhf merge --adapter_path {model_name_or_path} --output_dir <merged>."
        )
    if reward_adapter and not use_peft:
        raise ConfigError("--reward_adapter shares the base with a LoRA policy: it needs --use_peft.")
