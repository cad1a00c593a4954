"""The sentiment quick start: VADER reward offline, prompts from the bundled openings, a file or a dataset (the
prompts themselves are tested in tests/data/test_prompts.py)."""

import dataclasses
import json

import pytest

from stackrlhf.data import PromptArguments, bundled_openings
from stackrlhf.errors import ConfigError
from stackrlhf.recipes import sentiment
from stackrlhf.recipes.runner import parse_args
from stackrlhf.rewards import VaderSentimentReward
from stackrlhf.trainer.reporting import STATS_FILE, read_stats
from tests.trainer.rollout_ratio import check_recipe_rollouts

QUICK = [
    "--steps", "16", "--batch_size", "8", "--mini_batch_size", "4", "--ppo_epochs", "1",
    "--output_min_length", "4", "--output_max_length", "8", "--num_sample_prompts", "2",
    "--sample_max_new_tokens", "8",
]  # fmt: skip


def run(args):
    return sentiment.train_sentiment(*parse_args(sentiment.make_parser(), args)[:4])


def test_vader_scores_sentiment_without_a_model():
    happy, sad, flat = VaderSentimentReward()(["She was very happy and loved it.", "He was sad and hurt.", "A box."])
    assert happy > 0.5 and sad < -0.5 and flat == 0.0


def test_the_flags_are_the_prompt_arguments_and_two_of_the_recipe():
    names = [field.name for field in dataclasses.fields(sentiment.SentimentArguments)]
    assert issubclass(sentiment.SentimentArguments, PromptArguments)
    assert names == [field.name for field in dataclasses.fields(PromptArguments)] + [
        "num_heldout_prompts",
        "upcast_non_quantized",
    ]
    assert names[:6] == [
        "prompts_file", "prompts_dataset", "prompts_column", "min_prompt_chars", "query_min_length", "query_max_length"
    ]  # fmt: skip


def test_offline_run_saves_samples_before_and_after(tmp_path):
    out = tmp_path / "run"
    summary = run([*QUICK, "--output_dir", str(out)])
    assert summary["reward"] == "VADER compound sentiment" and summary["steps"] == 2
    assert [r["samples"] for r in read_stats(out / STATS_FILE)] == [8, 8]
    samples = json.loads((out / "samples.json").read_text())
    assert [s["query"] for s in samples["before"]] == bundled_openings()[:2]
    assert all(-1.0 <= s["reward"] <= 1.0 for s in samples["after"])


def test_every_rollout_comes_from_the_policy_its_step_scores(tmp_path, monkeypatch):
    """As for the PPO recipe: the ratio π_old / π_sampling of each step's rollout is 1 before its update."""
    trainers = check_recipe_rollouts(monkeypatch, sentiment)
    run([*QUICK, "--lora_dropout", "0.5", "--output_dir", str(tmp_path / "run")])
    assert len(trainers[0].log_ratios) == 2 and max(trainers[0].log_ratios) < 1e-4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompts_file", "missing.txt"], "no such file"),
        (["--prompts_dataset", "missing.jsonl"], "no such file"),
        (["--query_min_length", "4"], "query_min_length < query_max_length"),
        (["--num_heldout_prompts", "64"], "64 prompts, but 64 are held out"),
    ],
)
def test_bad_prompt_settings_are_one_clear_error(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        run([*QUICK, *extra, "--output_dir", str(tmp_path / "run")])
