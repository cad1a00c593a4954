"""GRPO (or RLOO with --algorithm rloo) with TRL's trainers on one shared base model (offline demo with no arguments:
SFT, reward, then GRPO).

    python recipes/grpo_stackllama.py
    python recipes/grpo_stackllama.py --algorithm rloo
    accelerate launch recipes/grpo_stackllama.py --config llama-2-7b/grpo

Same as `stackrlhf grpo`; `--help` explains every option."""

from stackrlhf.recipes import grpo
from stackrlhf.recipes.runner import run_recipe

if __name__ == "__main__":
    raise SystemExit(run_recipe(grpo.make_parser(prog="grpo_stackllama.py"), grpo.main))
