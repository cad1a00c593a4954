"""Evaluating a PPO policy against its reference (the same base with the adapter disabled)."""

import json

import pytest

from stackrlhf.errors import ConfigError
from stackrlhf.recipes import evaluate, ppo
from stackrlhf.recipes.runner import parse_args
from tests.recipes.test_ppo import QUICK

EVAL = [
    "--num_prompts",
    "6",
    "--max_new_tokens",
    "8",
    "--batch_size",
    "4",
    "--max_samples",
    "300",
    "--eval_samples",
    "60",
]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, reward_dirs):
    out = tmp_path_factory.mktemp("ppo")
    ppo.train_ppo(*parse_args(ppo.make_parser(), [*QUICK, "--reward_adapter", str(reward_dirs["adapter"]),
                                                  "--output_dir", str(out)])[:5])  # fmt: skip
    return out


def run(args):
    return evaluate.evaluate_policy(*parse_args(evaluate.make_parser(), args)[:2])


def test_report_uses_the_runs_reward_and_is_saved(policy_dir):
    report = run(["--policy_path", str(policy_dir), *EVAL])
    assert report["num_prompts"] == 6 and 0.0 <= report["win_rate"] <= 1.0
    assert report["num_comparisons"] == 6 * 4 == len(report["samples"])  # 4 samples per prompt by default
    assert [s["query"] for s in report["samples"][6:12]] == [s["query"] for s in report["samples"][:6]]
    assert report["reward_adapter"] is not None
    assert json.loads((policy_dir / evaluate.EVALUATION_FILE).read_text())["win_rate"] == report["win_rate"]
    sample = report["samples"][0]
    assert sample["policy"] != sample["reference"] or sample["policy_reward"] == sample["reference_reward"]


def test_the_separate_merged_reward_model_scores_the_same(policy_dir, reward_dirs, tmp_path):
    shared = run(["--policy_path", str(policy_dir), *EVAL, "--output_file", str(tmp_path / "a.json")])
    separate = run(["--policy_path", str(policy_dir), *EVAL, "--reward_model", str(reward_dirs["merged"]),
                    "--output_file", str(tmp_path / "b.json")])  # fmt: skip
    assert separate["policy_mean_reward"] == pytest.approx(shared["policy_mean_reward"], abs=1e-4)
    assert separate["reference_mean_reward"] == pytest.approx(shared["reference_mean_reward"], abs=1e-4)


def test_one_sample_per_prompt_compares_each_prompt_once(policy_dir, tmp_path):
    report = run(["--policy_path", str(policy_dir), *EVAL, "--samples_per_prompt", "1",
                  "--output_file", str(tmp_path / "one.json")])  # fmt: skip
    assert report["num_comparisons"] == report["num_prompts"] == 6
    with pytest.raises(ConfigError, match="samples_per_prompt must be at least 1"):
        run(["--policy_path", str(policy_dir), *EVAL, "--samples_per_prompt", "0"])


def test_a_directory_without_an_adapter_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a PPO output directory"):
        run(["--policy_path", str(tmp_path), *EVAL])


def test_fewer_prompts_than_asked_says_why(policy_dir, tmp_path, capsys):
    args = ["--policy_path", str(policy_dir), *EVAL, "--num_prompts", "200", "--samples_per_prompt", "1",
            "--output_file", str(tmp_path / "all.json")]  # fmt: skip
    report = evaluate.main(*parse_args(evaluate.make_parser(), args)[:2])
    assert report["held_out_prompts"] == 60 and report["num_prompts"] == 60 - report["prompts_too_long"] < 200
    expected = (
        f"--num_prompts 200: evaluating {report['num_prompts']}, all there are: of the 60 held-out prompts "
        f"(--eval_samples), {report['prompts_too_long']} are longer than --max_prompt_length 64 tokens."
    )
    assert expected in capsys.readouterr().out
