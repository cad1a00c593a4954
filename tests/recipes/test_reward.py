import json

import pytest

from stackrlhf.recipes import reward
from stackrlhf.recipes.runner import parse_args
from stackrlhf.rewards.scorers import RewardScorer
from stackrlhf.trainer.reporting import SUMMARY_FILE

QUICK = ["--max_steps", "6", "--max_samples", "120", "--eval_samples", "24", "--max_length", "256"]


@pytest.fixture(scope="module")
def trained_reward_dir(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("reward")
    summary = reward.main(*parse_args(reward.make_parser(), [*QUICK, "--output_dir", str(output_dir)]))
    return output_dir, summary


def test_reward_recipe_saves_adapter_with_score_head_and_accuracy(trained_reward_dir):
    output_dir, summary = trained_reward_dir
    adapter_config = json.loads((output_dir / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_CLS"
    assert "score" in adapter_config["modules_to_save"]
    saved = json.loads((output_dir / SUMMARY_FILE).read_text())
    assert saved == summary
    assert 0.0 <= saved["eval_accuracy"] <= 1.0
    assert saved["eval_rows"] == 24


def test_reward_with_no_held_out_pairs_skips_evaluation(tmp_path, capsys):
    argv = [*QUICK, "--max_steps", "2", "--eval_samples", "0", "--output_dir", str(tmp_path)]
    summary = reward.main(*parse_args(reward.make_parser(), argv))
    assert summary["eval_rows"] == 0 and summary["eval_accuracy"] is None and summary["eval_mean_margin"] is None
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == summary
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert "evaluation skipped (--eval_samples 0)" in capsys.readouterr().out


def test_scorer_reloads_the_saved_reward_model(trained_reward_dir):
    output_dir, _ = trained_reward_dir
    scorer = RewardScorer.from_pretrained(str(output_dir), batch_size=2)
    texts = ["Question: Can you help me?\n\nAnswer: Sure, happy to help.", "Question: Hi\n\nAnswer: No.", "x" * 2000]
    scores = scorer(texts)
    assert len(scores) == 3 and all(isinstance(score, float) for score in scores)
    assert scores == pytest.approx(RewardScorer.from_pretrained(str(output_dir), batch_size=3)(texts), abs=1e-5)
    assert scores[0] != scores[1]


def test_pairwise_accuracy_comes_from_the_scores(trained_reward_dir):
    output_dir, _ = trained_reward_dir
    scorer = RewardScorer.from_pretrained(str(output_dir))
    a, b = "Question: Hi\n\nAnswer: Hello there.", "Question: Hi\n\nAnswer: Go away."
    higher, lower = (a, b) if scorer([a])[0] > scorer([b])[0] else (b, a)
    metrics = reward.evaluate_pairwise_accuracy(scorer, [higher, lower], [lower, higher])
    assert metrics["accuracy"] == 0.5 and metrics["num_pairs"] == 2
