"""The reward adapter on the policy's own peft model, for TRL's `GRPOTrainer` and `RLOOTrainer`.

TRL 1.16's trainers, given a base model and a `peft_config`, wrap the base in a `PeftModel` whose adapter
``"default"`` is the policy; with `beta > 0` their reference is that same model with the adapter disabled. The
reward recipe's LoRA adapter (SEQ_CLS, with its `score` head in `modules_to_save`) loads into that `PeftModel` as a
second, frozen adapter, and its score head beside it: policy, reference and reward model are then one base model in
memory.

`SharedBaseRewardScorer` scores texts with it. Each batch, under `torch.no_grad` and in eval mode, it activates the
reward adapter, runs the base model's body (the decoder, as the reward recipe's sequence-classification model does),
applies the score head at the last non-pad token, and then, in a `finally`, activates the policy adapter again and
restores the model's train/eval mode and every parameter's `requires_grad` (peft's `set_adapter` marks the adapter it
activates trainable). The policy's weights, mode and optimizer state are untouched, so TRL's next forward pass is the
policy's, exactly as it would have been.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from stackrlhf.errors import ConfigError
from stackrlhf.models.modeling_base import PreTrainedModelWrapper
from stackrlhf.rewards.scorers import AdapterRewardScorer, RewardScorer

REWARD_ADAPTER_NAME = "reward"
"""The name the reward adapter is loaded under, next to the policy's ``"default"`` (and TRL's ``"ref"``, if any)."""


class SharedBaseRewardScorer(AdapterRewardScorer):
    """Score texts with a reward adapter loaded next to the policy's adapter on the same `PeftModel`.

    Args:
        model: the policy, a `PeftModel` (e.g. a TRL trainer's `model` after it applied its `peft_config`); the
            reward adapter is loaded into it, frozen, under `adapter_name`.
        tokenizer: the policy's tokenizer (the scorer pads its own copy on the right, as `RewardScorer` does).
        reward_adapter: path or Hub id of the reward recipe's adapter (LoRA + `score` head).
        adapter_name: the name it gets in `model`.
        batch_size, max_length, append_eos: as for `RewardScorer`.

    Attributes:
        policy_adapter_name: the adapter active when the scorer was built, activated again after every batch.
        score: the reward's score head, a frozen `nn.Linear(hidden_size, 1)` on the model's device.

    Raises:
        ConfigError: `model` is no `PeftModel`, the adapter cannot be loaded (weights of another base's shapes, a
            broken directory) or holds no score head, or its score head does not fit the model's hidden size.
    """

    def __init__(
        self,
        model: PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        reward_adapter: str,
        *,
        adapter_name: str = REWARD_ADAPTER_NAME,
        **kwargs,
    ) -> None:
        if not isinstance(model, PeftModel):
            raise ConfigError("a shared-base reward adapter needs a peft policy: add --use_peft.")
        if adapter_name in model.peft_config:
            raise ConfigError(f"the policy already has an adapter named {adapter_name!r}.")
        self.policy_adapter_name = model.active_adapter
        was_training = model.training
        try:
            score = PreTrainedModelWrapper.add_and_load_reward_modeling_adapter(model, reward_adapter, adapter_name)
        except (ValueError, RuntimeError) as err:  # ConfigError too; RuntimeError: weights of other shapes
            if adapter_name in model.peft_config:
                model.delete_adapter(adapter_name)
            model.set_adapter(self.policy_adapter_name)
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(
                f"--reward_adapter {reward_adapter}: cannot load it on this base ({' '.join(str(err).split())[:240]})"
            ) from err
        hidden_size = model.get_base_model().config.get_text_config().hidden_size
        if score.in_features != hidden_size:
            model.delete_adapter(adapter_name)
            raise ConfigError(
                f"--reward_adapter {reward_adapter}: its score head reads {score.in_features} hidden units, the "
                f"policy base has {hidden_size}; it was trained on another base."
            )
        model.set_adapter(self.policy_adapter_name)
        self.adapter_name = adapter_name
        self.score = score.to(next(model.parameters()).device)
        RewardScorer.__init__(self, model, tokenizer, **kwargs)
        model.train(was_training)  # the policy's mode is the trainer's business; scoring itself runs in eval mode

    def score_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch,) rewards of right-padded `input_ids`, read with the reward adapter; the policy adapter, the
        model's mode and every `requires_grad` are restored afterwards, even if the forward pass fails."""
        model = self.model
        was_training = model.training
        requires_grad = [(param, param.requires_grad) for param in model.parameters()]
        try:
            model.set_adapter(self.adapter_name)
            model.eval()
            with torch.no_grad():
                body = model.get_base_model().base_model  # the decoder, without the LM head (LlamaModel for Llama)
                hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                rows = torch.arange(len(input_ids), device=hidden.device)
                last = hidden[rows, self.scored_position(input_ids).to(hidden.device)]
                return self.score(last.to(self.score.weight))[:, 0]
        finally:
            model.set_adapter(self.policy_adapter_name)
            model.train(was_training)
            for param, flag in requires_grad:
                param.requires_grad_(flag)
