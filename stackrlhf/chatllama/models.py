"""chatllama's three models: the actor (a causal LM), the reward model and the critic (a backbone with a
Linear-ReLU-Linear head giving one score per token), and `ActorCritic`, which generates and re-scores rollouts.

Our reward model is a sequence-classification model (TRL's RewardTrainer: the backbone plus a linear `score` head,
saved as a LoRA adapter with `score` in modules_to_save). It is mapped into chatllama's architecture exactly: the
adapter is merged into the backbone, and the head `Linear(H, head_hidden) -> ReLU -> Linear(head_hidden, 1)` is
initialised so that it computes the linear score, using s = relu(s) - relu(-s) on its first two units (the other
units start with PyTorch's default input weights and a zero output weight: they add nothing yet, and learn). The
reward model therefore scores every position [B, L] with our reward function. Unless `critic_config.model` names
its own checkpoint, the critic starts as a copy of the reward model, head included (`load_critic`): chatllama's
critic initialised from the reward model, with its own weights, fully fine-tuned.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import AutoConfig, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)
from trl import ModelConfig

from stackrlhf.chatllama.buffer import join_padded
from stackrlhf.chatllama.config import ActorConfig, ChatLlamaConfig, Mode, RewardConfig
from stackrlhf.chatllama.timing import PhaseTimer
from stackrlhf.errors import ConfigError, first_line
from stackrlhf.models.bundled import resolve_model_name_or_path
from stackrlhf.models.loading import load_model, load_tokenizer, read_adapter


def model_family(section: str, source: str) -> str:
    """The `model_type` (e.g. "llama", "opt") of `source`, a model or an adapter's base.

    Raises:
        ConfigError: `source` cannot be loaded, or its family is unknown to transformers; the message names
            `section.model` and its value.
    """
    adapter = read_adapter(source)
    name = adapter.base_model if adapter else source
    try:
        family = AutoConfig.from_pretrained(resolve_model_name_or_path(name)).model_type
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{section}.model {source!r}: not a known model family ({first_line(err)}).") from err
    return family


def check_model_families(config: ChatLlamaConfig) -> None:
    """The actor, critic and reward model must share one family (one tokenizer), with the heads this shim needs.

    chatllama re-tokenizes between families, a path that is broken at its last release (nebuly-ai/optimate#312:
    the critic's action length is the prompt length); it is not reproduced.

    Raises:
        ConfigError: an unknown family, a family without a causal-LM or sequence-classification model, or families
            that differ; the message names the field and value.
    """
    actor_family = model_family("actor_config", config.actor.model)
    if actor_family not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"actor_config.model {config.actor.model!r}: family {actor_family!r} has no causal LM.")
    for section, source in (("critic_config", config.critic_model), ("reward_config", config.reward.model)):
        family = model_family(section, source)
        if family not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
            raise ConfigError(f"{section}.model {source!r}: family {family!r} has no sequence-classification model.")
        if family != actor_family:
            raise ConfigError(
                f"{section}.model {source!r}: family {family!r} differs from the actor's {actor_family!r}; this "
                "shim needs one tokenizer for the three models."
            )


class ActorModel(nn.Module):
    """The policy: a causal LM (optionally LoRA-wrapped) and its left-padding tokenizer.

    The checkpoint's generation defaults (its generation_config.json: top_k, repetition_penalty, min_new_tokens...)
    are kept aside in `checkpoint_generation_config` and the model's own are blanked, so that `generate` runs with
    exactly the settings of `generation_settings` and nothing else is merged in.

    Args:
        config: `actor_config`. `model` may be an SFT adapter directory, merged into its base here.
        context_length: longest prompt + completion, in tokens.
    """

    def __init__(self, config: ActorConfig, context_length: int) -> None:
        super().__init__()
        self.config = config
        self.context_length = context_length
        adapter = read_adapter(config.model)
        if adapter is not None and adapter.task != "causal_lm":
            raise ConfigError(f"actor_config.model {config.model!r}: a reward (SEQ_CLS) adapter, not an SFT adapter.")
        base_args = ModelConfig(
            model_name_or_path=adapter.base_model if adapter else config.model,
            dtype=config.dtype,
            load_in_8bit=config.load_in_8bit,
        )
        model = load_model(base_args)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, config.model).merge_and_unload()
        model.requires_grad_(not config.peft_enable)  # merging an adapter leaves the weights frozen
        self.checkpoint_generation_config = model.generation_config
        model.generation_config = GenerationConfig()
        if config.peft_enable:
            if config.load_in_8bit:
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            lora = LoraConfig(
                task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout
            )
            model = get_peft_model(model, lora)
        self.model = model
        self.tokenizer = load_actor_tokenizer(config, context_length)

    def forward(
        self, sequences: torch.Tensor, sequences_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B, L, V] of `sequences` [B, L] under `sequences_mask` [B, L]."""
        return self.model(input_ids=sequences, attention_mask=sequences_mask, position_ids=position_ids).logits

    def generation_settings(self, *, sample: bool, max_new_tokens: int) -> GenerationConfig:
        """Everything a `generate` call uses (the model's own defaults are blank, see the class docstring).

        `sample=False` is chatllama's call: `generate(max_new_tokens, no_repeat_ngram_size=3)` without `do_sample`
        on top of the checkpoint's generation defaults, which HF generate merges in; greedy (its temperature has no
        effect). `sample=True` samples from softmax(logits / temperature) with no other logits processor or warper
        (no top-k/top-p, repetition penalty, minimum length or suppressed tokens, whatever the checkpoint sets), so
        the stored log-probabilities, log_softmax(logits / temperature), are those of the sampling distribution.
        """
        special = {"pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.tokenizer.eos_token_id}
        if not sample:
            settings = copy.deepcopy(self.checkpoint_generation_config)
            settings.update(max_new_tokens=max_new_tokens, do_sample=False, no_repeat_ngram_size=3, **special)
            return settings
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=self.config.temperature,
            top_k=0,
            top_p=1.0,
            **special,
        )

    @torch.no_grad()
    def generate(
        self, states: torch.Tensor, states_mask: torch.Tensor, *, sample: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Complete the left-padded prompts `states` [B, P], greedily or by sampling (see `generation_settings`).

        Returns:
            (actions [B, A], sequences [B, P + A]); rows that ended early are padded with the pad token.

        Raises:
            ConfigError: the prompt leaves fewer than `min_tokens` (and at least 1) tokens of context.
        """
        prompt_len = states.shape[1]
        room = self.context_length - prompt_len
        if room < max(self.config.min_tokens, 1):
            raise ConfigError(
                f"actor_config.max_sequence_length {self.context_length}: a prompt of {prompt_len} tokens leaves "
                f"{room} for the completion, fewer than min_tokens {self.config.min_tokens} (or 1)."
            )
        settings = self.generation_settings(sample=sample, max_new_tokens=min(self.config.max_tokens, room))
        sequences = self.model.generate(input_ids=states, attention_mask=states_mask, generation_config=settings)
        return sequences[:, prompt_len:], sequences


def load_actor_tokenizer(config: ActorConfig, context_length: int) -> PreTrainedTokenizerBase:
    """chatllama's actor tokenizer: left padding, pad = EOS when missing, `model_max_length` = the context."""
    adapter = read_adapter(config.model)
    source = adapter.tokenizer_source if adapter else config.model
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=source), padding_side="left")
    tokenizer.model_max_length = context_length
    return tokenizer


class RewardModel(nn.Module):
    """A backbone (transformers base model, no LM head) and chatllama's MLP head, giving one score per token.

    Args:
        backbone: e.g. a `LlamaModel`; its `last_hidden_state` [B, L, H] feeds the head.
        head: [..., H] -> [..., 1], kept in float32.
    """

    def __init__(self, backbone: PreTrainedModel, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @classmethod
    def from_checkpoint(cls, config: RewardConfig, source: str, section: str) -> RewardModel:
        """Load a reward checkpoint (see `RewardConfig.model`) with its linear score head mapped into the MLP head.

        Args:
            config: the section's settings (precision, head width). source: what to load. section: for messages.
        """
        adapter = read_adapter(source)
        if adapter is not None and adapter.task != "sequence_classification":
            raise ConfigError(f"{section}.model {source!r}: an SFT (CAUSAL_LM) adapter, not a reward adapter.")
        base_args = ModelConfig(
            model_name_or_path=adapter.base_model if adapter else source,
            dtype=config.dtype,
            load_in_8bit=config.load_in_8bit,
        )
        model = load_model(base_args, task="sequence_classification")
        if adapter is not None:
            model = PeftModel.from_pretrained(model, source).merge_and_unload()
        score = getattr(model, "score", None)
        if not isinstance(score, nn.Linear) or score.out_features != 1:
            raise ConfigError(f"{section}.model {source!r}: no one-output linear `score` head to start the head from.")
        return cls(model.base_model, linear_head_as_mlp(score, config.model_head_hidden_size))

    def forward(
        self, sequences: torch.Tensor, sequences_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-token scores [B, L] (float32) of `sequences` [B, L]: the head at every position."""
        hidden = self.backbone(
            input_ids=sequences, attention_mask=sequences_mask, position_ids=position_ids
        ).last_hidden_state
        return self.head(hidden.float()).squeeze(-1)

    def get_reward(self, sequences: torch.Tensor, sequences_mask: torch.Tensor) -> torch.Tensor:
        """chatllama's sequence reward: the score at the last position [B] (left padding makes it the last token)."""
        return self.forward(sequences, sequences_mask)[:, -1]


CriticModel = RewardModel
"""As in chatllama, the critic is the reward model's class with its own weights."""


def load_critic(config: ChatLlamaConfig, reward: RewardModel) -> CriticModel:
    """The critic: loaded from `critic_config.model` when it is set, else a copy of `reward`.

    The copy is chatllama's `ModelLoader.init_critic_from_reward`, which copies the reward checkpoint (backbone and
    head) into the empty critic folder: the reward checkpoint is loaded again at the critic's precision (never
    8-bit, the critic is trained) and `reward`'s head is copied in. With the same dtype and a reward model that is
    not 8-bit, the critic's state_dict therefore equals the reward model's tensor for tensor, in its own storage.

    Args:
        config: all sections (`critic_config`, and `reward_config.model` for the copy).
        reward: the loaded reward model, whose head the copy takes.
    """
    if config.critic.model is not None:
        return CriticModel.from_checkpoint(config.critic, config.critic.model, "critic_config")
    critic = CriticModel.from_checkpoint(config.critic, config.reward.model, "critic_config")
    critic.head.load_state_dict(reward.head.state_dict())
    return critic


def linear_head_as_mlp(score: nn.Linear, hidden_size: int) -> nn.Sequential:
    """`Linear(H, hidden_size) -> ReLU -> Linear(hidden_size, 1)` in float32 computing exactly `score` (H -> 1).

    Units 0 and 1 hold relu(s) and relu(-s) of s = w·h + b, and the output is their difference; the remaining units
    keep PyTorch's default input weights with a zero output weight.
    """
    first, second = nn.Linear(score.in_features, hidden_size), nn.Linear(hidden_size, 1)
    weight = score.weight.detach().float()[0]
    bias = score.bias.detach().float()[0] if score.bias is not None else torch.zeros(())
    with torch.no_grad():
        first.weight[0], first.weight[1] = weight, -weight
        first.bias[0], first.bias[1] = bias, -bias
        second.weight.zero_()
        second.weight[0, 0], second.weight[0, 1] = 1.0, -1.0
        second.bias.zero_()
    return nn.Sequential(first, nn.ReLU(), second).to(score.weight.device)


class Rollout(NamedTuple):
    """What `ActorCritic.generate` returns (chatllama's tuple; the critic shares the actor's tokens).

    Attributes:
        actions: [B, A] completion tokens. action_mask: [B, A] valid actions (faithful: all 1).
        actions_logits: [B, A, V] the actor's logits for the action slice (see `ActorCritic.forward`).
        values: [B, A] the critic's values on the same slice.
        sequences: [B, P + A] prompt + completion. sequences_mask: [B, P + A].
        prompt_len: P. action_len: A.
    """

    actions: torch.Tensor
    action_mask: torch.Tensor
    actions_logits: torch.Tensor
    values: torch.Tensor
    sequences: torch.Tensor
    sequences_mask: torch.Tensor
    prompt_len: int
    action_len: int


class ActorCritic(nn.Module):
    """The trainable pair. Both read the actor's token ids (one tokenizer family, see `check_model_families`)."""

    def __init__(self, actor: ActorModel, critic: CriticModel, mode: Mode) -> None:
        super().__init__()
        self.actor = actor
        self.critic = critic
        self.mode = mode

    def forward(
        self, sequences: torch.Tensor, sequences_mask: torch.Tensor, action_len: int, prompt_len: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actor logits [B, A, V] and critic values [B, A] for the action positions of `sequences` [B, P + A].

        faithful: chatllama's slice `[:, -A:]`, unshifted: the logits at the action positions themselves, which
        predict the NEXT tokens (the last one predicts past the end); default position ids.
        fixed: `[:, P-1 : P-1+A]`, the logits that predict each action and the value of the state before it;
        position ids count real tokens only, so left padding does not move positions.
        """
        if self.mode == "faithful":
            logits = self.actor(sequences, sequences_mask)[:, -action_len:, :]
            values = self.critic(sequences, sequences_mask)[:, -action_len:]
            return logits, values
        position_ids = position_ids_from_mask(sequences_mask)
        window = slice(prompt_len - 1, prompt_len - 1 + action_len)
        logits = self.actor(sequences, sequences_mask, position_ids)[:, window, :]
        values = self.critic(sequences, sequences_mask, position_ids)[:, window]
        return logits, values

    @torch.no_grad()
    def generate(self, states: torch.Tensor, states_mask: torch.Tensor, timer: PhaseTimer | None = None) -> Rollout:
        """Generate completions of `states` [B, P] (left-padded) and score them with a second full forward.

        faithful: greedy, masks `sequences != pad_id` (a pad-valued token inside the text is masked too), the whole
        generated block (with its trailing padding) is the action. fixed: sampled, each completion cut after its
        first EOS, rows re-padded (`join_padded`) and masked.
        timer: records the "generate" and "score" phases.
        """
        timer = timer or PhaseTimer()
        pad_id = self.actor.tokenizer.pad_token_id
        with timer("generate"):
            actions, sequences = self.actor.generate(states, states_mask, sample=self.mode == "fixed")
        if self.mode == "faithful":
            sequences_mask = (sequences != pad_id).long()
            action_len = actions.shape[1]
            with timer("score"):
                logits, values = self.forward(sequences, sequences_mask, action_len)
            prompt_len = sequences.shape[1] - action_len
            return Rollout(
                actions, torch.ones_like(actions), logits, values, sequences, sequences_mask, prompt_len, action_len
            )
        eos_id = self.actor.tokenizer.eos_token_id
        prompts = [row[mask.bool()] for row, mask in zip(states, states_mask, strict=True)]
        joined = join_padded(prompts, [cut_after_eos(row, eos_id) for row in actions], pad_id)
        sequences = joined.sequences.to(states.device)
        sequences_mask = joined.sequences_mask.to(states.device)
        with timer("score"):
            logits, values = self.forward(sequences, sequences_mask, joined.action_len, joined.prompt_len)
        return Rollout(
            sequences[:, joined.prompt_len :],
            joined.action_mask.to(states.device),
            logits,
            values,
            sequences,
            sequences_mask,
            joined.prompt_len,
            joined.action_len,
        )


def position_ids_from_mask(sequences_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only, so left padding does not shift them: [B, L] -> [B, L]."""
    return (sequences_mask.long().cumsum(-1) - 1).clamp(min=0)


def cut_after_eos(actions: torch.Tensor, eos_id: int) -> torch.Tensor:
    """`actions` [A] up to and including its first EOS (all of it when there is none)."""
    hits = (actions == eos_id).nonzero()
    return actions[: int(hits[0]) + 1] if len(hits) else actions
