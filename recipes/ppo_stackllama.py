"""PPO, StackLLaMA stage 3, on one shared base model (offline demo with no arguments: SFT, reward, then PPO).

    accelerate launch recipes/ppo_stackllama.py
    accelerate launch recipes/ppo_stackllama.py --config llama-2-7b/ppo

Same as `stackrlhf ppo`; `--help` explains every option."""

from stackrlhf.recipes import ppo
from stackrlhf.recipes.runner import run_recipe

if __name__ == "__main__":
    raise SystemExit(run_recipe(ppo.make_parser(prog="ppo_stackllama.py"), ppo.main))
