"""chatllama's `RLTrainer`: rollouts into an on-policy buffer, and `learn()` with two Adam optimizers.

`make_experience` is one rollout timestep (generate, then score: the actor's log-probabilities, the critic's values
and the reward model's per-token rewards); `learn` is chatllama's update over the buffer; `train` is its
episodes x timesteps loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from stackrlhf.chatllama.buffer import ExperienceDataset, Memory, MemoryBatch, pad_memories, stack_memories
from stackrlhf.chatllama.config import ChatLlamaConfig
from stackrlhf.chatllama.losses import (
    ActorLoss,
    clipped_value_loss,
    faithful_actor_loss,
    faithful_advantages,
    fixed_actor_loss,
    max_prob_log_probs,
    reward_to_go,
    taken_token_log_probs,
    token_entropy,
    whitened_advantages,
)
from stackrlhf.chatllama.models import (
    ActorCritic,
    ActorModel,
    RewardModel,
    check_model_families,
    load_actor_tokenizer,
    load_critic,
    position_ids_from_mask,
)
from stackrlhf.chatllama.prompts import PromptSampler, check_prompt_lengths
from stackrlhf.chatllama.timing import PhaseTimer


@dataclass
class LearnStats:
    """One learn() call: per optimizer step, the actor loss (policy + KL) and the value loss; the buffer's mean
    sequence reward (reward-model units)."""

    losses: list[float] = field(default_factory=list)
    value_losses: list[float] = field(default_factory=list)
    mean_reward: float = 0.0


class ChatLlamaTrainer:
    """chatllama's actor/critic RLHF on `prompts`, with the settings of `config`.

    Loads, in this order (cheap checks first): the model families, the actor's tokenizer and the prompt lengths, the
    actor, the reward model and the critic (a copy of the reward model unless `critic_config.model` is set, see
    `load_critic`). Nothing is shared between the three models.

    Args:
        config: the four sections; `config.trainer.mode` picks faithful or fixed behaviour.
        prompts: the RL prompts (e.g. `stackrlhf.chatllama.prompts.load_prompts`).

    Raises:
        ConfigError: unknown or mismatched model families, a prompt too long for the context, unloadable models.
    """

    def __init__(self, config: ChatLlamaConfig, prompts: Sequence[str]) -> None:
        self.config = config
        self.mode = config.trainer.mode
        self.prompts = list(prompts)
        self.timer = PhaseTimer()
        check_model_families(config)
        tokenizer = load_actor_tokenizer(config.actor, config.context_length)
        check_prompt_lengths(self.prompts, tokenizer, config.context_length, config.actor.min_tokens)

        torch.manual_seed(config.trainer.seed)
        self.device = resolve_device(config.trainer.device)
        actor = ActorModel(config.actor, config.context_length)
        self.reward = RewardModel.from_checkpoint(config.reward, config.reward.model, "reward_config")
        critic = load_critic(config, self.reward)
        critic.requires_grad_(True)  # fully fine-tuned (a merged adapter leaves the weights frozen)
        # chatllama never freezes the reward model (it only has no optimizer); "fixed" does.
        for param in self.reward.parameters():
            if param.is_floating_point():
                param.requires_grad_(self.mode == "faithful")
        self.actorcritic = ActorCritic(actor, critic, self.mode)
        _place(actor, self.device, quantized=config.actor.load_in_8bit)
        _place(critic, self.device, quantized=False)
        _place(self.reward, self.device, quantized=config.reward.load_in_8bit)
        self.actorcritic.eval()
        self.reward.eval()

        actor_params = [p for p in actor.parameters() if p.requires_grad]
        self.actor_optimizer = torch.optim.Adam(actor_params, lr=config.trainer.actor_lr)
        self.critic_optimizer = torch.optim.Adam(critic.parameters(), lr=config.trainer.critic_lr)

    @property
    def tokenizer(self):
        return self.actorcritic.actor.tokenizer

    def make_experience(self, prompts: Sequence[str]) -> list[Memory]:
        """One rollout timestep on `prompts`: generate, score, and return one `Memory` per prompt (on CPU).

        The timer's "generate" phase is `actor.generate`; "score" is the second actor + critic forward, the
        log-probabilities and the reward model's forward.
        """
        self.actorcritic.eval()
        inputs = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        rollout = self.actorcritic.generate(inputs["input_ids"], inputs["attention_mask"], self.timer)
        with self.timer("score"):
            if self.mode == "faithful":
                _, old_log_probs = max_prob_log_probs(rollout.actions_logits)
                # chatllama scores with autograd on: the graph is built and dropped
                scores = self.reward(rollout.sequences, rollout.sequences_mask)
                rewards = scores[:, -rollout.action_len :]
            else:
                old_log_probs = taken_token_log_probs(
                    rollout.actions_logits, rollout.actions, self.config.actor.temperature
                )
                with torch.no_grad():
                    scores = self.reward(
                        rollout.sequences, rollout.sequences_mask, position_ids_from_mask(rollout.sequences_mask)
                    )
                rewards = scores[:, rollout.prompt_len :] * rollout.action_mask
        memories = []
        for i in range(len(prompts)):
            keep = rollout.sequences_mask[i].bool() if self.mode == "fixed" else slice(None)
            actions = slice(0, int(rollout.action_mask[i].sum()))
            memories.append(
                Memory(
                    sequence=rollout.sequences[i, keep].detach().cpu(),
                    sequence_mask=rollout.sequences_mask[i, keep].detach().cpu(),
                    actions=rollout.actions[i, actions].detach().cpu(),
                    old_log_probs=old_log_probs[i, actions].detach().cpu(),
                    old_values=rollout.values[i, actions].detach().float().cpu(),
                    rewards=rewards[i, actions].detach().cpu(),
                )
            )
        return memories

    def compute_losses(self, batch: MemoryBatch) -> tuple[ActorLoss, torch.Tensor]:
        """The actor's loss terms and the value loss on `batch` (a fresh actor + critic forward, with gradients)."""
        trainer = self.config.trainer
        logits, values = self.actorcritic(batch.sequences, batch.sequences_mask, batch.action_len, batch.prompt_len)
        values = values.float()
        if self.mode == "faithful":
            probs, log_probs = max_prob_log_probs(logits)
            returns = reward_to_go(batch.rewards, trainer.gamma_discounted)
            advantages = faithful_advantages(returns, batch.old_values)
            actor_loss = faithful_actor_loss(
                probs, log_probs, batch.old_log_probs, advantages, trainer.actor_eps_clip, trainer.beta_s
            )
            value_loss = clipped_value_loss(values, batch.old_values, batch.rewards, trainer.critic_eps_clip)
            return actor_loss, value_loss
        temperature = self.config.actor.temperature
        mask = batch.action_mask
        log_probs = taken_token_log_probs(logits, batch.actions, temperature)
        returns = reward_to_go(batch.rewards * mask, trainer.gamma_discounted)
        advantages = whitened_advantages(returns, batch.old_values, mask)
        actor_loss = fixed_actor_loss(
            log_probs,
            batch.old_log_probs,
            advantages,
            token_entropy(logits, temperature),
            mask,
            trainer.actor_eps_clip,
            trainer.beta_s,
        )
        value_loss = clipped_value_loss(values, batch.old_values, returns, trainer.critic_eps_clip, mask)
        return actor_loss, value_loss

    def learn(self, memories: Sequence[Memory]) -> LearnStats:
        """chatllama's update: `epochs` passes over the buffer in order, one actor step and one critic step per batch.

        Cosine-with-restarts schedulers (T_0 = buffer size, eta_min = 0.1 x lr) are created anew for each call and
        stepped after every optimizer step, as in chatllama. faithful: actor and critic in train mode, dropout on, as
        chatllama's `actorcritic.train()` (so the first ratio is not 1 even for unchanged weights); fixed: eval mode,
        no dropout, so the new log-probabilities and values are computed as the rollout's were.

        Raises:
            ValueError: a loss is NaN (chatllama's guard).
        """
        trainer = self.config.trainer
        dataset = ExperienceDataset(memories)
        collate = (
            stack_memories if self.mode == "faithful" else partial(pad_memories, pad_id=self.tokenizer.pad_token_id)
        )
        loader = DataLoader(dataset, batch_size=trainer.batch_size, shuffle=False, collate_fn=collate)
        schedulers = [
            CosineAnnealingWarmRestarts(optimizer, T_0=len(dataset), eta_min=0.1 * lr)
            for optimizer, lr in ((self.actor_optimizer, trainer.actor_lr), (self.critic_optimizer, trainer.critic_lr))
        ]
        stats = LearnStats(mean_reward=sum(m.final_reward for m in memories) / len(memories))
        self.actorcritic.train(self.mode == "faithful")
        steps = tqdm(total=trainer.epochs * len(loader), desc="learn", leave=False, disable=len(loader) < 8)
        for _ in range(trainer.epochs):
            for batch in loader:
                with self.timer("optimise"):
                    actor_loss, value_loss = self.compute_losses(batch.to(self.device))
                    for name, loss in (("Loss", actor_loss.loss), ("Value loss", value_loss)):
                        if torch.isnan(loss):
                            raise ValueError(f"{name} is nan")
                    actor_scheduler, critic_scheduler = schedulers
                    _step(self.actor_optimizer, actor_scheduler, actor_loss.loss)
                    _step(self.critic_optimizer, critic_scheduler, value_loss)
                stats.losses.append(actor_loss.loss.item())
                stats.value_losses.append(value_loss.item())
                steps.update()
        steps.close()
        self.actorcritic.eval()
        return stats

    def train(self) -> list[LearnStats]:
        """chatllama's loop: `num_episodes` x `max_timesteps` rollouts of `num_examples` sampled prompts, learning
        from (and then clearing) the buffer every `update_timesteps` rollouts. Returns each learn() call's stats."""
        trainer = self.config.trainer
        sampler = PromptSampler(self.prompts, trainer.seed)
        memories: list[Memory] = []
        history = []
        total = trainer.num_episodes * trainer.max_timesteps
        for timestep in tqdm(range(1, total + 1), desc="chatllama RL timesteps"):
            memories.extend(self.make_experience(sampler.sample(trainer.num_examples)))
            if timestep % trainer.update_timesteps == 0:
                history.append(self.learn(memories))
                memories.clear()
        return history


def resolve_device(device: str) -> torch.device:
    """ "auto": the first CUDA device when there is one, else the CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _step(optimizer: torch.optim.Optimizer, scheduler: CosineAnnealingWarmRestarts, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def _place(module: torch.nn.Module, device: torch.device, *, quantized: bool) -> None:
    """Move `module` to `device`; bitsandbytes models were placed when loaded and cannot be moved."""
    if not quantized:
        module.to(device)
