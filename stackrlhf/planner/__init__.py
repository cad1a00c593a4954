"""Memory planner: will a model, precision, LoRA rank, batch and sequence length fit a GPU, before training starts.

`plan(model=..., stage=..., quantization=...)` returns a `MemoryPlan` (bytes per component, peak, verdict per
card, the largest batch and lengths that fit); `stackrlhf plan` prints it, and `stackrlhf plan --config` plans the run
a recipe config describes (`stackrlhf.planner.recipe_config`). Parameter counts come from the real model classes on
the meta device, quantized sizes from bitsandbytes' storage rules, and the activation, logits and KV-cache formulas
are derived in `stackrlhf.planner.activations`.

The names below are imported on first use, so reading settings and parsing options stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stackrlhf.lazy import lazy_exports

_EXPORTS = {
    "MemoryPlan": "stackrlhf.planner.estimate",
    "plan": "stackrlhf.planner.estimate",
    "PlanSettings": "stackrlhf.planner.settings",
    "bundled_models": "stackrlhf.planner.configs",
}

__all__ = ["MemoryPlan", "PlanSettings", "bundled_models", "plan"]

if TYPE_CHECKING:
    from stackrlhf.planner.configs import bundled_models
    from stackrlhf.planner.estimate import MemoryPlan, plan
    from stackrlhf.planner.settings import PlanSettings


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
