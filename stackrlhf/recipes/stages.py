"""The offline pipeline's first stages, built once and cached: SFT, merge, reward model on the merged SFT model.

`accelerate launch recipes/ppo_stackllama.py` with no checkpoints runs StackLLaMA's order on the bundled data and
tiny model: the SFT recipe with `tiny/sft`, a merge of its adapter (the SFT model is then PPO's frozen base and
reference), and the reward recipe with `tiny/reward` on the merged model (so its adapter fits that same base). Each
stage's output is reused when it is already in the cache (`$STACKRLHF_CACHE/pipeline/<key>`, where the key hashes the
stage configs, so editing one rebuilds the stages).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState

from stackrlhf.atomic import write_atomically
from stackrlhf.configs import resolve_config
from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import cache_root
from stackrlhf.recipes import merge, reward, sft
from stackrlhf.recipes.runner import parse_config, recipe_parser

logger = logging.getLogger(__name__)

PIPELINE_VERSION = "v2"
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

    Raises:
        ConfigError: a stage is missing and this is one of several processes (build it in one process first).
    """
    cache = cache or pipeline_cache()
    outputs = StageOutputs(cache / "sft", cache / "sft-merged", cache / "reward")
    missing = [path for path in vars(outputs).values() if not path.is_dir()]
    if missing and PartialState().num_processes > 1:
        raise ConfigError(
            f"the offline SFT and reward stages are not built yet ({missing[0]} is missing); build them once "
            "with one process (`stackrlhf stages`), or pass --model_name_or_path and --reward_adapter."
        )
    _build(
        outputs.sft_adapter, "SFT", lambda out: sft.main(*parse_config(sft.make_parser(), SFT_CONFIG, output_dir=out))
    )
    _build(
        outputs.sft_merged,
        "merge",
        lambda out: merge.main(
            *parse_config(merge.make_parser(), adapter_path=str(outputs.sft_adapter), output_dir=out)
        ),
    )
    _build(
        outputs.reward_adapter,
        "reward",
        lambda out: reward.main(
            *parse_config(
                reward.make_parser(), REWARD_CONFIG, model_name_or_path=str(outputs.sft_merged), output_dir=out
            )
        ),
    )
    return outputs


def _build(path: Path, stage: str, run: Callable[[str], object]) -> None:
    if path.is_dir():  # stages appear by an atomic rename, so a directory is a complete stage
        logger.info("Reusing the cached %s stage in %s.", stage, path)
        return
    logger.info("Running the %s stage into %s (cached for later runs).", stage, path)
    # the stage writes into a staging directory that is renamed into place once complete
    write_atomically(path.parent, path.name, lambda staging: _run_into(run, staging))


def _run_into(run: Callable[[str], object], staging: Path) -> None:
    target = staging / "out"  # merge wants a directory that does not exist yet
    run(str(target))
    for item in target.iterdir():
        item.rename(staging / item.name)
    target.rmdir()


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
        f"Build the offline SFT, merge and reward stages ({SFT_CONFIG}, {REWARD_CONFIG}) that a bare "
        "`ppo_stackllama.py` run uses, once, into the cache; needed before a multi-process run without checkpoints.",
        (StagesArguments,),
        prog=prog,
    )
