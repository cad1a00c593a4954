"""benchmarks/demo_robustness.py: the figures of a run (from a tiny PPO run and its evaluation, in process) and the
report that several invocations build together."""

import json

import numpy as np
import pytest

from stackrlhf.recipes import evaluate, ppo
from stackrlhf.recipes.runner import parse_args
from stackrlhf.trainer.reporting import STATS_FILE, read_stats
from tests.benchmarks.conftest import load_benchmark
from tests.recipes.test_evaluate import EVAL
from tests.recipes.test_ppo import QUICK


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("demo_robustness")


def test_figures_of_a_tiny_run_and_its_evaluation(bench, tmp_path, reward_dirs):
    out = tmp_path / "ppo"
    args = [*QUICK, "--steps", "20", "--reward_adapter", str(reward_dirs["adapter"]), "--output_dir", str(out)]
    ppo.train_ppo(*parse_args(ppo.make_parser(), args)[:5])
    evaluate.evaluate_policy(*parse_args(evaluate.make_parser(), ["--policy_path", str(out), *EVAL])[:2])
    log = tmp_path / "ppo.log"
    log.write_text("UserWarning: The average ratio of batch (35.00) exceeds threshold 10.00. Skipping batch.\n")

    figures = bench.run_summary(out, log) | bench.evaluation_summary(out)
    rewards = [record["reward_mean"] for record in read_stats(out / STATS_FILE)]
    assert figures["steps"] == len(rewards) == 5
    assert figures["reward_first"] == pytest.approx(rewards[0])  # 20% of 5 steps: one step each end
    assert figures["reward_last"] == pytest.approx(rewards[-1])
    assert figures["reward_gain"] == pytest.approx(rewards[-1] - rewards[0])
    assert figures["ratio_skips"] == 1
    report = json.loads((out / evaluate.EVALUATION_FILE).read_text())
    assert figures["win_rate"] == report["win_rate"] and figures["num_comparisons"] == 24
    wins = [(s["policy_reward"] > s["reference_reward"]) + 0.5 * (s["policy_reward"] == s["reference_reward"])
            for s in report["samples"]]  # fmt: skip
    assert figures["win_rate"] == pytest.approx(np.mean(wins))


def _row(recipe, seed, threads, gain, win_rate=None):
    row = {"recipe": recipe, "seed": seed, "threads": threads, "isa": "native", "steps": 40, "reward_first": 0.2,
           "reward_last": 0.2 + gain, "reward_gain": gain, "kl_last": 9.0, "ratio_skips": 0, "ppo_seconds": 60.0,
           "load_average_1min": 1.0}  # fmt: skip
    if recipe == "ppo_stackllama":
        row |= {"num_prompts": 100, "num_comparisons": 400, "policy_mean_reward": 0.9,
                "reference_mean_reward": 0.7, "win_rate": win_rate, "eval_seconds": 20.0}  # fmt: skip
    return row


def test_invocations_side_by_side_build_one_report(bench, tmp_path):
    results = tmp_path / "demo_robustness"
    machine = {"cpu": "Test CPU", "cpu_count": 2, "avx512_bf16": False, "python": "3.11"}
    bench.save(results, _row("ppo_stackllama", 0, 1, 0.30, 0.80), machine, "python a")
    bench.save(results, _row("ppo_stackllama", 0, 2, 0.10, 0.60), machine, "python b")
    bench.save(results, _row("ppo_sentiment", 0, 1, 0.40), machine, "python a")
    rows = bench.save(results, _row("ppo_stackllama", 0, 1, 0.25, 0.70), machine, "python a")  # the same run again

    assert [(r["recipe"], r["threads"], r["reward_gain"]) for r in rows] == [
        ("ppo_sentiment", 1, 0.40), ("ppo_stackllama", 1, 0.25), ("ppo_stackllama", 2, 0.10)
    ]  # fmt: skip
    saved = json.loads(results.with_suffix(".json").read_text())
    assert saved["rows"] == rows and saved["commands"] == ["python b", "python a"]
    report = results.with_suffix(".md").read_text()
    assert "Machine: Test CPU, 2 CPUs, AVX512-BF16 False" in report
    assert "| 0 | 1 | native | 0.200 | 0.450 | 0.250 | 9.0 | 0.900 / 0.700 | 0.700 (400) | 0 | 60 | 20 | 1.0 |" in (
        report
    )
    assert "Smallest reward gain 0.100, smallest win rate 0.600, ratio skips 0." in report
    assert "| 0 | 1 | native | 0.200 | 0.600 | 0.400 | 9.0 | 0 | 60 | 1.0 |" in report
