"""chatllama's learn() formulas, in one place, as chatllama writes them ("faithful") and corrected ("fixed").

Shapes: B sequences in a batch, A action (completion) positions, V vocabulary entries. Log-probabilities are natural
logs; rewards, values, returns and advantages are in reward-model units. `action_mask` [B, A] is 1 for a generated
token up to and including its first EOS, 0 for padding after it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

EPS = 1e-8
"""chatllama's `self.eps`: added to probabilities before the log and to the advantage std."""


class ActorLoss(NamedTuple):
    """The actor's loss and its parts, each a scalar tensor.

    Attributes:
        loss: what the actor minimises, `policy_loss + kl`.
        policy_loss: clipped surrogate with the entropy term.
        entropy: the entropy term before its coefficient (faithful: mean per-sequence sum of p·log p, <= 0;
            fixed: mean per-token entropy, >= 0).
        kl: the "KL to the rollout policy" term, coefficient 1 as in chatllama (faithful: summed over the tokens
            of each sequence, so it grows with completion length; fixed: mean per valid token, so it does not).
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor


def max_prob_log_probs(action_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """chatllama's action probabilities: the MAX softmax probability at each position, whatever token was taken.

    Args:
        action_logits: [B, A, V].

    Returns:
        (probs [B, A], log(probs + EPS) [B, A]).
    """
    probs = torch.softmax(action_logits, dim=-1).max(dim=-1).values
    return probs, torch.log(probs + EPS)


def taken_token_log_probs(
    action_logits: torch.Tensor, actions: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of each taken token under the sampling distribution softmax(logits / temperature).

    Args:
        action_logits: [B, A, V], the logits that PREDICT each action (position t - 1 for the token at t).
        actions: [B, A] token ids.
        temperature: the sampling temperature.

    Returns:
        [B, A] log-probabilities.
    """
    log_probs = torch.log_softmax(action_logits.float() / temperature, dim=-1)
    return log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def token_entropy(action_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy -Σ_v π log π of the sampling distribution at each position: [B, A, V] -> [B, A], in nats."""
    log_probs = torch.log_softmax(action_logits.float() / temperature, dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def reward_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted reward-to-go G_i = Σ_{j>=i} gamma^(j-i) r_j along the action axis: [B, A] -> [B, A].

    chatllama computes it with an O(A²) double loop; this reverse scan gives the same sums.
    """
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for i in reversed(range(rewards.shape[1])):
        running = rewards[:, i] + gamma * running
        returns[:, i] = running
    return returns


def faithful_advantages(returns: torch.Tensor, old_values: torch.Tensor) -> torch.Tensor:
    """chatllama's advantages: `adv = G - V_old`, then `(adv - adv.mean(-1)) / (adv.std() + EPS)`.

    The per-sequence mean [B] broadcasts along the LAST axis (so it is only right for B == 1) and the std is over all
    elements. [B, A], [B, A] -> [B, A].
    """
    advantages = returns - old_values
    return (advantages - advantages.mean(dim=-1)) / (advantages.std() + EPS)


def whitened_advantages(returns: torch.Tensor, old_values: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """`G - V_old` whitened with the mean and std over the valid positions of the whole batch; 0 on padding.

    [B, A] x 3 -> [B, A]. A single valid position is only centred (its std is undefined).
    """
    advantages = returns - old_values
    mask = action_mask.to(advantages.dtype)
    count = mask.sum()
    mean = (advantages * mask).sum() / count
    centred = (advantages - mean) * mask
    if count < 2:
        return centred
    variance = (centred**2).sum() / (count - 1)
    return centred / (variance.sqrt() + EPS)


def faithful_actor_loss(
    probs: torch.Tensor,
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    eps_clip: float,
    beta_s: float,
) -> ActorLoss:
    """chatllama's actor loss, every position counted (padding included).

    - `entropies = Σ_t p·log p` per sequence [B] (<= 0: minus a pseudo-entropy of the max-probabilities);
    - `kl = mean_B Σ_t p·(old_log_p - log_p)`, against the ROLLOUT policy, coefficient 1;
    - `ratio = exp(log_p - old_log_p)`;
      `policy_loss = mean(-min(ratio·adv, clamp(ratio, 1 ± eps)·adv) - beta_s·entropies)`, entropies [B] broadcast
      along the last axis; minimising `-beta_s·entropies` LOWERS the entropy (a penalty);
    - `loss = policy_loss + kl`.

    Args:
        probs, log_probs: [B, A] current max-probabilities and their logs (`max_prob_log_probs`).
        old_log_probs: [B, A] the same at rollout time. advantages: [B, A].
    """
    entropies = (probs * log_probs).sum(dim=-1)
    kl = (probs * (old_log_probs - log_probs)).sum(dim=-1).mean()
    ratios = (log_probs - old_log_probs).exp()
    surrogate = torch.min(advantages * ratios, torch.clamp(ratios, 1 - eps_clip, 1 + eps_clip) * advantages)
    policy_loss = (-surrogate - beta_s * entropies).mean()
    return ActorLoss(policy_loss + kl, policy_loss, entropies.mean(), kl)


def fixed_actor_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    action_mask: torch.Tensor,
    eps_clip: float,
    beta_s: float,
) -> ActorLoss:
    """The corrected actor loss, over valid positions only.

    - `policy_loss = masked_mean(-min(ratio·adv, clamp(ratio, 1 ± eps)·adv)) - beta_s·masked_mean(entropy)`
      (an entropy BONUS);
    - `kl = masked_mean(old_log_p - log_p)`: the sampled per-token estimate of KL(rollout || current), chatllama's
      term with the taken token's log-probabilities, without the stray probability weight, and averaged over the
      batch's valid tokens instead of summed per sequence, so that its scale, and its weight against the per-token
      policy loss, does not grow with completion length (identical per-token log-ratios give the same term for any
      length);
    - `loss = policy_loss + kl`.

    Args:
        log_probs, old_log_probs: [B, A] taken-token log-probabilities now and at rollout time.
        advantages: [B, A]. entropy: [B, A] (`token_entropy`). action_mask: [B, A].
    """
    mask = action_mask.to(log_probs.dtype)
    ratios = (log_probs - old_log_probs).exp()
    surrogate = torch.min(advantages * ratios, torch.clamp(ratios, 1 - eps_clip, 1 + eps_clip) * advantages)
    mean_entropy = masked_mean(entropy, mask)
    policy_loss = masked_mean(-surrogate, mask) - beta_s * mean_entropy
    kl = masked_mean(old_log_probs - log_probs, mask)
    return ActorLoss(policy_loss + kl, policy_loss, mean_entropy, kl)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    targets: torch.Tensor,
    eps_clip: float,
    action_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """chatllama's value loss: `mean(max((V_old + clamp(V - V_old, ±eps) - target)², (V - target)²))`.

    No 0.5 factor, no coefficient. chatllama's target is the raw per-token reward ("faithful"); "fixed" passes the
    reward-to-go and the mask. [B, A] tensors -> scalar.
    """
    clipped = old_values + (values - old_values).clamp(-eps_clip, eps_clip)
    losses = torch.max((clipped - targets) ** 2, (values - targets) ** 2)
    if action_mask is None:
        return losses.mean()
    return masked_mean(losses, action_mask.to(losses.dtype))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (same shapes) -> scalar."""
    return (values * mask).sum() / mask.sum().clamp(min=1)
