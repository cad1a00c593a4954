"""What bounds memory: each limit is exact (it fits, one more does not) and monotone."""

import dataclasses

import pytest

from stackrlhf.planner import PlanSettings, plan
from stackrlhf.planner.estimate import LIMITS, estimate, largest_fitting, limit_bound, limit_settings

PPO = PlanSettings(model="meta-llama/Llama-2-7b-hf", stage="ppo", quantization="8bit", batch_size=8, mini_batch_size=2)
CASES = {
    "ppo": PPO,
    "ppo-4bit-chunked": dataclasses.replace(PPO, quantization="4bit", generation_batch_size=4, gpu_memory_gb=16),
    "sft": dataclasses.replace(PPO, stage="sft", query_length=512, response_length=0, gpu_memory_gb=16),
    "reward": dataclasses.replace(PPO, stage="reward", quantization="bf16", lora_r=8, gpu_memory_gb=20),
    "dpo": dataclasses.replace(
        PPO, stage="dpo", quantization="4bit", query_length=512, response_length=0, gpu_memory_gb=16
    ),
    "grpo": dataclasses.replace(PPO, stage="grpo", num_generations=4, gpu_memory_gb=16),
    "rloo-steps": dataclasses.replace(  # 4 steps per generation: 2 prompts x 8 completions generated at once
        PPO,
        stage="rloo",
        quantization="4bit",
        batch_size=4,
        generation_batch_size=16,
        num_generations=8,
        gpu_memory_gb=16,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_limit_fits_and_one_more_does_not(case):
    settings = CASES[case]
    result = plan(settings)
    assert list(result.limits) == list(LIMITS[settings.stage])
    for name, limit in result.limits.items():
        assert 0 < limit < result.limit_bounds[name], (name, limit)  # these cases are bounded by memory
        assert estimate(limit_settings(settings, name, limit)).fits, name
        assert not estimate(limit_settings(settings, name, limit + 1)).fits, name
    if "batch_size" in result.limits:  # sft, reward, dpo, grpo, rloo: the same search as max_batch_size
        assert result.max_batch_size == result.limits["batch_size"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_limits_grow_with_the_card_and_memory_grows_with_each_size(case):
    settings = CASES[case]
    smaller, larger = plan(settings, gpu_memory_gb=14), plan(settings, gpu_memory_gb=40)
    for name in LIMITS[settings.stage]:
        assert smaller.limits[name] <= plan(settings).limits[name] <= larger.limits[name], name
        peaks = [estimate(limit_settings(settings, name, value)).peak_bytes for value in (1, 2, 4, 16, 64, 256)]
        assert peaks == sorted(peaks) and peaks[0] < peaks[-1], name


def test_ppo_limits_hold_the_others_as_configured():
    mini = limit_settings(PPO, "mini_batch_size", 32)
    assert (mini.mini_batch_size, mini.batch_size, mini.generation_batch_size, mini.response_length) == (
        32,
        32,
        8,
        128,
    )
    generation = limit_settings(PPO, "generation_batch_size", 4)
    assert (generation.generation_batch_size, generation.batch_size, generation.mini_batch_size) == (4, 8, 2)
    response = limit_settings(PPO, "response_length", 300)
    assert (response.response_length, response.mini_batch_size, response.generation_batch_size) == (300, 2, 8)


def test_the_rollout_batch_is_not_what_bounds_ppo():
    chunked = dataclasses.replace(PPO, generation_batch_size=8)
    result = plan(chunked)
    assert result.max_batch_size == 2**14  # generation and forward passes run in chunks: any rollout batch fits
    assert result.limits["mini_batch_size"] < 100 and result.limits["generation_batch_size"] < 100


def test_lengths_stop_at_the_model_context_and_tiny_models_fit_everything():
    result = plan(model="gpt2", stage="sft", quantization="none", lora_r=8, gpu_memory_gb=80)
    assert result.limit_bounds["sequence_length"] == 1024 == result.limits["sequence_length"]
    ppo = plan(model="gpt2", stage="ppo", query_length=100, gpu_memory_gb=80)
    assert ppo.limit_bounds["response_length"] == 1024 - 100 == ppo.limits["response_length"]


def test_nothing_fits_gives_zero():
    result = plan(model="EleutherAI/gpt-neox-20b", stage="ppo", quantization="8bit", gpu_memory_gb=16)
    assert not result.fits and result.limits == dict.fromkeys(LIMITS["ppo"], 0) and result.max_batch_size == 0
    assert limit_bound(result.settings, "mini_batch_size") == 2**14


def test_largest_fitting_is_exact_at_every_size():
    for true_limit in (0, 1, 2, 3, 7, 8, 9, 1000, 2**14):
        assert largest_fitting(lambda n, limit=true_limit: n <= limit, 2**14) == true_limit
    assert largest_fitting(lambda n: True, 100) == 100


def test_skipping_the_searches():
    result = plan(PPO, max_batch=False)
    assert result.limits == {} and result.max_batch_size == 0
