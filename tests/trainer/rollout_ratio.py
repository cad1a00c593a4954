"""Test helper: the PPO ratio π_old / π_sampling of a rollout, i.e. how far the log-probs that `PPOTrainer.step`
computes for the sampled tokens (log π_old) are from those of the distribution they were sampled from.

With the weights unchanged between sampling and scoring the ratio must be 1 at every token: anything else means
the rollout came from another policy than the one PPO's importance ratio assumes (dropout on while sampling, logits
processors, padding or position differences)."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from stackrlhf.trainer.ppo_trainer import PPOTrainer


class SamplingLogprobs(LogitsProcessor):
    """Appended to `generate`'s processors: keeps log-softmax of the final scores of each generation step,
    `(batch, vocab)` per step, i.e. the distribution each token was sampled from."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(torch.log_softmax(scores.detach().float(), dim=-1))
        return scores

    def of(self, responses: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per response `(len,)`: the sampling log-prob of each of its tokens (responses of one generate batch)."""
        return [
            torch.stack([self.steps[t][row, token] for t, token in enumerate(response.tolist())])
            for row, response in enumerate(responses)
        ]


def scored_logprobs(trainer: PPOTrainer, queries: list[torch.Tensor], responses: list[torch.Tensor]) -> list:
    """log π_old of each response token as `PPOTrainer.step` computes it (its no-grad batched forward pass)."""
    with torch.no_grad():
        logprobs, _, _, masks = trainer.batched_forward_pass(
            trainer.model, queries, responses, trainer.prepare_model_inputs(queries, responses)
        )
    return [row[mask.bool()] for row, mask in zip(logprobs, masks, strict=True)]


def max_log_ratio(trainer: PPOTrainer, queries, responses, sampling: SamplingLogprobs) -> float:
    """max over tokens of |log π_old - log π_sampling|."""
    scored = scored_logprobs(trainer, queries, responses)
    return max((old - sampled).abs().max().item() for old, sampled in zip(scored, sampling.of(responses), strict=True))


class RatioCheckingPPOTrainer(PPOTrainer):
    """A `PPOTrainer` that records the sampling distribution of each `generate` call and, at each `step`, the
    largest |log π_old - log π_sampling| of its rollout (in `log_ratios`), before updating as usual. The rollout
    must come from one generate batch (`batch_size <= generation_batch_size`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log_ratios: list[float] = []
        self._sampling = SamplingLogprobs()

    def generate(self, *args, **kwargs):
        self._sampling = SamplingLogprobs()
        kwargs["logits_processor"] = LogitsProcessorList([self._sampling])
        return super().generate(*args, **kwargs)

    def step(self, queries, responses, scores, response_masks=None):
        self.log_ratios.append(max_log_ratio(self, queries, responses, self._sampling))
        return super().step(queries, responses, scores, response_masks)


def check_recipe_rollouts(monkeypatch, recipe_module) -> list[RatioCheckingPPOTrainer]:
    """Make `recipe_module.PPOTrainer` build `RatioCheckingPPOTrainer`s; returns the list they are added to."""
    trainers: list[RatioCheckingPPOTrainer] = []

    def build(*args, **kwargs) -> RatioCheckingPPOTrainer:
        trainers.append(RatioCheckingPPOTrainer(*args, **kwargs))
        return trainers[-1]

    monkeypatch.setattr(recipe_module, "PPOTrainer", build)
    return trainers
