"""The `stackrlhf` command: one subcommand per recipe, each sharing the recipe's own parser and `main`.

stackrlhf sft [--config llama-2-7b/sft] [flags]
stackrlhf reward ...
stackrlhf ppo [--config llama-2-7b/ppo] [flags]
stackrlhf plan --model EleutherAI/gpt-neox-20b --stage ppo --quantization 8bit --gpu_memory_gb 24
stackrlhf plan --config llama-2-7b/ppo --model meta-llama/Llama-2-7b-hf
stackrlhf configs [llama-2-7b/ppo [--show]]
stackrlhf merge --adapter_path outputs/sft --output_dir outputs/sft-merged
stackrlhf convert-llama2c --checkpoint model.bin --tokenizer tok512.bin --output_dir out/

Recipe modules are imported when a command needs them: `stackrlhf plan` and `stackrlhf configs` load no training
code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

RECIPE_MODULES = {
    "sft": "stackrlhf.recipes.sft",
    "reward": "stackrlhf.recipes.reward",
    "merge": "stackrlhf.recipes.merge",
    "ppo": "stackrlhf.recipes.ppo",
    "sentiment": "stackrlhf.recipes.sentiment",
    "evaluate": "stackrlhf.recipes.evaluate",
    "stages": "stackrlhf.recipes.stages",
    "plan": "stackrlhf.planner.cli",
    "configs": "stackrlhf.configs.command",
    "convert-llama2c": "stackrlhf.recipes.convert_llama2c",
}

LIGHT_COMMANDS = ("plan", "configs")
"""Commands that import neither torch nor the training stack: they answer at once."""


class _Modules(Mapping[str, ModuleType]):
    """Subcommand name -> its module (`make_parser`, `main`), imported on first access."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self._names = dict(names)

    def __getitem__(self, name: str) -> ModuleType:
        return importlib.import_module(self._names[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


RECIPES: Mapping[str, ModuleType] = _Modules(RECIPE_MODULES)


def make_parser() -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    """The top-level parser and, by subcommand name, each recipe's parser registered under it."""
    from trl import TrlParser

    parser = argparse.ArgumentParser(
        prog="stackrlhf", description="StackLLaMA-style RLHF on one GPU: SFT, reward model, PPO, on top of TRL."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=TrlParser)
    recipe_parsers = {name: module.make_parser(subparsers) for name, module in RECIPES.items()}
    return parser, recipe_parsers


def main(argv: Sequence[str] | None = None) -> int:
    """Run `stackrlhf COMMAND [options]`; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHT_COMMANDS:  # they parse their own options, without the recipes' parsers
        return RECIPES[argv[0]].run(argv[1:])
    parser, recipe_parsers = make_parser()
    if not argv or argv[0] not in RECIPES:
        parser.parse_args(argv)  # prints help or a usage error for an unknown command, and exits
        parser.print_help()  # reached with no arguments at all
        return 0
    from stackrlhf.recipes.runner import run_recipe

    return run_recipe(recipe_parsers[argv[0]], RECIPES[argv[0]].main, argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
