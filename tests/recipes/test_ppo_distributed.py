"""`ppo_stackllama.py` in two CPU processes (torchrun, gloo): statistics gathered over ranks, training proceeds, and a
run resumed from a checkpoint ends where an uninterrupted one does."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stackrlhf.trainer.reporting import STATS_FILE, read_stats

pytestmark = pytest.mark.subprocess

RECIPE = Path(__file__).parents[2] / "recipes" / "ppo_stackllama.py"
QUICK = [
    "--model_name_or_path", "stackrlhf/stories260K", "--steps", "16", "--batch_size", "4", "--mini_batch_size", "2",
    "--ppo_epochs", "1", "--output_min_length", "4", "--output_max_length", "10", "--max_prompt_length", "64",
    "--max_samples", "300", "--eval_samples", "40", "--num_sample_prompts", "2", "--sample_max_new_tokens", "8",
    "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--save_steps", "2",
    "--use_score_scaling", "false", "--use_score_norm", "false",  # raw scores: ppo/mean_scores is their mean
]  # fmt: skip


def run_two_processes(out, reward_dirs, *extra):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port
    command += [str(RECIPE), *QUICK, *extra]
    command += ["--reward_adapter", str(reward_dirs["adapter"]), "--output_dir", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, reward_dirs):
    out = tmp_path_factory.mktemp("ddp") / "full"
    run_two_processes(out, reward_dirs)
    return out


def test_two_processes_gather_statistics_and_train(full_run):
    summary = json.loads((full_run / "stackrlhf_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 16 // 4
    records = read_stats(full_run / STATS_FILE)
    assert [r["samples"] for r in records] == [8] * 4  # both processes' 4 rewards each
    # the step's own statistics are all-reduced: the mean of the two ranks' means is the mean of all 8 rewards
    assert all(r["ppo/mean_scores"] == pytest.approx(r["reward_mean"], abs=1e-6) for r in records)
    checkpoint = full_run / "checkpoint-2"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
    assert (checkpoint / "rng_state_0.json").is_file() and (checkpoint / "rng_state_1.json").is_file()
    adapter = load_file(full_run / "adapter_model.safetensors")
    assert any(key.endswith("lora_B.weight") and tensor.abs().sum() > 0 for key, tensor in adapter.items())


def test_two_processes_resume_where_they_stopped(full_run, reward_dirs, tmp_path):
    """Keep only what a run killed after step 2's checkpoint would have left, resume it, compare the ends."""
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(full_run / "checkpoint-2", cut / "checkpoint-2")
    shutil.copy(full_run / "samples.json", cut / "samples.json")
    (cut / STATS_FILE).write_text("".join(json.dumps(r) + "\n" for r in read_stats(full_run / STATS_FILE)[:2]))
    run_two_processes(cut, reward_dirs, "--resume_from_checkpoint", "latest")

    def comparable(path):
        return [{k: v for k, v in r.items() if k != "seconds" and not k.startswith("time/")} for r in read_stats(path)]

    assert comparable(cut / STATS_FILE) == comparable(full_run / STATS_FILE)
    expected, resumed = load_file(full_run / "adapter_model.safetensors"), load_file(cut / "adapter_model.safetensors")
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0)
