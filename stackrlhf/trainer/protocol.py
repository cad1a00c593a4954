"""What the RL loop (`rl_loop.run_rl_loop`) and its checkpoints (`checkpointing`) need from a trainer.

`PPOTrainer` meets `RLTrainer`; so can any trainer with these members. Scoring is not the trainer's: the loop calls
the reward function it is given (`stackrlhf.rewards.contract.RewardFunction`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase


@runtime_checkable
class RLTrainerConfig(Protocol):
    """The settings the loop reads: PPO steps in the run, prompts per process and step, and the data-order seed."""

    total_ppo_epochs: int
    batch_size: int
    seed: int


@runtime_checkable
class RLTrainer(Protocol):
    """A trainer the RL loop can drive: generate, update on scored rollouts, log, save and resume.

    A GRPO or RLOO trainer would plug in without a value head: the loop would pass each prompt `group_size` times
    and its `step` would take those groups, baselining each reward on its group's rewards instead of on values; its
    `state_dict` would carry its optimizer and scheduler (and a KL coefficient only if it adapts one). Each checkpoint
    saves the policy with its own `save_pretrained` (a value-head model, a transformers or a peft model alike).

    Attributes:
        config: the loop's settings (`RLTrainerConfig`).
        accelerator: ranks, gathering, barriers, and `unwrap_model(model)`.
        tokenizer: decodes responses; saved with each checkpoint's policy.
        current_device: where query tensors go.
        model: the policy as prepared by `accelerator`; checkpoints save its trainable parameters, the report its
            parameter bytes per role.
        optimizer: its state bytes go in the report's memory table.
    """

    config: RLTrainerConfig
    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    current_device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def generate(
        self,
        query_tensor: list[torch.Tensor],
        length_sampler: Callable[[], int] | None = None,
        batch_size: int = 4,
        return_prompt: bool = True,
        **generation_kwargs: Any,
    ) -> list[torch.Tensor]:
        """One 1-D response (token ids, without the query when `return_prompt` is False) per 1-D query, sampled in
        batches of `batch_size` with `max_new_tokens = length_sampler()` per batch."""
        ...

    def step(
        self, queries: list[torch.Tensor], responses: list[torch.Tensor], scores: list[torch.Tensor]
    ) -> dict[str, Any]:
        """One update on this process's rollouts (1-D token ids, 0-d scores); returns the step's statistics (names
        such as `objective/kl`, scalars or arrays)."""
        ...

    def log_stats(self, stats: dict[str, Any], batch: dict[str, Any], rewards: list[torch.Tensor]) -> None:
        """Send `stats` and the batch's texts (`batch["query"]`, `batch["response"]`) with their rewards to the
        trackers."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The trainer's resumable state: JSON-safe values, except the optimizer's state dict under `"optimizer"`
        (saved as safetensors). Not the model's weights, not the random generators."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s result; raises `stackrlhf.errors.ConfigError` for a state of another shape."""
        ...

    def save_pretrained(self, save_directory: str | Path) -> None:
        """Save the trained policy and tokenizer, loadable with `from_pretrained`. Called on every process (under
        ZeRO-3 the others take part in gathering the weights); only the main process writes."""
        ...
