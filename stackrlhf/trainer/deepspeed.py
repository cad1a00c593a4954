"""DeepSpeed ZeRO under `accelerate launch --config_file stackrlhf/configs/accelerate/deepspeed_zero{2,3}.yaml`.

accelerate turns the YAML into a DeepSpeed config (`DeepSpeedPlugin`) with "auto" batch sizes and gradient
accumulation and a precision from `mixed_precision`. The recipes' own values must be the same: `check_settings`
compares them before anything loads and names a mismatch in one line, instead of an assertion of DeepSpeed or
transformers later; `fill_ppo_config` gives the PPO trainer's values to the "auto" fields (its micro-batch is
`mini_batch_size`: PPO has no dataloader for accelerate to read it from).

`full_parameters` gathers ZeRO-3's partitioned parameters where whole weights are needed (saving, loading a
checkpoint); under ZeRO-1/2 and without DeepSpeed the parameters are whole already.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, parse_flag_from_env

from stackrlhf.errors import ConfigError

PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def launched_with_deepspeed() -> bool:
    """Whether `accelerate launch` was given a DeepSpeed config (it says so in the environment)."""
    return parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")


def uses_deepspeed(accelerator: Accelerator) -> bool:
    """Whether `accelerator` runs its models in DeepSpeed engines."""
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _launch_settings() -> dict[str, Any]:
    """The DeepSpeed config `accelerate launch` described in the environment, with its precision filled in."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower())
    return plugin.deepspeed_config


def _precision(config: dict[str, Any]) -> str:
    """`bf16`, `fp16` or `no`, as DeepSpeed's config enables them ("auto" counts as no)."""
    for name in ("bf16", "fp16"):
        if str(config.get(name, {}).get("enabled", False)).lower() == "true":
            return name
    return "no"


def check_settings(*, precision: str, gradient_accumulation_steps: int, micro_batch_size: int, what: str) -> None:
    """Under `accelerate launch` with DeepSpeed, check that its config has the recipe's precision (`bf16`, `fp16` or
    `no`), gradient accumulation and micro-batch (fields left "auto" take the recipe's value); else do nothing.

    Raises:
        ConfigError: a field that differs, named with both values and how to make them agree.
    """
    if not launched_with_deepspeed():
        return
    config = _launch_settings()
    launched = _precision(config)
    if launched != precision:
        raise ConfigError(
            f"the accelerate config runs DeepSpeed in mixed_precision {launched!r}, but {what} trains in "
            f"{precision!r}: set mixed_precision: {precision!r} in the accelerate config (or pass --mixed_precision "
            f"{precision} to accelerate launch), or change the recipe's precision."
        )
    for field, value in (
        ("gradient_accumulation_steps", gradient_accumulation_steps),
        ("train_micro_batch_size_per_gpu", micro_batch_size),
    ):
        if config.get(field, "auto") not in ("auto", value):
            raise ConfigError(
                f"the DeepSpeed config sets {field} {config[field]}, but {what} uses {value}: set it to 'auto' (or "
                f"{value}) in the accelerate config, or change the recipe's option."
            )


def fill_ppo_config(accelerator: Accelerator, config: Any, model: torch.nn.Module) -> None:
    """Give the "auto" fields of the DeepSpeed config the PPO trainer's values: micro-batch `mini_batch_size`,
    `gradient_accumulation_steps`, the global batch they make, gradient clipping `max_grad_norm` (0: none).

    Raises:
        ConfigError: DeepSpeed's precision is not the policy's trainable weights' (bf16 mixed precision for float32
            weights, say), or an explicit field differs from the trainer's.
    """
    plugin = accelerator.state.deepspeed_plugin
    ds_config = plugin.deepspeed_config
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad and p.dtype.is_floating_point}
    weights = next(iter(dtypes)) if len(dtypes) == 1 else torch.float32
    wanted = next((name for name, dtype in PRECISIONS.items() if dtype == weights), "no")
    if _precision(ds_config) != wanted:
        raise ConfigError(
            f"the accelerate config runs DeepSpeed in mixed_precision {_precision(ds_config)!r}, but the policy's "
            f"trainable weights are {str(weights).removeprefix('torch.')}: set mixed_precision: {wanted!r} in the "
            f"accelerate config (or pass --mixed_precision {wanted} to accelerate launch), or load the model with "
            "the matching --dtype."
        )
    values = {
        "train_micro_batch_size_per_gpu": config.mini_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "train_batch_size": config.mini_batch_size * config.gradient_accumulation_steps * accelerator.num_processes,
        "gradient_clipping": config.max_grad_norm or 0.0,
    }
    for field, value in values.items():
        current = ds_config.get(field, "auto")
        if current == "auto":
            ds_config[field] = value
        elif current != value:
            raise ConfigError(
                f"the DeepSpeed config sets {field} {current}, but the PPO trainer uses {value} (from "
                "mini_batch_size, gradient_accumulation_steps, max_grad_norm): set it to 'auto' in the accelerate "
                "config."
            )


def is_zero3(accelerator: Accelerator) -> bool:
    """Whether `accelerator` partitions the parameters themselves (DeepSpeed ZeRO stage 3)."""
    return uses_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3


@contextlib.contextmanager
def full_parameters(parameters: Iterable[torch.nn.Parameter], *, modify: bool = False) -> Iterator[None]:
    """Within the block, ZeRO-3's partitioned `parameters` are whole on every process (collective: every process
    enters it); with `modify`, the main process's changes are partitioned again at the end. Without ZeRO-3: nothing.
    """
    parameters = [param for param in parameters if hasattr(param, "ds_id")]
    if not parameters:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(parameters, modifier_rank=0 if modify else None):
        yield
