"""A chatllama-style actor/critic RLHF trainer (nebuly-ai/optimate `optimization/chatllama`, final version), to
compare its separate-models design with stackrlhf's shared quantized base.

chatllama keeps three full models: an actor (causal LM), a critic and a reward model (each a backbone with a
Linear-ReLU-Linear head scoring every token). Unless `critic_config.model` names a checkpoint, the critic starts as
a copy of the reward model, head included, in both modes, as chatllama's ModelLoader copies the reward checkpoint
into the empty critic folder (`models.load_critic`). There is no reference model: its "KL" term compares the
current policy with the rollout-time policy, inside the loss. learn() uses the per-token reward-model scores as
dense rewards, discounted reward-to-go advantages, a clipped surrogate with an entropy term, a clipped value loss
and two Adam optimizers with cosine-restart schedulers.

It reads stackrlhf's inputs: prompts from `stackrlhf.data` (``"Question: {q}\\n\\nAnswer: "``), the actor from an
SFT adapter or merged model, the reward model and critic from a reward adapter (SEQ_CLS, `score` head) or a
sequence-classification model; see `stackrlhf.chatllama.models` for how the linear score head becomes chatllama's
MLP head exactly. Settings are chatllama's YAML sections (`ChatLlamaConfig.from_yaml`).

Two modes (`trainer_config.mode`):

- ``faithful`` reproduces chatllama, quirks included, so that the comparison is honest.
- ``fixed`` corrects the implementation defects and keeps the design (three models, no reference model, dense
  per-token rewards, KL to the rollout policy in the loss, two optimizers). Each difference, and why:

  - log-probabilities: faithful takes log(max softmax probability) whatever token was generated; fixed gathers the
    taken token's log-probability, because the PPO ratio is about the action that was taken.
  - logits slice: faithful slices `[:, -A:]`, the logits AT the action positions (they predict the next tokens);
    fixed slices `[:, P-1 : P-1+A]`, because the logits at t-1 are the ones that produced the token at t. Values
    move with it (the value of the state before each action).
  - decoding: faithful is greedy (chatllama calls HF generate without do_sample, so its temperature does nothing)
    with no_repeat_ngram_size=3, on top of the checkpoint's generation defaults as HF merges them; fixed samples
    from softmax(logits / temperature) with no other logits processor or warper, whatever the checkpoint's
    generation_config.json says (no top-k/top-p, repetition penalty, minimum length suppressing EOS...), because
    PPO's ratios need the distribution the actions were drawn from, and log-probs use the same temperature.
  - dropout in learn(): faithful trains with dropout on (chatllama's `actorcritic.train()`), so even unchanged
    weights give ratios other than 1; fixed keeps actor and critic in eval mode, because the new log-probs and
    values must be computed as the rollout's were (ratio exactly 1 before the first step).
  - masks: faithful masks `ids != pad_id` and counts every action position in every loss, padding and post-EOS
    tokens included; fixed cuts completions after the first EOS, masks padding in attention and losses and counts
    positions from real tokens (left padding does not shift them), because padding is not part of any action.
  - batch size: faithful needs batch_size 1 (chatllama broadcasts per-sequence [B] terms along the token axis and
    stacks unpadded memories); fixed pads memories into batches of any size, because one sequence per step is slow.
  - advantages: faithful normalises with the per-sequence mean (broadcast as above) and the std of all elements;
    fixed whitens over the valid positions of the batch, because that is the normalisation chatllama intended.
  - entropy: faithful adds `-beta_s·Σ_t p·log p` of max-probabilities per sequence, which LOWERS entropy (a
    penalty, growing with length); fixed subtracts beta_s x the mean token entropy (a bonus), because the term is
    meant to keep exploration.
  - KL term: faithful weights `old_log_p - log_p` by the current max-probability and sums it over each sequence
    (so it grows with completion length); fixed averages `old_log_p - log_p` of the taken tokens over the valid
    tokens, the per-token sampled estimate of KL(rollout policy || current policy), so that its scale does not
    depend on completion length (like the per-token policy loss and entropy it is added to).
  - value target: faithful regresses values on the raw per-token reward; fixed on the reward-to-go, because the
    advantages subtract the value from the reward-to-go, so the critic must estimate that.
  - reward forward: faithful runs it with autograd on and the reward weights trainable (a graph is built, then
    dropped); fixed freezes the reward model and scores under no_grad, because nothing trains it.

Left out of both: chatllama's cross-family re-tokenization (broken at its last release, optimate#312: the models
must share a tokenizer family here), its LLaMA/fairscale, DeepSpeed and Accelerate paths, checkpoint files and logs.
"""

from stackrlhf.chatllama.buffer import ExperienceDataset, Memory
from stackrlhf.chatllama.config import (
    ActorConfig,
    ChatLlamaConfig,
    RewardConfig,
    TrainerConfig,
)
from stackrlhf.chatllama.models import ActorCritic, ActorModel, CriticModel, RewardModel, Rollout
from stackrlhf.chatllama.prompts import PromptSampler, load_prompts
from stackrlhf.chatllama.trainer import ChatLlamaTrainer, LearnStats

CriticConfig = RewardConfig
"""chatllama's `ConfigCritic = ConfigReward`."""

__all__ = [
    "ActorConfig",
    "ActorCritic",
    "ActorModel",
    "ChatLlamaConfig",
    "ChatLlamaTrainer",
    "CriticConfig",
    "CriticModel",
    "ExperienceDataset",
    "LearnStats",
    "Memory",
    "PromptSampler",
    "RewardConfig",
    "RewardModel",
    "Rollout",
    "TrainerConfig",
    "load_prompts",
]
