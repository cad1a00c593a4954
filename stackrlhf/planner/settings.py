"""What the memory planner is asked about: model, stage, design, precision, LoRA, batch and sequence lengths."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from stackrlhf.errors import ConfigError
from stackrlhf.planner.quantization import Quantization
from stackrlhf.planner.training_state import Optimizer

Stage = Literal["sft", "reward", "ppo"]
Design = Literal["shared", "chatllama"]


@dataclass
class PlanSettings:
    """The training setup to plan for (one GPU). Also the planner's command-line options."""

    model: str = field(
        default="meta-llama/Llama-2-7b-hf",
        metadata={
            "help": "A bundled model name (works offline), a local directory with a config.json, or a Hub name."
        },
    )
    stage: Stage = field(default="ppo", metadata={"help": "sft, reward (pairs: chosen + rejected) or ppo."})
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
        default=8, metadata={"help": "sft/reward: sequences (pairs) per step; ppo: rollouts per step."}
    )
    mini_batch_size: int = field(
        default=2, metadata={"help": "ppo: sequences per forward/backward pass (capped at batch_size)."}
    )
    query_length: int = field(default=128, metadata={"help": "Prompt tokens per sequence."})
    response_length: int = field(default=128, metadata={"help": "Response (answer) tokens per sequence."})
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "ppo: sequences generated at once (default: batch_size)."}
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward pass. Default: on for sft and reward (TRL's default) "
            "and for 8/4-bit ppo (peft's prepare_model_for_kbit_training), off otherwise."
        },
    )
    optimizer: Optimizer = field(default="adamw", metadata={"help": "adamw, adamw_8bit (bitsandbytes) or adafactor."})
    gpu_memory_gb: float = field(default=24.0, metadata={"help": "The card to check (GiB of device memory)."})

    def check(self) -> None:
        """Reject settings that mean nothing, each with one line naming the value.

        Raises:
            ConfigError: a size below 1, LoRA rank below 0, double_quant without 4bit, or a quantized base trained
                without LoRA.
        """
        for name in ("batch_size", "mini_batch_size", "query_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.response_length < 0 or (self.stage == "ppo" and self.response_length < 1):
            raise ConfigError(
                f"response_length must be at least 1 for ppo (0 allowed otherwise), got {self.response_length}."
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
