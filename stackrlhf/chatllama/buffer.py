"""The on-policy experience buffer: one `Memory` per generated completion, and the two ways to batch them.

"faithful" stacks memories as PyTorch's default collate does (chatllama's DataLoader): every memory in a batch must
have the same lengths. "fixed" pads: prompts on the left, completions on the right, so that every row's actions sit
in the same columns `[prompt_len, prompt_len + action_len)` and padding is masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import Dataset


@dataclass
class Memory:
    """One rollout row, on CPU. L = prompt + completion tokens, A = completion tokens.

    Attributes:
        sequence: [L] prompt then completion token ids.
        sequence_mask: [L] attention mask (faithful: `sequence != pad_id`; fixed: 1, as padding is not stored).
        actions: [A] completion token ids (fixed: cut after the first EOS).
        old_log_probs: [A] the policy's log-probabilities at rollout time.
        old_values: [A] the critic's values at rollout time.
        rewards: [A] per-token reward-model scores.
    """

    sequence: torch.Tensor
    sequence_mask: torch.Tensor
    actions: torch.Tensor
    old_log_probs: torch.Tensor
    old_values: torch.Tensor
    rewards: torch.Tensor

    @property
    def final_reward(self) -> float:
        """The reward-model score at the last action: the sequence's reward, as chatllama logs it."""
        return float(self.rewards[-1])


class ExperienceDataset(Dataset):
    """The memories of one learn() call, in rollout order."""

    def __init__(self, memories: Sequence[Memory]) -> None:
        self.memories = list(memories)

    def __len__(self) -> int:
        return len(self.memories)

    def __getitem__(self, index: int) -> Memory:
        return self.memories[index]


class PaddedSequences(NamedTuple):
    """Prompts and completions joined as [left padding | prompt | completion | right padding].

    Attributes:
        sequences: [B, prompt_len + action_len] token ids. sequences_mask: [B, prompt_len + action_len].
        action_mask: [B, action_len]. prompt_len: columns before the first action. action_len: action columns.
    """

    sequences: torch.Tensor
    sequences_mask: torch.Tensor
    action_mask: torch.Tensor
    prompt_len: int
    action_len: int


class MemoryBatch(NamedTuple):
    """A batch of memories. Per-action tensors are [B, action_len]; sequences are [B, prompt_len + action_len]."""

    sequences: torch.Tensor
    sequences_mask: torch.Tensor
    actions: torch.Tensor
    action_mask: torch.Tensor
    old_log_probs: torch.Tensor
    old_values: torch.Tensor
    rewards: torch.Tensor
    prompt_len: int
    action_len: int

    def to(self, device: torch.device | str) -> MemoryBatch:
        return MemoryBatch(*(x.to(device) if isinstance(x, torch.Tensor) else x for x in self))


def join_padded(prompts: Sequence[torch.Tensor], actions: Sequence[torch.Tensor], pad_id: int) -> PaddedSequences:
    """Left-pad the prompts ([P_i] each, no padding inside) and right-pad the completions ([A_i] each)."""
    prompt_len = max(len(p) for p in prompts)
    action_len = max(len(a) for a in actions)
    rows, masks, action_masks = [], [], []
    for prompt, action in zip(prompts, actions, strict=True):
        left, right = prompt_len - len(prompt), action_len - len(action)
        rows.append(torch.cat([prompt.new_full((left,), pad_id), prompt, action, action.new_full((right,), pad_id)]))
        masks.append(torch.cat([torch.zeros(left), torch.ones(len(prompt) + len(action)), torch.zeros(right)]))
        action_masks.append(torch.cat([torch.ones(len(action)), torch.zeros(right)]))
    return PaddedSequences(
        torch.stack(rows), torch.stack(masks).long(), torch.stack(action_masks).long(), prompt_len, action_len
    )


def stack_memories(memories: Sequence[Memory]) -> MemoryBatch:
    """chatllama's batching (default collate): stack as they are; memories of different lengths raise."""

    def stack(name: str) -> torch.Tensor:
        return torch.stack([getattr(m, name) for m in memories])

    actions = stack("actions")
    return MemoryBatch(
        stack("sequence"),
        stack("sequence_mask"),
        actions,
        torch.ones_like(actions),
        stack("old_log_probs"),
        stack("old_values"),
        stack("rewards"),
        prompt_len=len(memories[0].sequence) - actions.shape[1],
        action_len=actions.shape[1],
    )


def pad_memories(memories: Sequence[Memory], pad_id: int) -> MemoryBatch:
    """Pad memories of any lengths into one batch (see `join_padded`); padded action positions are 0 and masked."""
    prompts = [m.sequence[: len(m.sequence) - len(m.actions)] for m in memories]
    joined = join_padded(prompts, [m.actions for m in memories], pad_id)

    def right_pad(name: str) -> torch.Tensor:
        rows = [getattr(m, name) for m in memories]
        return torch.stack([torch.cat([row, row.new_zeros(joined.action_len - len(row))]) for row in rows])

    return MemoryBatch(
        joined.sequences,
        joined.sequences_mask,
        right_pad("actions"),
        joined.action_mask,
        right_pad("old_log_probs"),
        right_pad("old_values"),
        right_pad("rewards"),
        joined.prompt_len,
        joined.action_len,
    )
