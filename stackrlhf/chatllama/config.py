"""chatllama's configuration: `trainer_config`, `actor_config`, `critic_config` and `reward_config`, from YAML.

The field names and defaults are chatllama's (nebuly-ai/optimate, `artifacts/config/config.yaml`): actor
facebook/opt-1.3b, reward and critic facebook/opt-125m with a 2048-wide head, Adam learning rates 5e-6 / 9e-6, clip
0.2 / 0.2, entropy coefficient `beta_s` 0.02, discount 1, 100 episodes x 32 timesteps, learning every 32 timesteps on
batches of 1. Fields this layer adds are marked "(stackrlhf)": the mode, the precision, LoRA's size and the seed.
chatllama's fields for its own SFT/reward trainers, DeepSpeed, Accelerate, fairscale and checkpoint files are left
out: the checkpoints come from stackrlhf's SFT and reward recipes.

Every problem is a `ConfigError` whose one line names the section, field and value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stackrlhf.configs import read_config
from stackrlhf.errors import ConfigError

Mode = Literal["faithful", "fixed"]
MODES = ("faithful", "fixed")
DTYPES = ("float32", "bfloat16")


@dataclass
class TrainerConfig:
    """The RL loop (chatllama's `ConfigTrainer`).

    Attributes:
        mode: (stackrlhf) "faithful" reproduces chatllama's learn() with its quirks, "fixed" corrects them
            (see `stackrlhf.chatllama`).
        actor_lr, critic_lr: Adam learning rates of the actor and the critic.
        actor_eps_clip: PPO ratio clip. critic_eps_clip: value clip, in reward units.
        beta_s: entropy coefficient.
        gamma_discounted: discount of the per-token rewards in the reward-to-go.
        num_episodes, max_timesteps: the loop runs num_episodes x max_timesteps rollouts.
        update_timesteps: rollouts between two learn() calls.
        num_examples: prompts per rollout.
        batch_size: memories per optimizer step in learn().
        epochs: passes over the buffer per learn().
        device: (stackrlhf) "auto" (CUDA when available), "cpu" or "cuda[:i]".
        seed: (stackrlhf) seed of the prompt sampler and of sampling in "fixed" mode.
    """

    mode: str = "faithful"
    actor_lr: float = 5e-6
    critic_lr: float = 9e-6
    actor_eps_clip: float = 0.2
    critic_eps_clip: float = 0.2
    beta_s: float = 0.02
    gamma_discounted: float = 1.0
    num_episodes: int = 100
    max_timesteps: int = 32
    update_timesteps: int = 32
    num_examples: int = 1
    batch_size: int = 1
    epochs: int = 1
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"trainer_config.mode {self.mode!r}: choose one of {', '.join(MODES)}.")
        for name in ("num_episodes", "max_timesteps", "update_timesteps", "num_examples", "batch_size", "epochs"):
            _check_positive("trainer_config", name, getattr(self, name))
        memories = self.num_examples * self.update_timesteps
        if memories % self.batch_size:
            raise ConfigError(
                f"trainer_config.batch_size {self.batch_size} does not divide num_examples * update_timesteps = "
                f"{memories}, the memories of one learn() call (chatllama asserts it)."
            )
        timesteps = self.num_episodes * self.max_timesteps
        if timesteps % self.update_timesteps:
            raise ConfigError(
                f"trainer_config.update_timesteps {self.update_timesteps} does not divide num_episodes * "
                f"max_timesteps = {timesteps} (chatllama asserts it)."
            )
        if self.mode == "faithful" and self.batch_size != 1:
            raise ConfigError(
                f"trainer_config.batch_size {self.batch_size}: faithful mode only works with batch_size 1, as "
                "chatllama's learn() does (it broadcasts per-sequence terms along the token axis); use mode fixed."
            )


@dataclass
class ActorConfig:
    """The policy (chatllama's `ConfigActor`).

    Attributes:
        model: a base model name or directory, a merged SFT model, or an SFT LoRA adapter directory (merged into its
            base on load), as stackrlhf's SFT recipe writes them.
        max_sequence_length: longest prompt + completion, in tokens.
        max_tokens: most new tokens per completion.
        min_tokens: a prompt must leave at least this many tokens of context for the completion.
        temperature: sampling temperature ("fixed" mode; "faithful" decodes greedily like chatllama).
        peft_enable: train a LoRA adapter instead of the whole actor.
        lora_r, lora_alpha, lora_dropout: (stackrlhf fields, chatllama's peft_config.yaml values) the adapter's size.
        dtype: (stackrlhf) "float32" (chatllama) or "bfloat16".
        load_in_8bit: (stackrlhf) 8-bit base (bitsandbytes) under the LoRA adapter; needs peft_enable.
    """

    model: str = "facebook/opt-1.3b"
    max_sequence_length: int = 2048
    max_tokens: int = 2048
    min_tokens: int = 100
    temperature: float = 0.1
    peft_enable: bool = False
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    dtype: str = "float32"
    load_in_8bit: bool = False

    def __post_init__(self) -> None:
        _check_model("actor_config", self.model)
        _check_precision("actor_config", self.dtype, self.max_sequence_length)
        _check_positive("actor_config", "max_tokens", self.max_tokens)
        if not 0 <= self.min_tokens < self.max_sequence_length:
            raise ConfigError(
                f"actor_config.min_tokens {self.min_tokens}: must be at least 0 and below max_sequence_length "
                f"{self.max_sequence_length}."
            )
        if self.temperature <= 0:
            raise ConfigError(f"actor_config.temperature {self.temperature}: must be positive.")
        if self.load_in_8bit and not self.peft_enable:
            raise ConfigError("actor_config.load_in_8bit true: an 8-bit actor can only be trained with peft_enable.")


@dataclass
class RewardConfig:
    """The reward model, and the critic (chatllama's `ConfigReward`; `ConfigCritic` is the same class).

    Attributes:
        model: a reward LoRA adapter directory (task SEQ_CLS with its `score` head, as stackrlhf's reward recipe and
            TRL's RewardTrainer save it), a sequence-classification model, or a base model name (its score head is
            then random, as chatllama's critic is without a reward checkpoint). For the critic, None means "the
            reward model's": the critic starts as a separately-weighted copy of the reward model, head included
            (chatllama's ModelLoader copies the reward checkpoint into the empty critic folder).
        model_head_hidden_size: width of the Linear-ReLU-Linear head.
        max_sequence_length: longest sequence the model scores, in tokens.
        dtype: (stackrlhf) "float32" (chatllama) or "bfloat16".
        load_in_8bit: (stackrlhf) 8-bit backbone; the reward model only (the critic is fully fine-tuned).
    """

    model: str | None = "facebook/opt-125m"
    model_head_hidden_size: int = 2048
    max_sequence_length: int = 2048
    dtype: str = "float32"
    load_in_8bit: bool = False

    def check(self, section: str) -> None:
        """Raise `ConfigError` for values that cannot work in `section` ("reward_config" or "critic_config")."""
        if self.model is not None or section == "reward_config":
            _check_model(section, self.model)
        _check_precision(section, self.dtype, self.max_sequence_length)
        if self.model_head_hidden_size < 2:
            raise ConfigError(
                f"{section}.model_head_hidden_size {self.model_head_hidden_size}: must be at least 2 to hold the "
                "reward model's linear score head exactly."
            )
        if section == "critic_config" and self.load_in_8bit:
            raise ConfigError("critic_config.load_in_8bit true: the critic is fully fine-tuned, it cannot be 8-bit.")


def default_critic_config() -> RewardConfig:
    """chatllama's critic: facebook/opt-125m; here None, the reward model's checkpoint, which is what it copies."""
    return RewardConfig(model=None)


@dataclass
class ChatLlamaConfig:
    """The four sections of chatllama's config.yaml, checked together.

    Attributes:
        trainer: `trainer_config`. actor: `actor_config`. critic: `critic_config`. reward: `reward_config`.
    """

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    critic: RewardConfig = field(default_factory=default_critic_config)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        self.reward.check("reward_config")
        self.critic.check("critic_config")
        reward_head = self.reward.model_head_hidden_size
        if self.critic.model is None and self.critic.model_head_hidden_size != reward_head:
            raise ConfigError(
                f"critic_config.model_head_hidden_size {self.critic.model_head_hidden_size}: with critic_config.model "
                f"unset the critic is a copy of the reward model, whose head has {reward_head} units; set it to "
                f"{reward_head} or name a critic checkpoint."
            )

    @property
    def critic_model(self) -> str:
        """Where the critic's weights come from: `critic.model`, or the reward model's when unset."""
        return self.critic.model or self.reward.model

    @property
    def context_length(self) -> int:
        """Longest prompt + completion: the smallest max_sequence_length of the three models (as chatllama's main.py
        clamps it)."""
        return min(self.actor.max_sequence_length, self.critic.max_sequence_length, self.reward.max_sequence_length)

    @classmethod
    def from_dict(cls, sections: dict[str, Any]) -> ChatLlamaConfig:
        """Build from a mapping with keys `trainer_config`, `actor_config`, `critic_config`, `reward_config` (each
        optional); unknown sections or fields raise `ConfigError`."""
        classes = {
            "trainer_config": TrainerConfig,
            "actor_config": ActorConfig,
            "critic_config": RewardConfig,
            "reward_config": RewardConfig,
        }
        unknown = sorted(set(sections) - set(classes))
        if unknown:
            raise ConfigError(f"unknown config section(s) {', '.join(unknown)}: expected {', '.join(classes)}.")
        built = {}
        for section, config_class in classes.items():
            values = sections.get(section) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"{section}: expected a mapping of fields, got {type(values).__name__}.")
            names = {f.name for f in dataclasses.fields(config_class)}
            extra = sorted(set(values) - names)
            if extra:
                raise ConfigError(
                    f"{section}: unknown field(s) {', '.join(extra)}; known: {', '.join(sorted(names))}."
                )
            if section == "critic_config":
                values = {"model": None, **values}
            built[section.removesuffix("_config")] = config_class(**values)
        return cls(**built)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ChatLlamaConfig:
        """Read a chatllama-style YAML file (sections as in `from_dict`), by path or by shipped short name
        (`tiny/chatllama`, `opt-1.3b/chatllama`)."""
        try:
            sections = read_config(path)
        except ConfigError as err:
            raise ConfigError(f"chatllama {err}") from err
        return cls.from_dict(sections)


def _check_positive(section: str, name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{section}.{name} {value}: must be at least 1.")


def _check_model(section: str, model: str | None) -> None:
    if not model:
        raise ConfigError(f"{section}.model {model!r}: name a model, a model directory or a checkpoint directory.")


def _check_precision(section: str, dtype: str, max_sequence_length: int) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"{section}.dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")
    _check_positive(section, "max_sequence_length", max_sequence_length)
