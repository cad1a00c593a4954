"""`ppo_stackllama.py` in two CPU processes (torchrun, gloo): statistics gathered over ranks, training proceeds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from stackrlhf.reporting import STATS_FILE, read_stats

RECIPE = Path(__file__).parents[2] / "recipes" / "ppo_stackllama.py"
QUICK = [
    "--model_name_or_path", "stackrlhf/stories260K", "--steps", "8", "--batch_size", "4", "--mini_batch_size", "2",
    "--ppo_epochs", "1", "--output_min_length", "4", "--output_max_length", "10", "--max_prompt_length", "64",
    "--max_samples", "300", "--eval_samples", "40", "--num_sample_prompts", "2", "--sample_max_new_tokens", "8",
    "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--save_steps", "1",
]  # fmt: skip


def test_two_processes_gather_statistics_and_train(tmp_path, reward_dirs):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(RECIPE), *QUICK]
    command += ["--reward_adapter", str(reward_dirs["adapter"]), "--output_dir", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]

    summary = json.loads((out / "stackrlhf_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 8 // 4
    records = read_stats(out / STATS_FILE)
    assert [r["samples"] for r in records] == [8, 8]  # both processes' 4 rewards each
    # the step's own statistics are all-reduced: the mean of the two ranks' means is the mean of all 8 rewards
    assert all(r["ppo/mean_scores"] == pytest.approx(r["reward_mean"], abs=1e-6) for r in records)
    checkpoint = out / "checkpoint-1"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
    assert (checkpoint / "rng_state_0.json").is_file() and (checkpoint / "rng_state_1.json").is_file()
    adapter = load_file(out / "adapter_model.safetensors")
    assert any(key.endswith("lora_B.weight") and tensor.abs().sum() > 0 for key, tensor in adapter.items())
