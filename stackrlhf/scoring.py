"""Batched reward scoring: texts in, one float per text out.

The reward recipe evaluates with it, and the PPO stage scores query + response with it. It accepts a trained reward
model directory written by the reward recipe (a LoRA adapter with its score head, or a merged model), any
transformers sequence-classification model, or an already loaded model and tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from stackrlhf.errors import ConfigError
from stackrlhf.models.loading import load_model, load_tokenizer, read_adapter


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
        self.tokenizer = tokenizer
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
        """
        adapter = read_adapter(path)
        model_args = ModelConfig(
            model_name_or_path=adapter.base_model if adapter else path,
            dtype=dtype,
            load_in_8bit=load_in_8bit,
            load_in_4bit=load_in_4bit,
        )
        model = load_model(model_args, task="sequence_classification")
        if adapter is not None:
            model = PeftModel.from_pretrained(model, path)
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
            logits = self.model(**batch).logits  # (batch, 1)
            scores.extend(logits[:, 0].float().tolist())
        return scores
