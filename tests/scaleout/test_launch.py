"""Launch checks (`stackrlhf.launch`): a launch whose processes do not form one accelerate group (the multi-GPU
config on a machine without GPUs, any disagreement between the launcher's and accelerate's process counts) stops with
one line saying what to pass instead, before anything is written; the launch that line advises forms one group."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stackrlhf.launch import LaunchView, launch_problem

ROOT = Path(__file__).parents[2]
MULTI_GPU = ROOT / "stackrlhf" / "configs" / "accelerate" / "multi_gpu.yaml"
RECIPE = ROOT / "recipes" / "ppo_stackllama.py"
WORKER = Path(__file__).with_name("launch_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_only_env(**extra: str) -> dict[str, str]:
    """This environment on a machine without GPUs, without ACCELERATE_USE_CPU unless `extra` sets it."""
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    return env | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"} | extra


def accelerate_launch(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(MULTI_GPU)]
    command += ["--num_processes", "2", "--main_process_port", str(free_port()), str(script), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def view(**changes) -> LaunchView:
    """A two-process CPU launch that works, with `changes`."""
    return LaunchView(**{"launcher": 2, "local": 2, "accelerate": 2, "torch": 2, "cpu": True, "gpus": 0} | changes)


def test_launches_that_form_one_group_pass():
    assert launch_problem(view()) is None
    assert launch_problem(view(launcher=1, local=1, accelerate=1, torch=None, cpu=False)) is None  # plain python
    assert launch_problem(view(cpu=False, gpus=2)) is None
    assert launch_problem(view(launcher=4, cpu=False, gpus=2, accelerate=4, torch=4)) is None  # 2 machines x 2 GPUs


def test_multi_gpu_config_without_gpus_says_to_set_accelerate_use_cpu():
    problem = launch_problem(view(accelerate=1, cpu=False))
    assert "no GPU" in problem and "ACCELERATE_USE_CPU=1 accelerate launch" in problem
    assert "--num_processes 2" in problem and "--num_processes 1" in problem and "\n" not in problem


def test_other_mismatches_and_too_few_gpus_are_named():
    problem = launch_problem(view(accelerate=1, torch=None))  # e.g. a WORLD_SIZE left over in the environment
    assert problem.startswith("the launcher started 2 processes but accelerate joined 1,")
    assert "torch.distributed 3" in launch_problem(view(torch=3))
    problem = launch_problem(view(cpu=False, gpus=1))
    assert problem.startswith("2 processes on this machine share 1 GPUs: pass `--num_processes 1`")


@pytest.mark.subprocess
def test_multi_gpu_config_on_a_cpu_machine_stops_before_writing(tmp_path):
    """The reported bug: two processes that would each train alone into one output directory."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.jsonl").write_text("{}\n")  # an earlier run's output, which --overwrite_output_dir would delete
    result = accelerate_launch(RECIPE, "--output_dir", str(out), "--overwrite_output_dir", env=cpu_only_env())
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]  # one process per machine prints it
    assert "ACCELERATE_USE_CPU=1 accelerate launch --config_file" in errors[0]
    assert "PPO done" not in result.stdout
    assert [path.name for path in out.iterdir()] == ["stats.jsonl"]


@pytest.mark.subprocess
def test_the_advised_launch_forms_one_group():
    result = accelerate_launch(WORKER, env=cpu_only_env(ACCELERATE_USE_CPU="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    # both processes share stdout: their lines may interleave, so read the reports wherever they are
    assert sorted(re.findall(r"rank \d+ of \d+", result.stdout)) == [
        "rank 0 of 2",
        "rank 1 of 2",
    ]


@pytest.mark.subprocess
def test_torchrun_without_accelerate_use_cpu_stops_too(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    command += [str(free_port()), str(RECIPE), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(command, env=cpu_only_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "this machine has no GPU" in errors[0], result.stderr[-3000:]
    assert not (tmp_path / "out").exists()
