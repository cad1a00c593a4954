"""benchmarks/memory_depth_sweep.py: the least-squares fit and full-depth extrapolation, and its `--quick` run (a
tiny 8-bit GPT-NeoX, PPO at 1, 2 and 3 blocks, tracked on the CPU) end to end, whose extrapolation to the config's
4 blocks is checked against a run at 4 blocks."""

import json

import pytest

from tests.benchmarks.conftest import load_benchmark


@pytest.fixture(scope="module")
def sweep():
    yield from load_benchmark("memory_depth_sweep")


def test_fit_line(sweep):
    exact = sweep.fit_line([1, 2, 3], [10.0, 13.0, 16.0])
    assert exact["a"] == pytest.approx(7.0) and exact["b"] == pytest.approx(3.0)
    assert exact["residuals"] == pytest.approx([0.0, 0.0, 0.0])
    assert sweep.extrapolate(exact, 40) == pytest.approx(127.0)
    noisy = sweep.fit_line([1, 2, 3], [10.0, 14.0, 16.0])  # by hand: b = (-1 * -10/3 + 1 * 8/3) / 2 = 3
    assert noisy["b"] == pytest.approx(3.0) and noisy["a"] == pytest.approx(40 / 3 - 6)
    assert sum(noisy["residuals"]) == pytest.approx(0.0)
    assert noisy["residuals"] == pytest.approx([-1 / 3, 2 / 3, -1 / 3])
    single = sweep.fit_line([2], [5.0])
    assert single["b"] is None and sweep.extrapolate(single, 10) is None
    with pytest.raises(ValueError, match="as many"):
        sweep.fit_line([1, 2], [1.0])


def test_summary_takes_the_largest_extrapolated_phase(sweep):
    """At 1-2 blocks `backward` is the largest phase, but `generation` grows faster: at 10 blocks it dominates."""
    config = sweep.SweepConfig("EleutherAI/gpt-neox-20b", "8bit", "ppo", layers=(1, 2))

    def case(layers, backward, generation):
        phases = {"backward": {"peak_bytes": backward}, "generation": {"peak_bytes": generation}}
        return {"config": config.label, "layers": layers,
                "tracked": {"peak_bytes": max(backward, generation), "phases": phases}}  # fmt: skip

    cases = [case(1, 200, 110), case(2, 210, 140), {"config": config.label, "layers": 3, "error": "boom"}]
    planner = {k: {"peak_allocated_bytes": 400, "peak_phase": "training", "persistent_bytes": 100,
                   "phases": {"training": 150, "rollout": 10, "generation": 200}} for k in (1, 2, 10)}  # fmt: skip
    summary = sweep.summarize_config(config, cases, planner, full_depth=10)
    assert summary["layers"] == [1, 2] and summary["errors"] == {3: "boom"}
    assert summary["fit"]["b"] == pytest.approx(10.0)  # the overall peak is backward's at both depths
    assert summary["phase_fits"]["generation"]["full_depth"] == pytest.approx(80 + 30 * 10)
    assert summary["extrapolated_dominant_phase"] == "generation"
    assert summary["extrapolated_peak_bytes"] == pytest.approx(380.0)
    assert summary["extrapolated_overall_fit_bytes"] == pytest.approx(290.0)
    assert summary["planner_full_over_extrapolated"] == pytest.approx(400 / 380)
    comparison = summary["planner_phases_vs_extrapolated"]
    assert comparison["generation"] == {"planner": 300, "tracked": 380.0, "planner_minus_tracked": -80.0}
    assert comparison["training"]["tracked"] == pytest.approx(290.0)  # backward's extrapolation


def test_select(sweep):
    import argparse

    args = argparse.Namespace(models="7b,EleutherAI/gpt-neox-20b", quantizations="8bit", stages="ppo",
                              query_length=None, layers="1,2,4", int8_threshold=None, no_upcast=False)  # fmt: skip
    configs = sweep.select(args)
    assert [c.label for c in configs] == ["gpt-neox-20b 8bit ppo 128+128", "Llama-2-7b-hf 8bit ppo 128+128"]
    assert all(c.layers == (1, 2, 4) for c in configs)
    args.models, args.quantizations, args.int8_threshold = "7b", None, 0.0
    assert [c.label for c in sweep.select(args)] == ["Llama-2-7b-hf 8bit threshold 0 ppo 128+128"]
    assert sweep.select(args)[0].case(1).int8_threshold == 0.0
    args.int8_threshold, args.no_upcast, args.quantizations = None, True, "8bit"
    (config,) = sweep.select(args)
    assert config.label == "Llama-2-7b-hf 8bit 16-bit non-quantized ppo 128+128"
    assert config.case(1).upcast_non_quantized is False and config.plan_settings()["upcast_non_quantized"] is False


def test_quick_sweep_end_to_end(sweep, tmp_path):
    out, models = tmp_path / "out", tmp_path / "models"
    assert sweep.main(["--quick", "--out", str(out), "--model-dir", str(models)]) == 0
    payload = json.loads((out / "memory_depth_sweep.json").read_text())
    assert (out / "memory_depth_sweep.md").read_text().startswith("# Peak memory by depth")
    assert (out / "memory_depth_sweep.png").stat().st_size > 0
    assert payload["environment"]["torch_threads"] >= 1 and payload["environment"]["bitsandbytes"]

    cases = payload["cases"]
    assert [c["layers"] for c in cases] == [1, 2, 3] and all("tracked" in c for c in cases)
    for case in cases:
        phases = case["tracked"]["phases"]
        assert set(phases) == {"generation", "rollout", "training_forward", "loss", "backward", "optimizer"}
        assert case["tracked"]["peak_bytes"] == max(stats["peak_bytes"] for stats in phases.values())
        assert case["tracked"]["baseline_bytes"] < case["tracked"]["peak_bytes"]
    peaks = [c["tracked"]["peak_bytes"] for c in cases]
    assert peaks[0] < peaks[1] < peaks[2]

    (summary,) = payload["configs"]
    assert summary["full_depth"] == 4
    assert max(abs(r) for r in summary["fit"]["residuals"]) <= 0.01 * peaks[-1]  # linear in the depth
    assert summary["extrapolated_peak_bytes"] >= peaks[-1]
    assert set(payload["planner"][summary["config"]]) == {"1", "2", "3", "4"}
    assert 0.5 < summary["planner_full_over_extrapolated"] < 2

    # The extrapolation to the config's own depth against a run at that depth.
    config = sweep._quick_config(models)
    deepest = sweep.run_case(config, 4, models)["tracked"]
    assert deepest["peak_bytes"] == pytest.approx(summary["extrapolated_overall_fit_bytes"], rel=0.01)
    for name, fit in summary["phase_fits"].items():
        assert deepest["phases"][name]["peak_bytes"] == pytest.approx(fit["full_depth"], rel=0.01)


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_sft_and_reward_cases_are_tracked_by_phase(sweep, tmp_path, stage):
    config = sweep.dataclasses.replace(sweep._quick_config(tmp_path), stage=stage, layers=(1,))
    case = sweep.run_case(config, 1, tmp_path)
    phases = case["tracked"]["phases"]
    assert set(phases) == {"forward", "backward", "optimizer"}
    assert case["tracked"]["peak_bytes"] == max(stats["peak_bytes"] for stats in phases.values())
    # The backward pass holds the LoRA gradients (and recomputed activations) on top of the weights.
    assert phases["backward"]["peak_bytes"] > case["tracked"]["baseline_bytes"]


def test_a_selection_that_matches_nothing_is_one_error_line_and_writes_nothing(sweep, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--models", "no-such-model", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "matches no configuration" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
