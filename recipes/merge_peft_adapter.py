"""Merge a LoRA adapter into its base model and save a standalone model.

Same as `stackrlhf merge`; `--help` explains every option."""

from stackrlhf.recipes import merge
from stackrlhf.recipes.runner import run_recipe

if __name__ == "__main__":
    raise SystemExit(run_recipe(merge.make_parser(prog="merge_peft_adapter.py"), merge.main))
