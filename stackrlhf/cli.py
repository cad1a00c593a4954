"""The `stackrlhf` command: one subcommand per recipe, each sharing the recipe's own parser and `main`.

stackrlhf sft [--config recipes/configs/sft_llama2_7b.yaml] [flags]
stackrlhf reward ...
stackrlhf ppo [--config recipes/configs/ppo_llama2_7b.yaml] [flags]
stackrlhf plan --model EleutherAI/gpt-neox-20b --stage ppo --quantization 8bit --gpu_memory_gb 24
stackrlhf merge --adapter_path outputs/sft --output_dir outputs/sft-merged
stackrlhf convert-llama2c --checkpoint model.bin --tokenizer tok512.bin --output_dir out/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trl import TrlParser

from stackrlhf.planner import cli as planner_cli
from stackrlhf.recipes import convert_llama2c, evaluate, merge, ppo, reward, sentiment, sft, stages
from stackrlhf.recipes.common import run_recipe

RECIPES = {
    "sft": sft,
    "reward": reward,
    "merge": merge,
    "ppo": ppo,
    "sentiment": sentiment,
    "evaluate": evaluate,
    "stages": stages,
    "plan": planner_cli,
    "convert-llama2c": convert_llama2c,
}


def make_parser() -> tuple[argparse.ArgumentParser, dict[str, TrlParser]]:
    """The top-level parser and, by subcommand name, each recipe's parser registered under it."""
    parser = argparse.ArgumentParser(
        prog="stackrlhf", description="StackLLaMA-style RLHF on one GPU: SFT, reward model, PPO, on top of TRL."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=TrlParser)
    recipe_parsers = {name: module.make_parser(subparsers) for name, module in RECIPES.items()}
    return parser, recipe_parsers


def main(argv: Sequence[str] | None = None) -> int:
    """Run `stackrlhf COMMAND [options]`; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, recipe_parsers = make_parser()
    if not argv or argv[0] not in RECIPES:
        parser.parse_args(argv)  # prints help or a usage error for an unknown command, and exits
        parser.print_help()  # reached with no arguments at all
        return 0
    return run_recipe(recipe_parsers[argv[0]], RECIPES[argv[0]].main, argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
