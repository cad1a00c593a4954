"""The recipes: one module per command (`make_parser`, `main`, and the function that does the work), and what each
command is for, here, so that `stackrlhf --help` lists them without importing any of them."""

RECIPE_HELP = {
    "sft": "Supervised fine-tuning (StackLLaMA stage 1) with TRL's SFTTrainer, LoRA and 8/4-bit loading.",
    "reward": "Reward modelling (StackLLaMA stage 2) with TRL's RewardTrainer, LoRA and 8/4-bit loading.",
    "merge": "Merge a LoRA adapter into its base model and save a standalone safetensors model.",
    "ppo": "PPO (StackLLaMA stage 3) on one shared base: LoRA policy + value head, reference = adapter off, reward = "
    "a second adapter (or a separate --reward_model). No arguments: a complete offline demo.",
    "sentiment": "Quick start: PPO makes a small LM write positive text (TRL's gpt2-sentiment example). Offline by "
    "default: stories260K continues story openings, VADER scores the sentiment; --reward_model takes a classifier.",
    "dpo": "DPO (StackLLaMA 2) with TRL's DPOTrainer on the reward recipe's preference pairs: LoRA policy, reference "
    "= adapter off, 8/4-bit loading. No arguments: an offline run from the cached SFT stage.",
    "grpo": "GRPO or RLOO (--algorithm rloo) with TRL's trainers on one shared base: LoRA policy, reference = "
    "adapter off, reward = a second adapter (or a separate --reward_model). No arguments: a complete offline demo.",
    "evaluate": "Score a PPO policy and its reference (adapter disabled) on held-out prompts with the reward model: "
    "mean rewards and the policy's win rate, saved as JSON.",
    "stages": "Build the offline SFT, merge and reward stages (tiny/sft, tiny/reward) that a bare "
    "`ppo_stackllama.py` run uses, once, into the cache (a run builds them itself when they are missing).",
    "convert-llama2c": "Convert a llama2.c checkpoint and tokenizer (default: the bundled stories260K) to a "
    "transformers model.",
}
"""Command name -> the one-line description its `--help` and `stackrlhf --help` show."""
