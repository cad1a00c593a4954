"""`stackrlhf plan`: will this model, precision, LoRA rank, batch and sequence length fit my card?

stackrlhf plan --model EleutherAI/gpt-neox-20b --stage ppo --quantization 8bit --lora_r 16 --gpu_memory_gb 24
python -m stackrlhf.planner --model meta-llama/Llama-2-13b-hf --quantization 4bit --json
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from trl import TrlParser

from stackrlhf.planner.estimate import MemoryPlan, plan
from stackrlhf.planner.report import format_plan, plan_json
from stackrlhf.planner.settings import PlanSettings
from stackrlhf.recipes.common import add_parser, run_recipe

HELP = "Plan GPU memory before training: bytes per component, the peak, and which cards (16/24/40/80 GB) it fits."


@dataclass
class PlanArguments(PlanSettings):
    """`PlanSettings` plus the output format."""

    json: bool = field(default=False, metadata={"help": "Print one JSON object instead of the table."})

    def to_settings(self) -> PlanSettings:
        return PlanSettings(**{f.name: getattr(self, f.name) for f in fields(PlanSettings)})


def main(plan_args: PlanArguments) -> MemoryPlan:
    """Plan `plan_args` and print the table (or the JSON object); returns the plan."""
    result = plan(plan_args.to_settings())
    print(plan_json(result) if plan_args.json else format_plan(result))
    return result


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """The planner's parser, standalone or as `stackrlhf plan`."""
    return add_parser(subparsers, "plan", HELP, (PlanArguments,), {}, prog=prog)


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and plan; a bad value prints `error: ...` and returns 2."""
    return run_recipe(make_parser(prog="stackrlhf plan"), main, argv)
