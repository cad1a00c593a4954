"""chatllama's learn() formulas (notes: chatllama.md sections 3 and 6), checked against scalar arithmetic by hand."""

import math

import pytest
import torch

from stackrlhf.chatllama import losses

LOGITS = torch.tensor([[[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [-1.0, 3.0, 0.0, 1.0]]])  # [B=1, A=3, V=4]
OLD_LOG_PROBS = torch.tensor([[-0.5, -1.2, -0.2]])
OLD_VALUES = torch.tensor([[0.3, -0.1, 0.2]])
REWARDS = torch.tensor([[1.0, 0.5, -1.0]])
GAMMA, EPS_CLIP, BETA = 0.9, 0.2, 0.02


def softmax(row):
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def mean(xs):
    return sum(xs) / len(xs)


def sample_std(xs):
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_reward_to_go_is_chatllamas_double_loop():
    rewards = torch.tensor([[1.0, 0.5, -1.0], [0.0, 2.0, 1.0]])
    expected = [[1 + 0.9 * 0.5 + 0.81 * -1, 0.5 - 0.9, -1.0], [0 + 0.9 * 2 + 0.81 * 1, 2 + 0.9, 1.0]]
    torch.testing.assert_close(losses.reward_to_go(rewards, GAMMA), torch.tensor(expected))
    torch.testing.assert_close(losses.reward_to_go(rewards, 1.0), torch.tensor([[0.5, -0.5, -1.0], [3.0, 3.0, 1.0]]))


def test_max_prob_log_probs_ignore_which_token_was_taken():
    probs, log_probs = losses.max_prob_log_probs(LOGITS)
    expected = [max(softmax(row)) for row in LOGITS[0].tolist()]
    torch.testing.assert_close(probs, torch.tensor([expected]))
    torch.testing.assert_close(log_probs, torch.tensor([[math.log(p + 1e-8) for p in expected]]))


def test_faithful_actor_loss_advantages_and_value_loss_match_the_formulas():
    probs, log_probs = losses.max_prob_log_probs(LOGITS)
    returns = losses.reward_to_go(REWARDS, GAMMA)
    advantages = losses.faithful_advantages(returns, OLD_VALUES)
    terms = losses.faithful_actor_loss(probs, log_probs, OLD_LOG_PROBS, advantages, EPS_CLIP, BETA)

    p = [max(softmax(row)) for row in LOGITS[0].tolist()]
    logp = [math.log(x + 1e-8) for x in p]
    old, values, rewards = OLD_LOG_PROBS[0].tolist(), OLD_VALUES[0].tolist(), REWARDS[0].tolist()
    g = [sum(GAMMA ** (j - i) * rewards[j] for j in range(i, 3)) for i in range(3)]
    raw = [g[i] - values[i] for i in range(3)]
    adv = [(a - mean(raw)) / (sample_std(raw) + 1e-8) for a in raw]
    entropy = sum(p[i] * logp[i] for i in range(3))  # one sequence: Σ_t p log p
    kl = sum(p[i] * (old[i] - logp[i]) for i in range(3))
    ratio = [math.exp(logp[i] - old[i]) for i in range(3)]
    clipped = [min(max(r, 1 - EPS_CLIP), 1 + EPS_CLIP) for r in ratio]
    policy = mean([-min(ratio[i] * adv[i], clipped[i] * adv[i]) - BETA * entropy for i in range(3)])

    torch.testing.assert_close(advantages, torch.tensor([adv]))
    assert terms.entropy.item() == pytest.approx(entropy, rel=1e-5)
    assert terms.kl.item() == pytest.approx(kl, rel=1e-5)
    assert terms.policy_loss.item() == pytest.approx(policy, rel=1e-5)
    assert terms.loss.item() == pytest.approx(policy + kl, rel=1e-5)
    assert entropy < 0, "chatllama's term is Σ p log p: minimising -beta_s x it is an entropy penalty"

    new_values = torch.tensor([[0.9, -0.15, -0.5]])
    value_loss = losses.clipped_value_loss(new_values, OLD_VALUES, REWARDS, EPS_CLIP)
    v, target = new_values[0].tolist(), rewards  # faithful target: the raw per-token reward
    v_clip = [values[i] + min(max(v[i] - values[i], -EPS_CLIP), EPS_CLIP) for i in range(3)]
    expected = mean([max((v_clip[i] - target[i]) ** 2, (v[i] - target[i]) ** 2) for i in range(3)])
    assert value_loss.item() == pytest.approx(expected, rel=1e-5)


def test_faithful_advantage_normalisation_only_works_for_one_sequence():
    returns, values = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="size of tensor"):
        losses.faithful_advantages(returns, values)  # [B] mean broadcast against [B, A], as in chatllama


def test_fixed_actor_loss_counts_valid_positions_only():
    logits = torch.cat([LOGITS, LOGITS.flip(-1)])  # [B=2, A=3, V=4]
    actions = torch.tensor([[0, 3, 1], [2, 1, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    old = torch.tensor([[-0.5, -1.2, -0.2], [-1.0, -2.0, -3.0]])
    values = torch.tensor([[0.3, -0.1, 0.2], [0.0, 0.1, 9.0]])
    rewards = torch.tensor([[1.0, 0.5, -1.0], [0.2, 0.7, 0.0]])

    log_probs = losses.taken_token_log_probs(logits, actions)
    entropy = losses.token_entropy(logits)
    returns = losses.reward_to_go(rewards * mask, GAMMA)
    advantages = losses.whitened_advantages(returns, values, mask)
    terms = losses.fixed_actor_loss(log_probs, old, advantages, entropy, mask, EPS_CLIP, BETA)

    valid = [(b, t) for b in range(2) for t in range(3) if mask[b, t]]
    probs = [[softmax(row) for row in logits[b].tolist()] for b in range(2)]
    logp = {(b, t): math.log(probs[b][t][actions[b, t]]) for b, t in valid}
    ent = {(b, t): -sum(q * math.log(q) for q in probs[b][t]) for b, t in valid}
    r = rewards.tolist()
    g = {(b, t): sum(GAMMA ** (j - t) * r[b][j] for j in range(t, 3) if mask[b, j]) for b, t in valid}
    raw = {k: g[k] - values[k].item() for k in valid}
    adv = {k: (raw[k] - mean(list(raw.values()))) / (sample_std(list(raw.values())) + 1e-8) for k in valid}
    ratio = {k: math.exp(logp[k] - old[k].item()) for k in valid}
    surrogate = {k: min(ratio[k] * adv[k], min(max(ratio[k], 0.8), 1.2) * adv[k]) for k in valid}
    policy = mean([-surrogate[k] for k in valid]) - BETA * mean(list(ent.values()))
    kl = mean([old[k].item() - logp[k] for k in valid])  # per valid token

    torch.testing.assert_close(log_probs[mask.bool()], torch.tensor([logp[k] for k in valid]))
    assert advantages[1, 2].item() == 0.0
    assert terms.entropy.item() == pytest.approx(mean(list(ent.values())), rel=1e-5)
    assert terms.policy_loss.item() == pytest.approx(policy, rel=1e-5)
    assert terms.kl.item() == pytest.approx(kl, rel=1e-5)
    assert terms.loss.item() == pytest.approx(policy + kl, rel=1e-5)

    new_values = values + 0.5
    value_loss = losses.clipped_value_loss(new_values, values, returns, EPS_CLIP, mask)
    expected = mean([max((values[k].item() + 0.2 - g[k]) ** 2, (values[k].item() + 0.5 - g[k]) ** 2) for k in valid])
    assert value_loss.item() == pytest.approx(expected, rel=1e-5)
    shifted = values.clone()
    shifted[1, 2] = -100.0  # a padded position: changes nothing
    assert losses.clipped_value_loss(new_values, shifted, returns, EPS_CLIP, mask).item() == pytest.approx(expected)


def test_fixed_kl_term_does_not_grow_with_completion_length():
    log_probs, old = torch.tensor([[-0.7, -1.1, -0.3]]), torch.tensor([[-0.5, -1.0, -0.2]])

    def kl_terms(repeats: int) -> tuple[float, float]:
        """(fixed, faithful) KL terms for the same per-token log-ratios over `repeats` x 3 tokens."""
        lp, ol = log_probs.repeat(1, repeats), old.repeat(1, repeats)
        zeros, mask = torch.zeros_like(lp), torch.ones_like(lp)
        fixed = losses.fixed_actor_loss(lp, ol, zeros, zeros, mask, EPS_CLIP, BETA)
        faithful = losses.faithful_actor_loss(lp.exp(), lp, ol, zeros, EPS_CLIP, BETA)
        return fixed.kl.item(), faithful.kl.item()

    (fixed_short, faithful_short), (fixed_long, faithful_long) = kl_terms(1), kl_terms(2)
    assert fixed_short == pytest.approx(mean((old - log_probs)[0].tolist()), rel=1e-6)
    assert fixed_long == pytest.approx(fixed_short, rel=1e-6)
    assert faithful_long == pytest.approx(2 * faithful_short, rel=1e-6)  # chatllama's per-sequence sum doubles
