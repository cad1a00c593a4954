"""Supervised fine-tuning, StackLLaMA stage 1 (offline demo with no arguments).

Same as `stackrlhf sft`; `--help` explains every option."""

from stackrlhf.recipes import sft
from stackrlhf.recipes.runner import run_recipe

if __name__ == "__main__":
    raise SystemExit(run_recipe(sft.make_parser(prog="sft_stackllama.py"), sft.main))
