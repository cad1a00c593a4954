"""benchmarks/compare_algorithms.py on a real smoke run (DPO, `--quick`, one seed: the offline pipeline's recipes,
`stackrlhf evaluate` and `stackrlhf plan` in their own processes), then its aggregation and KL measurement on that
run's outputs."""

import contextlib
import io
import json
import math
import shutil
import statistics

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.benchmarks.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("compare_algorithms")


@pytest.fixture(scope="module")
def smoke(bench, tmp_path_factory):
    """One quick DPO run, evaluated and planned, with its report in a temporary results folder, and what it printed."""
    root = tmp_path_factory.mktemp("compare")
    threads, printed = torch.get_num_threads(), io.StringIO()
    argv = ["--algorithms", "dpo", "--quick", "--seeds", "1", "--eval_prompts", "8"]
    try:
        with contextlib.redirect_stdout(printed):
            result = bench.main([*argv, "--work_dir", str(root / "work"), "--output_dir", str(root / "results")])
    finally:
        torch.set_num_threads(threads)
    return root, result, printed.getvalue()


@pytest.mark.subprocess
def test_a_quick_run_reports_what_its_outputs_say(smoke, bench):
    root, result, printed = smoke
    (run,) = result["runs"]
    output_dir = root / "work" / "dpo_s0"
    summary = json.loads((output_dir / "stackrlhf_summary.json").read_text())
    evaluation = json.loads((output_dir / "evaluation.json").read_text())
    assert run["steps"] == summary["steps"] == bench.QUICK_STEPS and run["pairs"] == summary["pairs_seen"] > 0
    assert run["train_seconds"] == summary["train_seconds"] > 0 and run["process_seconds"] > run["train_seconds"]
    assert run["num_prompts"] == evaluation["num_prompts"] == 8
    assert run["policy_reward"] == evaluation["policy_mean_reward"]
    assert run["reward_gain"] == pytest.approx(evaluation["policy_mean_reward"] - evaluation["reference_mean_reward"])
    assert run["gain_per_second"] == pytest.approx(run["reward_gain"] / run["train_seconds"])
    assert run["win_rate"] == evaluation["win_rate"] and run["kl_per_token"] >= 0 and run["tokens"] > 0
    assert evaluation["reward_adapter"] == result["reward_adapter"]
    assert run["distinct_2"] == bench.distinct_2([sample["policy"] for sample in evaluation["samples"]])

    plans = result["planner"]["dpo"]
    assert set(plans) == set(bench.PLAN_MODELS)
    assert 0 < plans["7B"]["peak_bytes"] < plans["20B"]["peak_bytes"]
    assert plans["7B"]["settings"]["stage"] == "dpo"

    results = root / "results"
    assert json.loads((results / "compare_algorithms.json").read_text())["runs"] == result["runs"]
    assert (results / "compare_algorithms.png").stat().st_size > 10_000
    md = (results / "compare_algorithms.md").read_text()
    table = bench.results_table(result["aggregate"], result["planner"])
    assert table in md and table in printed
    assert md.count("\n| DPO | 1 |") == 1 and f"{run['win_rate']:.3f} ± 0.000" in table
    assert result["machine"]["torch_threads_per_run"] == 1 and result["machine"]["git"] in md


@pytest.mark.subprocess
def test_aggregation_is_the_mean_and_sample_std_over_seeds(smoke, bench):
    (run,) = smoke[1]["runs"]  # the real run, and a second seed made from it
    second = run | {"seed": 1, "win_rate": run["win_rate"] + 0.25, "train_seconds": run["train_seconds"] * 2}
    table = bench.aggregate([run, second])
    row = table["dpo"]
    assert row["seeds"] == [0, 1] and row["steps"] == bench.QUICK_STEPS
    assert row["win_rate"]["mean"] == pytest.approx(run["win_rate"] + 0.125)
    assert row["win_rate"]["std"] == pytest.approx(statistics.stdev([run["win_rate"], second["win_rate"]]))
    assert row["train_seconds"]["mean"] == pytest.approx(1.5 * run["train_seconds"])
    assert row["kl_per_token"] == {"mean": run["kl_per_token"], "std": 0.0, "n": 2}

    other = {**row, "win_rate": {"mean": row["win_rate"]["mean"] + 1, "std": 0.0, "n": 2}}
    lines = bench.findings({"dpo": row, "ppo": other})
    assert any(line.startswith("highest win rate: PPO") for line in lines)


@pytest.mark.subprocess
def test_the_kl_is_zero_when_the_adapter_does_nothing(smoke, bench, tmp_path):
    root, result, _ = smoke
    trained = root / "work" / "dpo_s0"
    samples = json.loads((trained / "evaluation.json").read_text())["samples"]
    assert bench.token_kl(trained, samples)["kl_per_token"] == pytest.approx(result["runs"][0]["kl_per_token"])

    inert = tmp_path / "inert"
    shutil.copytree(trained, inert)
    weights = inert / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()}, weights)
    kl = bench.token_kl(inert, samples)
    assert kl["tokens"] == result["runs"][0]["tokens"] and kl["kl_per_token"] == pytest.approx(0.0, abs=1e-7)


def test_distinct_2_is_low_for_a_response_that_loops_on_a_phrase(bench):
    loop = "I don't know what I don't know what I don't know"  # 10 bigrams, 4 distinct
    assert bench.distinct_2([loop]) == pytest.approx(0.4)
    assert bench.distinct_2([loop, "a fresh answer with no repeats", "one"]) == pytest.approx(0.7)
    assert math.isnan(bench.distinct_2(["", "one"]))  # no bigram at all
