"""Evaluate a PPO policy against its reference on held-out prompts: mean rewards and win rate, saved as JSON.

    python recipes/evaluate_policy.py --policy_path outputs/ppo

Same as `stackrlhf evaluate`; `--help` explains every option."""

from stackrlhf.recipes import evaluate
from stackrlhf.recipes.runner import run_recipe

if __name__ == "__main__":
    raise SystemExit(run_recipe(evaluate.make_parser(prog="evaluate_policy.py"), evaluate.main))
