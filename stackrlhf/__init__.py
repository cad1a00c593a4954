"""stackrlhf: StackLLaMA-style RLHF on one GPU, a thin layer over Hugging Face TRL.

The names TRL 0.11.4 scripts import from `trl` are importable from here, so porting such a script is an import change:
`from stackrlhf import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, ...`.
"""

from stackrlhf.core import (
    AdaptiveKLController,
    FixedKLController,
    LengthSampler,
    RunningMoments,
    respond_to_batch,
    set_seed,
)
from stackrlhf.modeling_base import PreTrainedModelWrapper, create_reference_model
from stackrlhf.modeling_value_head import (
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    ValueHead,
)
from stackrlhf.ppo_config import PPOConfig
from stackrlhf.ppo_trainer import PPOTrainer

__version__ = "0.1.0"

__all__ = [
    "AdaptiveKLController",
    "AutoModelForCausalLMWithValueHead",
    "AutoModelForSeq2SeqLMWithValueHead",
    "FixedKLController",
    "LengthSampler",
    "PPOConfig",
    "PPOTrainer",
    "PreTrainedModelWrapper",
    "RunningMoments",
    "ValueHead",
    "create_reference_model",
    "respond_to_batch",
    "set_seed",
]
