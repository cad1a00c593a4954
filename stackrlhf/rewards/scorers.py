"""Batched reward scoring: texts in, one float per text out.

The reward recipe evaluates with it, and the PPO stage scores query + response with it. It accepts a trained reward
model directory written by the reward recipe (a LoRA adapter with its score head, or a merged model), any
transformers sequence-classification model, or an already loaded model and tokenizer.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from peft import PeftModel
from safetensors import SafetensorError
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from stackrlhf.errors import ConfigError, first_line
from stackrlhf.models.loading import check_adapter_dir, load_model, load_tokenizer, read_adapter


class RewardScorer:
    """Score texts with a sequence-classification reward model, in batches, without gradients.

    Args:
        model: a model whose forward returns `logits` of shape `(batch, 1)`; the single logit is the reward.
        tokenizer: its tokenizer, set here to pad on the right and truncate on the left: texts over `max_length`
            lose tokens on the left, so the answer at the end of a long dialogue is what the model sees.
        batch_size: texts per forward pass.
        max_length: longest input in tokens, EOS included. None: the tokenizer's `model_max_length`.
        append_eos: add the EOS token to each text, as TRL's `RewardTrainer` does to its training texts.
    """

    def __init__(
        self,
        model: PreTrainedModel | PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        append_eos: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"scorer batch_size must be at least 1, got {batch_size}.")
        self.model = model.eval()
        self.tokenizer = copy.deepcopy(tokenizer)  # the caller's keeps its padding side
        self.tokenizer.padding_side, self.tokenizer.truncation_side = "right", "left"
        self.batch_size = batch_size
        self.max_length = max_length or min(tokenizer.model_max_length, 1 << 16)
        self.suffix = tokenizer.eos_token if append_eos and tokenizer.eos_token else ""

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        load_in_8bit: bool = False,
        load_in_4bit: bool = False,
        dtype: str = "float32",
        batch_size: int = 16,
        max_length: int | None = None,
    ) -> RewardScorer:
        """Load a reward model: a directory from the reward recipe (adapter + score head), a merged model, or a Hub
        sequence-classification model.

        Raises:
            ConfigError: a broken adapter (config, weights) or a model that cannot be loaded; one line naming it.
        """
        adapter = check_adapter_dir(path, "reward_model") if read_adapter(path) else None
        model_args = ModelConfig(
            model_name_or_path=adapter.base_model if adapter else path,
            dtype=dtype,
            load_in_8bit=load_in_8bit,
            load_in_4bit=load_in_4bit,
        )
        model = load_model(model_args, task="sequence_classification")
        if adapter is not None:
            try:
                model = PeftModel.from_pretrained(model, path)
            except (OSError, ValueError, SafetensorError) as err:
                raise ConfigError(f"reward model {path}: cannot load its adapter ({first_line(err)})") from err
        tokenizer = load_tokenizer(ModelConfig(model_name_or_path=adapter.tokenizer_source if adapter else path))
        return cls(model, tokenizer, batch_size=batch_size, max_length=max_length)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> list[float]:
        """Return the reward of each text, in input order (float, the model's raw logit)."""
        scores: list[float] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                [text + self.suffix for text in texts[start : start + self.batch_size]],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            scores.extend(self.score_batch(batch["input_ids"], batch["attention_mask"]).float().tolist())
        return scores

    def score_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch,) rewards of right-padded `input_ids` (batch, seq) with their `attention_mask`."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]


class AdapterRewardScorer(RewardScorer):
    """Score texts with the reward adapter of a shared-base value-head model (`reward_adapter=...`).

    The policy, its reference (adapter disabled) and the reward model are one base model in memory: scoring switches
    to the reward adapter with `compute_reward_score`, which runs without gradients and switches back to the policy
    adapter (and restores train/eval mode) even if the forward pass fails. The reward of a text is the score head's
    output at the position the reward recipe's sequence-classification model reads (`scored_position`).

    Args:
        model: an `AutoModelForCausalLMWithValueHead` loaded with `reward_adapter`.
        tokenizer, batch_size, max_length, append_eos: as for `RewardScorer`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, **kwargs) -> None:
        if not getattr(model, "supports_rm_adapter", False):
            raise ConfigError("AdapterRewardScorer needs a value-head model loaded with reward_adapter=PATH.")
        was_training = model.training
        super().__init__(model, tokenizer, **kwargs)
        model.train(was_training)  # the policy's mode is PPO's business; scoring itself runs in eval mode

    def score_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = self.model.compute_reward_score(input_ids=input_ids, attention_mask=attention_mask)  # (b, seq, 1)
        return scores[torch.arange(len(scores), device=scores.device), self.scored_position(input_ids), 0]

    def scored_position(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch,) index of the token whose score is the reward: the last one that is not the pad token, as
        transformers' sequence-classification models (and so the reward recipe's training) read it. With pad = EOS,
        as for Llama, that is the token before the appended EOS."""
        pad_id = self.tokenizer.pad_token_id
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return (positions * (input_ids != pad_id)).argmax(dim=-1)
