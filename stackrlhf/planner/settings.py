"""What the memory planner is asked about: model, stage, design, precision, LoRA, batch and sequence lengths.

Sizes per stage (one GPU, one process):
    - sft, reward: `batch_size` sequences (reward: chosen + rejected pairs) of `query_length + response_length` tokens;
    - dpo: `batch_size` pairs, chosen and rejected each of `query_length + response_length` tokens (`max_length`);
    - ppo: `batch_size` rollouts per step, `mini_batch_size` per forward/backward pass, `generation_batch_size`
      generated at once, prompts of `query_length` and responses of `response_length` tokens;
    - grpo, rloo: `batch_size` completions per forward/backward pass (TRL's `per_device_train_batch_size`),
      `generation_batch_size` completions generated at once (TRL's generation batch: `batch_size` times
      `steps_per_generation`), `num_generations` completions per prompt, prompts of `query_length` and completions of
      `response_length` tokens (TRL's `max_completion_length`), `reward_batch_size` texts per reward forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from stackrlhf.errors import ConfigError
from stackrlhf.planner.quantization import Quantization
from stackrlhf.planner.training_state import Optimizer

Stage = Literal["sft", "reward", "ppo", "dpo", "grpo", "rloo"]
Design = Literal["shared", "chatllama"]

GROUP_STAGES = ("grpo", "rloo")
"""Stages that sample groups of completions per prompt and train without a value head (TRL's GRPO and RLOO)."""


@dataclass
class PlanSettings:
    """The training setup to plan for (one GPU). Also the planner's command-line options."""

    model: str = field(
        default="meta-llama/Llama-2-7b-hf",
        metadata={
            "help": "A bundled model name (works offline), a local directory with a config.json, or a Hub name."
        },
    )
    stage: Stage = field(
        default="ppo",
        metadata={
            "help": "sft, reward (pairs: chosen + rejected), ppo, dpo (pairs; the reference is the base with the "
            "adapter disabled), grpo or rloo (groups of num_generations completions per prompt, no value head)."
        },
    )
    design: Design = field(
        default="shared",
        metadata={
            "help": "ppo only. shared: one base model; the policy is a LoRA adapter + value head, the reference "
            "is the base with the adapter disabled and the reward model a second, frozen adapter. chatllama: "
            "separate actor, critic and reward models, each a full copy (chatllama has no reference model)."
        },
    )
    quantization: Quantization = field(
        default="8bit",
        metadata={"help": "none (float32), bf16, 8bit (LLM.int8) or 4bit (nf4) weights of the base model."},
    )
    double_quant: bool = field(default=False, metadata={"help": "4bit only: also quantize the absmax constants."})
    upcast_non_quantized: bool = field(
        default=True,
        metadata={
            "help": "8bit/4bit: the non-quantized weights (embeddings, lm_head, norms) are upcast to float32 and the "
            "activations run in float32, as peft's prepare_model_for_kbit_training does; false: they stay 16-bit "
            "(the PPO recipe's --upcast_non_quantized false)."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank; 0 trains every parameter (no LoRA)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Linear layers that get LoRA adapters (e.g. q_proj v_proj, or all-linear); default: peft's "
            "default for the model type."
        },
    )
    batch_size: int = field(
        default=8,
        metadata={
            "help": "sft/reward/dpo: sequences (reward, dpo: pairs) per step (per_device_train_batch_size); ppo: "
            "rollouts per step; grpo/rloo: completions per forward/backward pass (per_device_train_batch_size)."
        },
    )
    mini_batch_size: int = field(
        default=2, metadata={"help": "ppo: sequences per forward/backward pass (capped at batch_size)."}
    )
    query_length: int = field(
        default=128, metadata={"help": "Prompt tokens per sequence (sft/reward/dpo: plus response_length in all)."}
    )
    response_length: int = field(
        default=128,
        metadata={
            "help": "Response (answer) tokens per sequence; grpo/rloo: completion tokens (max_completion_length)."
        },
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "ppo: sequences generated at once (default: batch_size). grpo/rloo: completions generated at "
            "once, a multiple of batch_size and of num_generations (TRL's generation_batch_size; default: batch_size)."
        },
    )
    num_generations: int = field(
        default=8, metadata={"help": "grpo/rloo: completions per prompt (a group), at least 2 (TRL's default: 8)."}
    )
    reward_batch_size: int = field(default=16, metadata={"help": "grpo/rloo: texts per reward forward pass."})
    reward_model: str | None = field(
        default=None,
        metadata={
            "help": "grpo/rloo: a separate sequence-classification reward model (a bundled name or a local directory "
            "with a config.json), loaded in float32; default: the reward recipe's adapter on the policy's base."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward pass. Default: on for sft, reward, dpo, grpo and rloo "
            "(TRL's defaults) and for 8/4-bit ppo (peft's prepare_model_for_kbit_training), off otherwise."
        },
    )
    optimizer: Optimizer = field(default="adamw", metadata={"help": "adamw, adamw_8bit (bitsandbytes) or adafactor."})
    gpu_memory_gb: float = field(default=24.0, metadata={"help": "The card to check (GiB of device memory)."})

    def check(self) -> None:
        """Reject settings that mean nothing, each with one line naming the value.

        Raises:
            ConfigError: a size below 1, LoRA rank below 0, double_quant without 4bit, a quantized base trained
                without LoRA, or (grpo/rloo) groups that do not fit the batches (`check_groups`).
        """
        for name in ("batch_size", "mini_batch_size", "query_length", "reward_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.response_length < 0 or (self.generates and self.response_length < 1):
            raise ConfigError(
                f"response_length must be at least 1 for {self.stage} (0 allowed for sft, reward and dpo), got "
                f"{self.response_length}."
            )
        if self.generation_batch_size is not None and self.generation_batch_size < 1:
            raise ConfigError(f"generation_batch_size must be at least 1, got {self.generation_batch_size}.")
        if self.lora_r < 0:
            raise ConfigError(f"lora_r must be 0 (no LoRA) or more, got {self.lora_r}.")
        if self.gpu_memory_gb <= 0:
            raise ConfigError(f"gpu_memory_gb must be positive, got {self.gpu_memory_gb}.")
        if self.double_quant and self.quantization != "4bit":
            raise ConfigError(f"double_quant applies to 4bit weights only, not quantization={self.quantization!r}.")
        if self.quantization in ("8bit", "4bit") and self.lora_r == 0:
            raise ConfigError(
                f"a {self.quantization} base cannot be trained directly: set lora_r > 0 to train LoRA adapters on it."
            )
        if self.stage in GROUP_STAGES:
            self.check_groups()

    def check_groups(self) -> None:
        """grpo/rloo: TRL's own rules for the groups (`GRPOConfig.__post_init__`), in the planner's names.

        Raises:
            ConfigError: fewer than 2 generations per prompt, a generation batch that is not a multiple of the batch
                or not made of whole groups, or no reward (without LoRA there is no adapter to carry one).
        """
        if self.num_generations < 2:
            raise ConfigError(
                f"num_generations must be at least 2 for {self.stage} (the advantage compares completions of the same "
                f"prompt), got {self.num_generations}."
            )
        generation = self.group_generation_batch
        if generation % self.batch_size:
            raise ConfigError(
                f"generation_batch_size {generation} must be a multiple of batch_size {self.batch_size} (TRL "
                "generates once per steps_per_generation batches)."
            )
        if generation % self.num_generations:
            raise ConfigError(
                f"num_generations {self.num_generations} must divide the generation batch {generation} "
                "(generation_batch_size, default batch_size): TRL generates whole groups."
            )
        if self.lora_r == 0 and self.reward_model is None:
            raise ConfigError(
                f"{self.stage} without LoRA (lora_r 0) needs a separate reward_model: a reward adapter shares the "
                "policy's peft model."
            )

    @property
    def generates(self) -> bool:
        """Whether the stage generates responses (ppo, grpo, rloo)."""
        return self.stage == "ppo" or self.stage in GROUP_STAGES

    @property
    def group_generation_batch(self) -> int:
        """grpo/rloo: completions generated at once (`generation_batch_size`, default `batch_size`)."""
        return self.generation_batch_size or self.batch_size

    @property
    def sequence_length(self) -> int:
        """Tokens per sequence: prompt plus response."""
        return self.query_length + self.response_length

    @property
    def checkpointing(self) -> bool:
        """`gradient_checkpointing` with its default resolved."""
        if self.gradient_checkpointing is not None:
            return self.gradient_checkpointing
        return self.stage != "ppo" or self.quantization in ("8bit", "4bit")
