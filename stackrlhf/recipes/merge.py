"""Merge a LoRA adapter into its base model and save a standalone model (safetensors) with its tokenizer.

StackLLaMA merged after each stage so the next one starts from plain weights. The base is loaded unquantized (in
`--dtype`), since adding LoRA deltas to 8-bit or 4-bit weights would round them away. Works for causal-LM adapters
(SFT, PPO policy) and sequence-classification adapters with their score head (reward models). The output appears
whole or not at all: it is written to a temporary directory and renamed into place.

    stackrlhf merge --adapter_path outputs/sft --output_dir outputs/sft-merged
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftModel
from trl import ModelConfig

from stackrlhf.atomic import write_atomically
from stackrlhf.errors import ConfigError
from stackrlhf.models.loading import check_adapter_dir, check_model_path, load_model, load_tokenizer, read_adapter
from stackrlhf.recipes import RECIPE_HELP
from stackrlhf.recipes.runner import recipe_parser, run_recipe


@dataclass
class MergeArguments:
    """What to merge and where to write it."""

    adapter_path: str | None = field(
        default=None,
        metadata={"help": "Directory of the LoRA adapter to merge (it holds adapter_config.json), e.g. outputs/sft."},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Directory for the merged model; it must not exist yet unless --overwrite is given."},
    )
    base_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Base model to merge into. Default: the base recorded in the adapter's adapter_config.json."
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Precision of the merged weights (float32, bfloat16 or float16; StackLLaMA saved float16).",
            "choices": ["float32", "bfloat16", "float16"],
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace --output_dir if it already exists."})


def check_arguments(args: MergeArguments) -> None:
    """The recipe's checks that need no model, run where the options are parsed (`--dry_run` too). Neither
    `--adapter_path` nor `--output_dir` given passes here (a dry run shows the defaults); the merge itself needs both.

    Raises:
        ConfigError: one of `--adapter_path` and `--output_dir` without the other, a missing or broken adapter, a
            missing or broken local base model, or an existing output without `--overwrite`.
    """
    if bool(args.adapter_path) != bool(args.output_dir):
        raise ConfigError("merge needs --adapter_path and --output_dir.")
    if args.adapter_path:
        check_adapter_dir(args.adapter_path, "adapter_path")
    if args.base_model_name_or_path:
        check_model_path(args.base_model_name_or_path, "base_model_name_or_path")
    if args.output_dir and Path(args.output_dir).exists() and not args.overwrite:
        raise ConfigError(f"{args.output_dir} already exists: choose another --output_dir or pass --overwrite.")


def merge_adapter(args: MergeArguments) -> Path:
    """Merge `args.adapter_path` into its base and save the result to `args.output_dir`.

    Returns:
        The output directory.

    Raises:
        ConfigError: a missing adapter, an adapter that is not LoRA, or an existing output without `overwrite`.
    """
    if not args.adapter_path or not args.output_dir:
        raise ConfigError("merge needs --adapter_path and --output_dir.")
    adapter = read_adapter(args.adapter_path)
    if adapter is None:
        raise ConfigError(f"{args.adapter_path}: no adapter_config.json, so it is not a PEFT adapter directory.")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not args.overwrite:
        raise ConfigError(f"{output_dir} already exists: choose another --output_dir or pass --overwrite.")

    model_args = ModelConfig(model_name_or_path=args.base_model_name_or_path or adapter.base_model, dtype=args.dtype)
    model = PeftModel.from_pretrained(load_model(model_args, task=adapter.task), args.adapter_path)
    merged = model.merge_and_unload()
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=adapter.tokenizer_source))

    def write(staging: Path) -> None:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    return write_atomically(output_dir.parent, output_dir.name, write)


def main(merge_args: MergeArguments) -> Path:
    """Entry point of `recipes/merge_peft_adapter.py` and `stackrlhf merge`."""
    output_dir = merge_adapter(merge_args)
    print(f"merged {merge_args.adapter_path} into its base: {output_dir}")
    return output_dir


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The recipe's parser (`MergeArguments` and run options)."""
    return recipe_parser(
        subparsers,
        "merge",
        RECIPE_HELP["merge"],
        (MergeArguments,),
        prog=prog,
        check=check_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(run_recipe(make_parser(), main))
