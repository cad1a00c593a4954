"""The offline pipeline's first stages, built once and cached: SFT, merge, reward model on the merged SFT model.

`accelerate launch recipes/ppo_stackllama.py` with no checkpoints runs StackLLaMA's order on the bundled data and
tiny model: the SFT recipe with `tiny/sft`, a merge of its adapter (the SFT model is then PPO's frozen base and
reference), and the reward recipe with `tiny/reward` on the merged model (so its adapter fits that same base). Each
stage's output is reused when it is already in the cache (`$STACKRLHF_CACHE/pipeline/<key>`, where the key hashes the
stage configs, so editing one rebuilds the stages).

Each stage is a `stackrlhf.cache` entry: any number of processes can start from a cold cache (one builds each stage,
the others wait for it), a stage is checked before it is used, and a broken one is rebuilt with a warning. A process
that is one of several builds a stage in a single-process child, so the stages are those a single process builds
whatever the launch (data-parallel training would change them, and the cache key does not know the launch).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stackrlhf.cache import BrokenEntry, check_adapter, check_model, ensure_entry
from stackrlhf.configs import resolve_config
from stackrlhf.models.bundled import cache_root
from stackrlhf.recipes import RECIPE_HELP, merge, reward, sft
from stackrlhf.recipes.runner import parse_config, recipe_parser

PIPELINE_VERSION = "v3"  # v3: stages train with STAGE_THREADS threads
SFT_CONFIG = "tiny/sft"
REWARD_CONFIG = "tiny/reward"


@dataclass
class StageOutputs:
    """Where the cached stages are: the merged SFT model (PPO's base) and the reward adapter trained on it."""

    sft_adapter: Path
    sft_merged: Path
    reward_adapter: Path


@dataclass
class StagesArguments:
    """Where the offline stages are built."""

    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Build the stages here. Default: $STACKRLHF_CACHE/pipeline/<hash of the stage configs>."},
    )


def pipeline_cache() -> Path:
    """The directory of the cached offline stages: it changes with `PIPELINE_VERSION` and the stage configs."""
    digest = hashlib.sha256()
    for config in (SFT_CONFIG, REWARD_CONFIG):
        digest.update(resolve_config(config).read_bytes())
    return cache_root() / "pipeline" / f"{PIPELINE_VERSION}-{digest.hexdigest()[:12]}"


def offline_stages(cache: Path | None = None) -> StageOutputs:
    """Build (or reuse) the SFT adapter, the merged SFT model and the reward adapter on the bundled data.

    Any number of processes may call it at once: each stage is built by one of them, in a single-process child when
    they are several, while the others wait; all return the same stages.

    Raises:
        ConfigError: the cache directory cannot be created, or a stage's recipe rejects its configuration.
    """
    cache = cache or pipeline_cache()
    outputs = StageOutputs(cache / "sft", cache / "sft-merged", cache / "reward")
    ensure_entry(outputs.sft_adapter, build_sft, str(outputs.sft_adapter), check=check_adapter, what="SFT stage")
    ensure_entry(outputs.sft_merged, build_merged, str(outputs.sft_adapter), check=check_model, what="merge stage")
    ensure_entry(
        outputs.reward_adapter,
        build_reward,
        str(outputs.sft_merged),
        str(outputs.reward_adapter),
        check=check_reward_adapter,
        what="reward stage",
    )
    return outputs


STAGE_THREADS = 1
"""torch threads every stage trains with, whatever the calling run's: a thread count changes the order of float sums
and so the trained weights, and the cache key cannot see it; one thread is also the fastest for the tiny model."""


@contextmanager
def stage_threads() -> Iterator[None]:
    """Run the block with `STAGE_THREADS` torch threads, then restore the caller's count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(STAGE_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_sft(directory: Path, final: str) -> None:
    """The SFT stage: the SFT recipe with `SFT_CONFIG`, into `directory` (which becomes `final`)."""
    summary = _run_into(
        directory, lambda out: sft.train_sft(*parse_config(sft.make_parser(), SFT_CONFIG, output_dir=out))
    )
    print(f"SFT stage: held-out loss {summary['eval_loss']:.3f}; cached in {final}")


def build_merged(directory: Path, sft_adapter: str) -> None:
    """The merge stage: `sft_adapter` merged into its base, into `directory`."""
    _run_into(
        directory,
        lambda out: merge.merge_adapter(*parse_config(merge.make_parser(), adapter_path=sft_adapter, output_dir=out)),
    )


def build_reward(directory: Path, sft_merged: str, final: str) -> None:
    """The reward stage: the reward recipe with `REWARD_CONFIG` on the merged SFT model, into `directory` (which
    becomes `final`)."""
    summary = _run_into(
        directory,
        lambda out: reward.train_reward_model(
            *parse_config(reward.make_parser(), REWARD_CONFIG, model_name_or_path=sft_merged, output_dir=out)
        ),
    )
    print(f"reward stage: held-out pairwise accuracy {summary['eval_accuracy']:.3f}; cached in {final}")


def check_reward_adapter(directory: Path) -> None:
    """A reward adapter: a PEFT adapter whose weights include the score head."""
    if not any(".score." in key for key in check_adapter(directory)):
        raise BrokenEntry("adapter_model.safetensors has no score head")


def _run_into(directory: Path, run: Callable[[str], Any]) -> Any:
    """`run(output_dir)` with `STAGE_THREADS` threads, its outputs moved into `directory`; returns what it returned."""
    target = directory / "out"  # merge wants a directory that does not exist yet
    with stage_threads():
        result = run(str(target))
    for item in target.iterdir():
        item.rename(directory / item.name)
    target.rmdir()
    return result


def main(stages_args: StagesArguments) -> StageOutputs:
    """Entry point of `stackrlhf stages`: build (or find) the cached offline stages and print where they are."""
    outputs = offline_stages(Path(stages_args.cache_dir) if stages_args.cache_dir else None)
    for name, path in vars(outputs).items():
        print(f"{name}: {path}")
    return outputs


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The parser of `stackrlhf stages`."""
    return recipe_parser(
        subparsers,
        "stages",
        RECIPE_HELP["stages"],
        (StagesArguments,),
        prog=prog,
    )
