"""stackrlhf: StackLLaMA-style RLHF on one GPU, a thin layer over Hugging Face TRL.

The names TRL 0.11.4 scripts import from `trl` are importable from here, so porting such a script is an import change:
`from stackrlhf import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, ...`.

They are imported on first use (PEP 562), so `stackrlhf plan` and the other light entry points do not pay for
torch, peft and accelerate before they need them.

`TINY_MODEL` ("stackrlhf/stories260K") names the bundled tiny Llama wherever stackrlhf takes a model name;
`resolve_model_name_or_path(TINY_MODEL)` is its local directory (converted into the cache on first use), for
transformers' and peft's own `from_pretrained` (a Hub name or a path passes through unchanged).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stackrlhf import quiet
from stackrlhf.lazy import lazy_exports

__version__ = "0.1.0"

quiet.install()

_EXPORTS = {
    "AdaptiveKLController": "stackrlhf.core",
    "FixedKLController": "stackrlhf.core",
    "LengthSampler": "stackrlhf.core",
    "RunningMoments": "stackrlhf.core",
    "respond_to_batch": "stackrlhf.core",
    "set_seed": "stackrlhf.core",
    "PreTrainedModelWrapper": "stackrlhf.models.modeling_base",
    "create_reference_model": "stackrlhf.models.modeling_base",
    "AutoModelForCausalLMWithValueHead": "stackrlhf.models.modeling_value_head",
    "AutoModelForSeq2SeqLMWithValueHead": "stackrlhf.models.modeling_value_head",
    "ValueHead": "stackrlhf.models.modeling_value_head",
    "PPOConfig": "stackrlhf.trainer.ppo_config",
    "PPOTrainer": "stackrlhf.trainer.ppo_trainer",
    "TINY_MODEL": "stackrlhf.models.bundled",
    "resolve_model_name_or_path": "stackrlhf.models.bundled",
}

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
    "TINY_MODEL",
    "ValueHead",
    "create_reference_model",
    "resolve_model_name_or_path",
    "respond_to_batch",
    "set_seed",
]

if TYPE_CHECKING:
    from stackrlhf.core import (
        AdaptiveKLController,
        FixedKLController,
        LengthSampler,
        RunningMoments,
        respond_to_batch,
        set_seed,
    )
    from stackrlhf.models.bundled import TINY_MODEL, resolve_model_name_or_path
    from stackrlhf.models.modeling_base import PreTrainedModelWrapper, create_reference_model
    from stackrlhf.models.modeling_value_head import (
        AutoModelForCausalLMWithValueHead,
        AutoModelForSeq2SeqLMWithValueHead,
        ValueHead,
    )
    from stackrlhf.trainer.ppo_config import PPOConfig
    from stackrlhf.trainer.ppo_trainer import PPOTrainer


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
