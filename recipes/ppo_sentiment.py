"""Quick start: PPO teaches the tiny model to write positive story continuations, offline (TRL's gpt2-sentiment).

    python recipes/ppo_sentiment.py
    python recipes/ppo_sentiment.py --model_name_or_path gpt2 --reward_model lvwerra/distilbert-imdb

Same as `stackrlhf sentiment`; `--help` explains every option."""

from stackrlhf.recipes import sentiment
from stackrlhf.recipes.runner import run_recipe

if __name__ == "__main__":
    raise SystemExit(run_recipe(sentiment.make_parser(prog="ppo_sentiment.py"), sentiment.main))
