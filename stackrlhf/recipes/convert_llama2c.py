"""Convert a llama2.c checkpoint and tokenizer into a transformers model directory, and print a greedy sample.

With no arguments it converts the bundled stories260K model into the cache directory (what `--model_name_or_path
stackrlhf/stories260K` loads). Any directory it writes loads with `AutoModelForCausalLM` / `AutoTokenizer`.

    stackrlhf convert-llama2c
    stackrlhf convert-llama2c --checkpoint stories15M.bin --tokenizer tokenizer.bin --output_dir models/stories15M
    python -m stackrlhf.recipes.convert_llama2c --output_dir models/stories260K
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser

from stackrlhf.models.bundled import BUNDLED_CHECKPOINT, BUNDLED_TOKENIZER
from stackrlhf.models.llama2c import convert_llama2c, convert_llama2c_cached
from stackrlhf.recipes import RECIPE_HELP
from stackrlhf.recipes.runner import recipe_parser, run_recipe

SAMPLE_TOKENS = 40
"""New tokens in the greedy sample printed after a conversion."""


@dataclass
class ConvertLlama2cArguments:
    """What to convert and where to write it."""

    checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "llama2.c float32 checkpoint (.bin, legacy version 0 or version 1 'ak42' format), e.g. "
            "stories15M.bin. Default: the bundled stories260K.bin."
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "llama2.c tokenizer file with the checkpoint's vocabulary (tokenizer.bin for the 32000-token "
            "Llama 2 vocabulary, tok512.bin for stories260K). Default: the bundled tok512.bin."
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory for the transformers model and tokenizer; it must be empty, absent or an earlier "
            "conversion (then replaced). Default: a directory under the stackrlhf cache ($STACKRLHF_CACHE, else "
            "$XDG_CACHE_HOME/stackrlhf or ~/.cache/stackrlhf), reused while the inputs are unchanged."
        },
    )


def main(args: ConvertLlama2cArguments) -> Path:
    """Entry point of `stackrlhf convert-llama2c`: convert, then print the output directory and a greedy sample.

    Returns:
        The directory holding the converted model and tokenizer.
    """
    checkpoint = args.checkpoint or BUNDLED_CHECKPOINT
    tokenizer = args.tokenizer or BUNDLED_TOKENIZER
    if args.output_dir is None:
        output_dir = convert_llama2c_cached(checkpoint, tokenizer)
    else:
        output_dir = convert_llama2c(checkpoint, tokenizer, args.output_dir)
    print(f"converted {checkpoint} and {tokenizer} to {output_dir}")
    print(f"greedy sample: {_greedy_sample(output_dir)}")
    return output_dir


def _greedy_sample(model_dir: Path) -> str:
    """Greedy continuation of BOS alone (`SAMPLE_TOKENS` new tokens), as one line of text."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    input_ids = torch.tensor([[tokenizer.bos_token_id]])
    with torch.no_grad():
        output = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=SAMPLE_TOKENS
        )
    return " ".join(tokenizer.decode(output[0], skip_special_tokens=True).split())


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """The recipe's parser (`ConvertLlama2cArguments`), standalone or as `stackrlhf convert-llama2c`."""
    return recipe_parser(
        subparsers,
        "convert-llama2c",
        RECIPE_HELP["convert-llama2c"],
        (ConvertLlama2cArguments,),
        prog=prog,
    )


if __name__ == "__main__":
    raise SystemExit(run_recipe(make_parser(), main))
