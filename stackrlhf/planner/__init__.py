"""Memory planner: will a model, precision, LoRA rank, batch and sequence length fit a GPU, before training starts.

`plan(model=..., stage=..., quantization=...)` returns a `MemoryPlan` (bytes per component, peak, verdict per
card, largest batch); `stackrlhf plan` prints it. Parameter counts come from the real model classes on the meta
device, quantized sizes from bitsandbytes' storage rules, and the activation, logits and KV-cache formulas are
derived in `stackrlhf.planner.activations`.
"""

from stackrlhf.planner.configs import bundled_models
from stackrlhf.planner.estimate import MemoryPlan, plan
from stackrlhf.planner.settings import PlanSettings

__all__ = ["MemoryPlan", "PlanSettings", "bundled_models", "plan"]
