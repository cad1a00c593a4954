"""The planner's answer as a readable table (GiB) or as one JSON object."""

from __future__ import annotations

import json

from stackrlhf.planner.estimate import COMPONENT_HELP, GIB, MemoryPlan


def gib(num_bytes: int) -> str:
    """Bytes as GiB with two decimals."""
    return f"{num_bytes / GIB:.2f}"


def format_plan(plan: MemoryPlan) -> str:
    """A text table: settings, GiB per component, phases, peak, a verdict per card and the largest batch."""
    s = plan.settings
    weights = s.quantization + (" + double quant" if s.double_quant else "")
    if s.quantization in ("8bit", "4bit") and not s.upcast_non_quantized:
        weights += " (non-quantized weights kept 16-bit)"
    lines = [
        f"model {s.model}: {plan.params_total:,} parameters ({plan.trainable_params:,} trainable)",
        f"stage {s.stage}, design {s.design if s.stage == 'ppo' else '-'}, weights {weights}, "
        f"LoRA r={s.lora_r}, optimizer {s.optimizer}, "
        f"gradient checkpointing {'on' if plan.gradient_checkpointing else 'off'}",
        f"batch {s.batch_size}, mini batch {min(s.mini_batch_size, s.batch_size)}, "
        f"{s.query_length} query + {s.response_length} response tokens",
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
        "fits: " + ", ".join(f"{gb} GB {'yes' if fits else 'no'}" for gb, fits in plan.verdicts.items()),
        f"largest batch_size that fits {s.gpu_memory_gb:g} GB: {plan.max_batch_size}",
    ]
    return "\n".join(lines)


def plan_json(plan: MemoryPlan) -> str:
    """`plan.to_dict()` as one line of JSON."""
    return json.dumps(plan.to_dict())
