"""DPO, StackLLaMA 2 (offline demo with no arguments: starts from the cached SFT stage).

Same as `stackrlhf dpo`; `--help` explains every option."""

from stackrlhf.recipes import dpo
from stackrlhf.recipes.runner import run_recipe

if __name__ == "__main__":
    raise SystemExit(run_recipe(dpo.make_parser(prog="dpo_stackllama.py"), dpo.main))
