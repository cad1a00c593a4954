"""Launch checks: the processes a launcher started must form one accelerate process group.

`accelerate launch --config_file multi_gpu.yaml --num_processes 2` on a machine without a GPU starts two processes
that torch joins into one group (WORLD_SIZE=2) but accelerate sees each as alone (no GPU and no `ACCELERATE_USE_CPU`:
no distributed backend), so two independent runs would train side by side and overwrite each other's outputs.
`check_launch` (run by `stackrlhf.recipes.runner.run_recipe` before a recipe writes anything) compares the launcher's
world size (`WORLD_SIZE`, or MPI's variables) with accelerate's and torch.distributed's and, on a GPU machine, the
processes per machine with the GPUs, and stops a launch that does not fit with one line saying what to pass instead.

Multi-machine runs: every machine runs the same launch command with its own `--machine_rank` (accelerate) or
`--node_rank` (torchrun) and the first machine's address and a free port; the main process (rank 0) writes the
statistics, samples, checkpoints and final model, so `--output_dir` must be on a file system every machine shares
(each rank reads its own random state back from the checkpoint on resume).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import PartialState
from accelerate.utils import get_int_from_env, parse_flag_from_env

from stackrlhf.errors import ConfigError

WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Where launchers put the number of processes: torchrun and accelerate launch, then MPI (as accelerate reads them)."""

LOCAL_WORLD_SIZE_VARIABLES = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
"""Where launchers put the number of processes on this machine."""

LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")
"""Where launchers put this process's index on its machine."""


@dataclass(frozen=True)
class LaunchView:
    """How many processes each party counts in this launch.

    Attributes:
        launcher: processes the launcher started (from its environment variables; 1 without a launcher).
        local: of those, the ones on this machine.
        accelerate: processes in accelerate's group (`PartialState().num_processes`).
        torch: processes in torch.distributed's group (None when it is not initialized).
        cpu: accelerate was told to run on the CPU (`ACCELERATE_USE_CPU`).
        gpus: GPUs this process sees (0 on a machine without CUDA).
    """

    launcher: int
    local: int
    accelerate: int
    torch: int | None
    cpu: bool
    gpus: int


def launch_problem(view: LaunchView) -> str | None:
    """What is wrong with a launch seen as `view`, in one line with the fix; None when its processes form one group."""
    if view.launcher > 1 and view.accelerate == 1 and not view.cpu and view.gpus == 0:
        return (
            f"the launcher started {view.launcher} processes but this machine has no GPU, so accelerate would run "
            f"them as {view.launcher} separate trainings into one --output_dir. For {view.launcher} CPU processes "
            "set ACCELERATE_USE_CPU=1 (`ACCELERATE_USE_CPU=1 accelerate launch --config_file "
            f"stackrlhf/configs/accelerate/multi_gpu.yaml --num_processes {view.launcher} ...`, or before torchrun); "
            "for one process pass --num_processes 1."
        )
    counts = {view.launcher, view.accelerate} | ({view.torch} if view.torch is not None else set())
    if len(counts) > 1:
        torch_count = f", torch.distributed {view.torch}" if view.torch is not None else ""
        return (
            f"the launcher started {view.launcher} processes but accelerate joined {view.accelerate}{torch_count}, "
            "so they do not train as one run. Launch with `accelerate launch --num_processes N` or `torchrun "
            "--nproc_per_node N` and no leftover WORLD_SIZE/RANK variables, and set ACCELERATE_USE_CPU=1 only for "
            "CPU runs."
        )
    if not view.cpu and 0 < view.gpus < view.local:
        return (
            f"{view.local} processes on this machine share {view.gpus} GPUs: pass `--num_processes {view.gpus}` "
            "(per machine: `--nproc_per_node` for torchrun), one process per GPU."
        )
    return None


def cpu_deepspeed_backend() -> str | None:
    """`"gloo"` for a DeepSpeed launch of several processes on a machine without a GPU, else None.

    accelerate 1.15 picks a process-group backend by device: with no GPU and no `ACCELERATE_USE_CPU` (which would
    drop DeepSpeed) it picks none, so each DeepSpeed rank counts itself alone and DeepSpeed stops on its batch
    arithmetic (`train_batch_size ... 1 != 1 * 1 * 2`). Naming gloo (as `--ddp_backend gloo` does for TRL's
    trainers) makes DeepSpeed's CPU accelerator (`DS_ACCELERATOR=cpu`) join the ranks into one group.
    """
    several = get_int_from_env(list(WORLD_SIZE_VARIABLES), 1) > 1
    if several and parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") and not torch.cuda.is_available():
        return "gloo"
    return None


def launch_view() -> LaunchView:
    """This process's `LaunchView`; sets up accelerate's process state (as `Accelerator` would) under a launcher."""
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU")
    launcher = get_int_from_env(list(WORLD_SIZE_VARIABLES), 1)
    # Only under a launcher. Set up here as `Accelerator` would (the TRL recipes' TrainingArguments did it already
    # while parsing, with their ddp_timeout and ddp_backend), it is the state every later `PartialState()` shares.
    accelerate = PartialState(cpu=cpu, backend=cpu_deepspeed_backend()).num_processes if launcher > 1 else 1
    group = torch.distributed.get_world_size() if torch.distributed.is_initialized() else None
    return LaunchView(
        launcher=launcher,
        local=get_int_from_env(list(LOCAL_WORLD_SIZE_VARIABLES), launcher),
        accelerate=accelerate,
        torch=group,
        cpu=cpu,
        gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0,
    )


def check_launch() -> None:
    """Stop a launch whose processes do not form one accelerate group, before anything is written.

    The first process of each machine raises the `ConfigError` (its line is printed once per machine); the other
    processes of a failing launch exit with code 2 without a message.

    Raises:
        ConfigError: the launch's process counts disagree (see `launch_problem`).
        SystemExit: (code 2) on a machine's other processes of such a launch.
    """
    problem = launch_problem(launch_view())
    if problem is None:
        return
    if get_int_from_env(list(LOCAL_RANK_VARIABLES), 0) != 0:
        raise SystemExit(2)
    raise ConfigError(problem)
