"""The recipes under DeepSpeed ZeRO-2 and ZeRO-3, launched as users launch them (`accelerate launch --config_file
stackrlhf/configs/accelerate/deepspeed_zero{2,3}.yaml`), on DeepSpeed's CPU accelerator: with one process each saves
a final policy laid out as without DeepSpeed, writes a checkpoint and resumes from it; two processes (gloo) train one
run, ZeRO-3 gathering the sharded weights to generate and save; a precision that differs from the recipe's is one
line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stackrlhf.configs import CONFIG_DIR

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).parents[2]
STAGES = ("deepspeed_zero2", "deepspeed_zero3")
TRAINER = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--max_samples", "64",
           "--eval_samples", "8", "--per_device_train_batch_size", "2"]  # fmt: skip
PPO = ["--steps", "4", "--batch_size", "2", "--mini_batch_size", "1", "--ppo_epochs", "1", "--output_min_length", "4",
       "--output_max_length", "8", "--num_sample_prompts", "1", "--sample_max_new_tokens", "4", "--lora_r", "4",
       "--lora_target_modules", "q_proj", "v_proj", "--save_steps", "1"]  # fmt: skip
STACKLLAMA = ["--model_name_or_path", "stackrlhf/stories260K", "--max_prompt_length", "64", "--max_samples", "100",
              "--eval_samples", "10"]  # fmt: skip


def launch(config, recipe, *args, check=True, launcher=(), processes=1):
    """`accelerate launch` a recipe with DeepSpeed on the CPU; returns the finished process."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)  # accelerate would drop DeepSpeed for its plain CPU mode
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--num_processes", str(processes)]
    command += [*launcher, "--main_process_port", "0"] if processes > 1 else list(launcher)
    command += ["--config_file", str(CONFIG_DIR / "accelerate" / f"{config}.yaml"), f"recipes/{recipe}", *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_peft_policy(directory):
    """An adapter and a 65-number value head, as a run without DeepSpeed saves them (no DeepSpeed flat buffer)."""
    assert any(key.endswith("lora_B.weight") for key in load_file(directory / "adapter_model.safetensors"))
    value_head = load_file(directory / "model.safetensors")
    assert sum(tensor.numel() for tensor in value_head.values()) == 65
    assert (directory / "model.safetensors").stat().st_size < 4096


def resume_ppo(config, recipe, full, tmp_path, *args):
    """Resume a copy of `full`'s first checkpoint; the final adapter must equal the uninterrupted run's."""
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(full / "checkpoint-1", cut / "checkpoint-1")
    launch(config, recipe, *args, "--output_dir", str(cut), "--resume_from_checkpoint", "latest")
    expected, resumed = load_file(full / "adapter_model.safetensors"), load_file(cut / "adapter_model.safetensors")
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key])


@pytest.mark.parametrize("config", ["deepspeed_zero2", "deepspeed_zero3"])
@pytest.mark.parametrize("recipe", ["sft_stackllama.py", "reward_stackllama.py"])
def test_trainer_recipes_save_and_resume(config, recipe, tmp_path):
    out = tmp_path / "run"
    launch(config, recipe, *TRAINER, "--output_dir", str(out))
    assert (out / "adapter_model.safetensors").is_file() and (out / "checkpoint-1").is_dir()
    launch(config, recipe, *TRAINER, "--output_dir", str(out), "--resume_from_checkpoint", str(out / "checkpoint-1"))


@pytest.mark.parametrize("config", STAGES)
def test_ppo_with_reward_adapter_saves_and_resumes(config, reward_dirs, tmp_path):
    args = [*PPO, *STACKLLAMA, "--reward_adapter", str(reward_dirs["adapter"])]
    full = tmp_path / "full"
    launch(config, "ppo_stackllama.py", *args, "--output_dir", str(full))
    assert_peft_policy(full)
    state = json.loads((full / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["optimizer_per_process"] and (full / "checkpoint-1" / "optimizer_0.safetensors").is_file()
    resume_ppo(config, "ppo_stackllama.py", full, tmp_path, *args)


@pytest.mark.parametrize("config", STAGES)
def test_ppo_with_separate_reward_model_and_sentiment(config, reward_dirs, tmp_path):
    out = tmp_path / "ppo"
    launch(config, "ppo_stackllama.py", *PPO, *STACKLLAMA, "--reward_model", str(reward_dirs["merged"]),
           "--output_dir", str(out))  # fmt: skip
    assert_peft_policy(out)
    full = tmp_path / "sentiment"
    launch(config, "ppo_sentiment.py", *PPO, "--output_dir", str(full))
    assert_peft_policy(full)
    resume_ppo(config, "ppo_sentiment.py", full, tmp_path, *PPO)


def test_a_precision_the_recipe_does_not_use_is_one_line(tmp_path):
    result = launch("deepspeed_zero2", "sft_stackllama.py", "--output_dir", str(tmp_path), check=False,
                    launcher=["--mixed_precision", "bf16"])  # fmt: skip
    assert result.returncode != 0
    expected = (
        "error: the accelerate config runs DeepSpeed in mixed_precision 'bf16', but the SFT recipe trains in 'no'"
    )
    assert expected in result.stderr


@pytest.mark.parametrize("config", STAGES)
def test_two_cpu_processes_train_one_run(config, reward_dirs, tmp_path):
    ppo_out, sft_out = tmp_path / "ppo", tmp_path / "sft"
    args = [*PPO, *STACKLLAMA, "--reward_adapter", str(reward_dirs["adapter"]), "--output_dir", str(ppo_out)]
    result = launch(config, "ppo_stackllama.py", *args, processes=2)
    assert result.stdout.count("PPO done") == 1
    assert_peft_policy(ppo_out)
    records = [json.loads(line) for line in (ppo_out / "stats.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(record["samples"] == 4 for record in records)  # 2 prompts x 2 processes
    state = json.loads((ppo_out / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and (ppo_out / "checkpoint-1" / "optimizer_1.safetensors").is_file()

    launch(config, "sft_stackllama.py", *TRAINER, "--output_dir", str(sft_out), processes=2)
    assert json.loads((sft_out / "checkpoint-1" / "trainer_state.json").read_text())["global_step"] == 1
    assert any(key.endswith("lora_B.weight") for key in load_file(sft_out / "adapter_model.safetensors"))
