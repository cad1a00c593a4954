"""The recipes' start-up check: will the run they are about to do fit this GPU? One printed line, never an error.

`plan_verdict(recipe, *parsed_arguments, device_bytes=...)` plans the run from the recipe's parsed arguments (the
mapping of `stackrlhf plan --config`, `stackrlhf.planner.recipe_config`) against `device_bytes` of device memory
and returns one line: it fits (planned peak X GiB of Y), or it will not, naming what to lower (each suggestion makes
it fit on its own, the others left as they are) or what to switch on. `report_memory_plan` is what the recipes call:
on a CUDA machine, on the first process of each node, it prints that line for device 0, and it logs and carries on
whenever the planner cannot answer (a model it cannot read offline, an option it does not know).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from stackrlhf.planner.recipe_config import RecipeRun, recipe_limits, settings_from_arguments
from stackrlhf.planner.settings import GROUP_STAGES, PlanSettings

logger = logging.getLogger(__name__)

PREFIX = "memory plan:"


def plan_verdict(recipe: str, *arguments: Any, device_bytes: int) -> str:
    """One line: does the run that `recipe`'s parsed `arguments` describe fit `device_bytes` of device memory?

    Raises:
        StackRLHFError: the planner cannot plan the run (e.g. a model whose config it cannot read).
    """
    return verdict_line(settings_from_arguments(recipe, *arguments), device_bytes)


def verdict_line(run: RecipeRun, device_bytes: int) -> str:
    """The verdict for a mapped recipe run against `device_bytes` of device memory (see `plan_verdict`)."""
    from stackrlhf.planner.estimate import GIB, plan

    settings = dataclasses.replace(run.settings, gpu_memory_gb=device_bytes / GIB)
    result = plan(settings)
    peak = f"planned peak {result.peak_bytes / GIB:.2f} GiB of {device_bytes / GIB:.2f} GiB"
    if result.fits:
        return f"{PREFIX} fits ({peak})"
    return f"{PREFIX} will not fit ({peak}): {_advice(run, settings, result.limits)}"


def report_memory_plan(recipe: str, *arguments: Any, device_bytes: int | None = None) -> str | None:
    """Print (and return) the verdict line for the run `arguments` describe against `device_bytes` (default: the
    memory of CUDA device 0; nothing happens without CUDA), on the first process of each node (`LOCAL_RANK` 0).
    Never raises: a planner failure is logged and training goes on."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return None
    try:
        if device_bytes is None:
            import torch

            if not torch.cuda.is_available():
                return None
            device_bytes = torch.cuda.get_device_properties(0).total_memory
        line = plan_verdict(recipe, *arguments, device_bytes=device_bytes)
    except Exception as err:  # the plan is advice: it must never stop a training run
        logger.warning("%s skipped, the planner failed: %s", PREFIX, " ".join(str(err).split())[:300] or repr(err))
        return None
    print(line, flush=True)
    return line


def _advice(run: RecipeRun, settings: Any, limits: dict[str, int]) -> str:
    """What to lower (each enough on its own) or switch on, in the recipe's option names; when no single change is
    enough, a switch together with what to lower after it."""
    from stackrlhf.planner.estimate import plan

    lower = _lowerings(run, settings, limits)
    switch, combined = [], ""
    for text, change in _switches(run, settings):
        if text == "use load_in_4bit" and "use load_in_8bit" in switch:
            continue  # the smaller step is enough
        changed = dataclasses.replace(settings, **change)
        result = plan(changed)
        if result.fits:
            switch.append(text)
        elif not combined and (after := _lowerings(run, changed, result.limits)):
            combined = f"{text} and lower {' or '.join(after)}"
    parts = (["lower " + " or ".join(lower)] if lower else []) + switch
    if parts:
        return ", or ".join(parts)
    if combined:
        return combined
    return (
        "no setting alone makes it fit: lower several (stackrlhf plan --config shows the limits) or use a bigger GPU"
    )


def _lowerings(run: RecipeRun, settings: Any, limits: dict[str, int]) -> list[str]:
    """`option to value` for each limit below the run's value (each enough on its own)."""
    options = run.options
    lower = []
    current = _current_values(run, settings)
    for name, limit in recipe_limits(run, limits).items():
        if limit < 1 + (name == "output_max_length") or limit >= current[name]:
            continue
        if name == "mini_batch_size":  # PPOConfig: batch_size must be a multiple of mini * accumulation
            per_step = settings.batch_size // max(int(options.get("gradient_accumulation_steps") or 1), 1)
            limit = max(size for size in range(1, limit + 1) if per_step % size == 0)
        text = f"{name} to {limit}"
        if run.stage in GROUP_STAGES and name in ("per_device_train_batch_size", "num_generations"):
            valid = _group_lowering(settings, name, limit)
            if valid is None:
                continue
            text = valid
        if name == "output_max_length" and limit <= int(options.get("output_min_length") or 0):
            text += " (and output_min_length below it)"
        lower.append(text)
    return lower


def _group_lowering(settings: PlanSettings, name: str, limit: int) -> str | None:
    """GRPO/RLOO: the largest value up to `limit` that TRL accepts, as advice (None: none does). The generation batch
    keeps its `steps_per_generation` and must hold whole groups; a smaller group (`num_generations`, at least 2)
    keeps the prompts per generation, so the per-device batch shrinks with it, and the advice names both."""
    generation = settings.group_generation_batch
    steps = max(1, generation // settings.batch_size)
    if name == "per_device_train_batch_size":
        valid = [size for size in range(1, limit + 1) if size * steps % settings.num_generations == 0]
        return f"{name} to {valid[-1]}" if valid else None
    prompts = max(1, generation // settings.num_generations)
    valid = [size for size in range(2, limit + 1) if prompts * size % steps == 0]
    if not valid:
        return None
    return f"num_generations to {valid[-1]} (with per_device_train_batch_size {prompts * valid[-1] // steps})"


def _switches(run: RecipeRun, settings: Any) -> list[tuple[str, dict[str, Any]]]:
    """(advice, settings change) for the memory savers the run does not use yet: a smaller quantization (LoRA runs),
    16-bit non-quantized weights (PPO recipes), gradient checkpointing."""
    candidates: list[tuple[str, dict[str, Any]]] = []
    if settings.lora_r > 0:
        if settings.quantization in ("none", "bf16"):
            candidates += [
                ("use load_in_8bit", {"quantization": "8bit"}),
                ("use load_in_4bit", {"quantization": "4bit"}),
            ]
        elif settings.quantization == "8bit":
            candidates.append(("use load_in_4bit", {"quantization": "4bit"}))
        elif not settings.double_quant:
            candidates.append(("set use_bnb_nested_quant true", {"double_quant": True}))
    if run.stage == "ppo" and settings.quantization in ("8bit", "4bit") and settings.upcast_non_quantized:
        dtype = str(run.options.get("dtype") or "float32")
        how = "set upcast_non_quantized false" + ("" if dtype in ("bfloat16", "float16") else " with dtype bfloat16")
        candidates.append((how, {"upcast_non_quantized": False}))
    if not settings.checkpointing:
        candidates.append(("set gradient_checkpointing true", {"gradient_checkpointing": True}))
    return candidates


def _current_values(run: RecipeRun, settings: Any) -> dict[str, int]:
    """The run's values of the options `recipe_limits` names (effective batches, worst-case lengths)."""
    if run.stage == "ppo":
        batch = settings.batch_size
        return {
            "mini_batch_size": min(settings.mini_batch_size, batch),
            "generation_batch_size": min(settings.generation_batch_size or batch, batch),
            "output_max_length": settings.response_length + 1,
        }
    if run.stage in GROUP_STAGES:
        return {
            "per_device_train_batch_size": settings.batch_size,
            "num_generations": settings.num_generations,
            "max_completion_length": settings.response_length,
        }
    return {"per_device_train_batch_size": settings.batch_size, "max_length": settings.sequence_length}
