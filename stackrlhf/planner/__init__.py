"""Memory planner: will a model, precision, LoRA rank, batch and sequence length fit a GPU, before training starts.

`plan(model=..., stage=..., quantization=...)` returns a `MemoryPlan` (bytes per component, peak, verdict per
card, the largest batch and lengths that fit); `stackrlhf plan` prints it, and `stackrlhf plan --config` plans the run
a recipe config describes (`stackrlhf.planner.recipe_config`). Parameter counts come from the real model classes on
the meta device, quantized sizes from bitsandbytes' storage rules, and the activation, logits and KV-cache formulas
are derived in `stackrlhf.planner.activations`.

The names below are imported on first use, so reading settings and parsing options stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first access, then keep it as a module attribute."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
