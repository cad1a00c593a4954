"""The planner's answer as a readable table (GiB) or as one JSON object."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from stackrlhf.planner.estimate import COMPONENT_HELP, GIB, MemoryPlan
from stackrlhf.planner.recipe_config import RecipeRun, recipe_limits, show_value
from stackrlhf.planner.settings import GROUP_STAGES, PlanSettings


def gib(num_bytes: int) -> str:
    """Bytes as GiB with two decimals."""
    return f"{num_bytes / GIB:.2f}"


def format_plan(plan: MemoryPlan) -> str:
    """A text table: settings, GiB per component, phases, peak, a verdict per card (after a line repeating the sizes
    and precision it holds for) and the limits (`+`: everything up to the search's bound fits; `none`: not even 1
    fits)."""
    s = plan.settings
    lines = [
        f"model {s.model}: {plan.params_total:,} parameters ({plan.trainable_params:,} trainable)",
        f"stage {s.stage}, design {s.design if s.stage == 'ppo' else '-'}, weights {weights_text(plan)}, "
        f"LoRA r={s.lora_r}, optimizer {s.optimizer}, "
        f"gradient checkpointing {'on' if plan.gradient_checkpointing else 'off'}",
        sizes_text(s),
        "",
        f"{'component':<24} {'GiB':>8}  what",
    ]
    lines += [f"{name:<24} {gib(size):>8}  {COMPONENT_HELP[name]}" for name, size in plan.components.items()]
    lines.append("")
    lines += [
        f"{'phase ' + name:<24} {gib(size):>8}  {'<- peak' if name == plan.peak_phase else ''}".rstrip()
        for name, size in plan.phases.items()
    ]
    lines += [
        f"{'peak allocated':<24} {gib(plan.peak_allocated_bytes):>8}  persistent + largest phase",
        f"{'peak':<24} {gib(plan.peak_bytes):>8}  + allocator slack + CUDA context",
        "",
        f"verdict for {sizes_text(s)}; {precision_text(plan)}:",
        "fits: " + ", ".join(f"{gb} GB {'yes' if fits else 'no'}" for gb, fits in plan.verdicts.items()),
    ]
    if plan.limits:
        lines += ["", f"largest that fits {s.gpu_memory_gb:g} GB, each with the other settings as above:"]
        lines += [
            f"  {name:<22} {_limit(plan, name):>8}  {LIMIT_HELP[s.stage][name]}".rstrip() for name in plan.limits
        ]
        if any(plan.limits[name] == plan.limit_bounds.get(name) for name in plan.limits):
            lines.append("  (+: all fit up to the search's end, the model's context for lengths)")
    return "\n".join(lines)


WIDTH = 119
"""Line width of the config summary."""

LIMIT_HELP = {
    "ppo": {
        "mini_batch_size": "sequences per forward/backward pass (training and rollout)",
        "generation_batch_size": "sequences generated at once (the rollout batch_size at least as large)",
        "response_length": "response tokens per sequence",
    },
    "sft": {"batch_size": "sequences per step", "sequence_length": "tokens per sequence"},
    "reward": {"batch_size": "pairs (chosen + rejected) per step", "sequence_length": "tokens per sequence"},
    "dpo": {"batch_size": "pairs (chosen + rejected) per step", "sequence_length": "tokens per sequence"},
} | {
    stage: {
        "batch_size": "completions per forward/backward pass (generation batch: steps_per_generation times it)",
        "num_generations": "completions per prompt, prompts per generation as above (the batches grow with it)",
        "response_length": "completion tokens per sequence",
    }
    for stage in GROUP_STAGES
}
"""What each limit (`MemoryPlan.limits`) counts, per stage."""


def format_recipe_run(run: RecipeRun, overrides: dict[str, Any], plan: MemoryPlan | None = None) -> str:
    """What a `--config` plan used: the config's values, the recipe defaults it relied on, the flags that overrode
    them, how the lengths were derived, the options it could not plan, and (given the plan) its limits in the
    recipe's option names."""
    lines = [f"config {run.source} ({run.recipe} recipe, stage {run.stage})"]
    if run.from_config:
        lines.append("  values used: " + _options(run.from_config))
    if run.from_defaults:
        lines.append("  recipe defaults used: " + _options(run.from_defaults))
    if overrides:
        lines.append("  overridden by flags: " + _options(overrides))
    lines += [f"  {note}" for note in run.notes]
    if run.not_planned:
        lines.append("  not planned (changes memory; the plan leaves it out): " + "; ".join(run.not_planned))
    if plan is not None and plan.limits:
        lines.append("  limits in the recipe's options: " + _options(recipe_limits(run, plan.limits)))
    return "\n".join(textwrap.fill(line, WIDTH, subsequent_indent="    ") for line in lines)


def plan_json(plan: MemoryPlan, run: RecipeRun | None = None, overrides: dict[str, Any] | None = None) -> str:
    """`plan.to_dict()` as one line of JSON; with a recipe config, plus `config` (what it used, see `RecipeRun`, and
    the `flags` that overrode it) and `recipe_limits` (the limits in the recipe's option names)."""
    values = plan.to_dict()
    if run is not None:
        values["config"] = run.to_dict() | {"flags": overrides or {}}
        values["recipe_limits"] = recipe_limits(run, plan.limits)
    return json.dumps(values)


def sizes_text(s: PlanSettings) -> str:
    """The batches and lengths a plan of `s` is for, in words."""
    if s.stage == "ppo":
        generation = min(s.generation_batch_size or s.batch_size, s.batch_size)
        return (
            f"batch {s.batch_size}, mini batch {min(s.mini_batch_size, s.batch_size)}, generation batch {generation}, "
            f"{s.query_length} query + {s.response_length} response tokens"
        )
    if s.stage in GROUP_STAGES:
        generation = s.group_generation_batch
        prompts = generation // s.num_generations
        return (
            f"batch {s.batch_size} completions, generation batch {generation} ({prompts} prompt{'s' * (prompts != 1)} "
            f"x {s.num_generations} generations), reward batch {min(s.reward_batch_size, generation)}, "
            f"{s.query_length} prompt + {s.response_length} completion tokens"
        )
    if s.stage == "sft":
        return f"batch {s.batch_size} sequences of {s.sequence_length} tokens"
    return f"batch {s.batch_size} pairs (chosen + rejected) of {s.sequence_length} tokens each"


def precision_text(plan: MemoryPlan) -> str:
    """The weights' and activations' precision, short."""
    s = plan.settings
    if s.quantization in ("8bit", "4bit"):
        double = " + double quant" if s.double_quant else ""
        return f"{s.quantization}{double} weights, {plan.activation_precision} activations"
    return f"{'float32' if s.quantization == 'none' else s.quantization} weights and activations"


def weights_text(plan: MemoryPlan) -> str:
    """The weights' precision and that of the activations, in words."""
    s = plan.settings
    text = s.quantization + (" + double quant" if s.double_quant else "")
    if s.quantization in ("8bit", "4bit"):
        text += f" (non-quantized weights and activations {plan.activation_precision})"
    elif s.quantization == "none":
        text += " (float32)"
    return text


def _limit(plan: MemoryPlan, name: str) -> str:
    value, bound = plan.limits[name], plan.limit_bounds.get(name)
    if value == 0:
        return "none"  # even 1 does not fit
    return f"{value:,}" + ("+" if value == bound else "")


def _options(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={show_value(value)}" for name, value in values.items())
