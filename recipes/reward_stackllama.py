"""Reward modelling, StackLLaMA stage 2 (offline demo with no arguments).

Same as `stackrlhf reward`; `--help` explains every option."""

from stackrlhf.recipes import reward
from stackrlhf.recipes.runner import run_recipe

if __name__ == "__main__":
    raise SystemExit(run_recipe(reward.make_parser(prog="reward_stackllama.py"), reward.main))
