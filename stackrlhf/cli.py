"""The `stackrlhf` command: one subcommand per recipe, each sharing the recipe's own parser and `main`.

stackrlhf sft [--config llama-2-7b/sft] [flags]
stackrlhf reward ...
stackrlhf ppo [--config llama-2-7b/ppo] [flags]
stackrlhf plan --model EleutherAI/gpt-neox-20b --stage ppo --quantization 8bit --gpu_memory_gb 24
stackrlhf plan --config llama-2-7b/ppo --model meta-llama/Llama-2-7b-hf
stackrlhf configs [llama-2-7b/ppo [--show]]
stackrlhf merge --adapter_path outputs/sft --output_dir outputs/sft-merged
stackrlhf convert-llama2c --checkpoint model.bin --tokenizer tok512.bin --output_dir out/

Only the command that runs is imported: `stackrlhf --help`, `stackrlhf plan` and `stackrlhf configs` load no training
code, and a recipe's `--help` is kept in the cache (keyed by the package's sources, the libraries' versions and the
terminal width), so it answers without importing TRL after the first time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType

from stackrlhf.errors import StackRLHFError
from stackrlhf.recipes import RECIPE_HELP

RECIPE_MODULES = {
    "sft": "stackrlhf.recipes.sft",
    "reward": "stackrlhf.recipes.reward",
    "merge": "stackrlhf.recipes.merge",
    "ppo": "stackrlhf.recipes.ppo",
    "sentiment": "stackrlhf.recipes.sentiment",
    "dpo": "stackrlhf.recipes.dpo",
    "grpo": "stackrlhf.recipes.grpo",
    "evaluate": "stackrlhf.recipes.evaluate",
    "stages": "stackrlhf.recipes.stages",
    "plan": "stackrlhf.planner.cli",
    "configs": "stackrlhf.configs.command",
    "convert-llama2c": "stackrlhf.recipes.convert_llama2c",
}

LIGHT_COMMANDS = ("plan", "configs")
"""Commands that import neither torch nor the training stack: they parse their own options and answer at once."""

HELP_LIBRARIES = ("trl", "transformers", "peft", "accelerate", "datasets")
"""The libraries whose dataclasses a recipe's `--help` shows."""


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


def make_parser() -> argparse.ArgumentParser:
    """The top-level parser: one subcommand per command, with its description (no recipe is imported)."""
    from stackrlhf.configs.command import HELP as CONFIGS_HELP
    from stackrlhf.planner.cli import HELP as PLAN_HELP

    descriptions = RECIPE_HELP | {"plan": PLAN_HELP, "configs": CONFIGS_HELP}
    parser = argparse.ArgumentParser(
        prog="stackrlhf", description="StackLLaMA-style RLHF on one GPU: SFT, reward model, PPO, on top of TRL."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in RECIPE_MODULES:
        subparsers.add_parser(name, help=descriptions[name], add_help=False)
    return parser


def recipe_help(name: str) -> str:
    """The `--help` text of recipe `name`: from the cache when the package, the libraries and the terminal width are
    those it was written with, else built from the recipe's parser (and cached)."""
    package = Path(__file__).parent
    digest = hashlib.sha256(str(shutil.get_terminal_size().columns).encode())
    for library in HELP_LIBRARIES:
        digest.update(f"{library}={importlib.metadata.version(library)}".encode())
    for path in sorted([*package.rglob("*.py"), *(package / "configs" / "tiny").rglob("*.yaml")]):
        digest.update(path.read_bytes())
    from stackrlhf.models.bundled import cache_root

    try:
        cached = cache_root() / "help" / f"{name}-{digest.hexdigest()[:16]}.txt"
    except StackRLHFError:  # an unusable cache directory: build the text every time
        cached = None
    if cached is not None and cached.is_file():
        return cached.read_text(encoding="utf-8")
    text = RECIPES[name].make_parser(prog=f"stackrlhf {name}").format_help()
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            temporary = cached.with_name(f".{cached.name}.tmp")
            temporary.write_text(text, encoding="utf-8")
            temporary.replace(cached)
        except OSError:  # an unwritable cache only costs the next --help its speed
            pass
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run `stackrlhf COMMAND [options]`; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in RECIPE_MODULES:
        make_parser().parse_args(argv)  # prints help or a usage error for an unknown command, and exits
        make_parser().print_help()  # reached with no arguments at all
        return 0
    name, options = argv[0], argv[1:]
    if name in LIGHT_COMMANDS:
        return RECIPES[name].run(options)
    if "-h" in options or "--help" in options:
        print(recipe_help(name), end="")
        return 0
    from stackrlhf.recipes.runner import run_recipe

    return run_recipe(RECIPES[name].make_parser(prog=f"stackrlhf {name}"), RECIPES[name].main, options)


if __name__ == "__main__":
    raise SystemExit(main())
