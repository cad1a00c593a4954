"""`PPOConfig`: the configuration of TRL 0.11.4's classic `PPOTrainer`, field for field.

Every field of `trl.PPOConfig` 0.11.4 is here with the same name and default, and `__post_init__` derives the same
values (`backward_batch_size`, `total_ppo_epochs`) and runs the same checks. Differences, all about inputs that
0.11.4 rejects or mishandles:

- `mini_batch_size` left unset no longer breaks small batches: it means 0.11.4's default of 128, lowered (with a
  warning) to `batch_size // gradient_accumulation_steps` when 128 would not fit, so `PPOConfig(batch_size=1)`
  works. A value the user sets is kept, and one that does not divide `batch_size` fails as in 0.11.4.
- The deprecated `optimize_cuda_cache` alias really sets `optimize_device_cache` (0.11.4 checked it in the class
  body, where the user's value never reached it).
- Bad values raise `stackrlhf.errors.ConfigError` (a `ValueError`) with a one-line message, instead of an
  `AssertionError` or a crash later in training; a `log_with` that is not one of accelerate's trackers (nor `all`,
  which would log to whichever happen to be installed), or one whose package is missing (accelerate would silently
  log nowhere), is one of them.
- In a recipe, trackers that write files (tensorboard, aim) log under `<output_dir>/runs` unless `project_kwargs`
  names a `logging_dir` or `project_dir` (`set_default_logging_dir`); 0.11.4 failed without one.
- The dictionary options accept a JSON string, so they can be given on the command line.
- There is no `FutureWarning` about `PPOConfig` being deprecated.

The class parses with `transformers.HfArgumentParser` and `trl.TrlParser`, alone or next to TRL's `ModelConfig`.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

from stackrlhf.core import exact_div, flatten_dict
from stackrlhf.errors import ConfigError

__all__ = ["DEFAULT_LOGGING_DIR", "DEFAULT_MINI_BATCH_SIZE", "KL_PENALTIES", "TRACKERS", "PPOConfig"]

KL_PENALTIES = ("kl", "abs", "mse", "full")
"""Accepted `kl_penalty` values (see the field's help)."""

DEFAULT_MINI_BATCH_SIZE = 128
"""TRL 0.11.4's default `mini_batch_size`, used when the field is left unset."""

TRACKERS = tuple(LOGGER_TYPE_TO_CLASS)
"""Accepted `log_with` values: every experiment tracker accelerate supports (each needs its own package)."""

DEFAULT_LOGGING_DIR = "runs"
"""Where, under a recipe's `output_dir`, trackers log when `project_kwargs` names no directory."""

_JSON_DICT_FIELDS = ("tracker_kwargs", "accelerator_kwargs", "project_kwargs", "push_to_hub_if_best_kwargs")


def _default_exp_name() -> str:
    """The running script's file name without `.py` (e.g. `ppo` for `python ppo.py`), as TRL does."""
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    return script.removesuffix(".py")


@dataclass
class PPOConfig:
    """Configuration of the classic (TRL 0.11.4) PPO trainer.

    Batch sizes count samples (query + response pairs) per process. One PPO step collects `batch_size` samples,
    then runs `ppo_epochs` passes over them in mini-batches of `mini_batch_size`, stepping the optimizer every
    `gradient_accumulation_steps` mini-batches, i.e. every `backward_batch_size` samples.

    Derived in `__post_init__`:
        backward_batch_size: `mini_batch_size * gradient_accumulation_steps`; must divide `batch_size`.
        total_ppo_epochs: `ceil(steps / batch_size)`, the number of PPO steps (batches) in `steps` samples.

    Filled in by the trainer (leave them unset): `world_size`, `global_backward_batch_size`, `global_batch_size`,
    `is_encoder_decoder`, `is_peft_model`.

    Raises:
        ConfigError: (a `ValueError`) an unknown `kl_penalty`, a non-positive batch size, a `backward_batch_size`
            that does not divide `batch_size`, a JSON option that is not an object, or wandb logging without wandb.
    """

    exp_name: str = field(
        default=_default_exp_name(),
        metadata={"help": "Name of this experiment; defaults to the running script's file name without `.py`."},
    )
    seed: int = field(default=0, metadata={"help": "Random seed for Python, numpy and torch."})
    log_with: str | None = field(
        default=None,
        metadata={
            "help": f"Experiment tracker that Accelerate logs to, one of {', '.join(TRACKERS)} (its package must be "
            "installed, e.g. pip install tensorboard); unset logs nowhere. tensorboard and aim write under "
            f"`project_kwargs`' `logging_dir`, in the recipes by default `<output_dir>/{DEFAULT_LOGGING_DIR}`.",
            "choices": list(TRACKERS),
        },
    )
    task_name: str | None = field(
        default=None, metadata={"help": "Name of the task, recorded in the tracker's config only."}
    )
    model_name: str = field(
        default="gpt2", metadata={"help": "Name of the policy model, recorded in the tracker's config only."}
    )
    query_dataset: str = field(
        default="stanfordnlp/imdb",
        metadata={"help": "Name of the prompt dataset, recorded in the tracker's config only."},
    )
    reward_model: str = field(
        default="sentiment-analysis:lvwerra/distilbert-imdb",
        metadata={"help": "Name of the reward model, recorded in the tracker's config only."},
    )
    remove_unused_columns: bool = field(
        default=True,
        metadata={"help": "Drop the dataset columns that the model's forward method does not accept."},
    )
    tracker_kwargs: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={
            "help": "Keyword arguments for the tracker's init, as a JSON object keyed by tracker name, "
            'e.g. \'{"wandb": {"entity": "me", "name": "run1"}}\'.'
        },
    )
    accelerator_kwargs: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={"help": "Extra keyword arguments for `accelerate.Accelerator`, as a JSON object."},
    )
    project_kwargs: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={
            "help": "Keyword arguments for `accelerate.utils.ProjectConfiguration` (e.g. `logging_dir`), "
            "as a JSON object."
        },
    )
    tracker_project_name: str = field(
        default="trl", metadata={"help": "Project name under which the tracker files the runs."}
    )
    push_to_hub_if_best_kwargs: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={
            "help": "Keyword arguments for pushing the best model to the Hub during training (e.g. `repo_id`), "
            "as a JSON object."
        },
    )
    steps: int = field(
        default=20000,
        metadata={"help": "Total number of samples to train on; the run has `ceil(steps / batch_size)` PPO steps."},
    )
    learning_rate: float = field(default=1.41e-5, metadata={"help": "Learning rate of the Adam optimizer."})
    adap_kl_ctrl: bool = field(
        default=True,
        metadata={
            "help": "Adapt the KL-penalty coefficient towards `target` (Ziegler et al. 2019); otherwise keep it fixed."
        },
    )
    init_kl_coef: float = field(
        default=0.2, metadata={"help": "Initial (or, without adaptive control, fixed) KL-penalty coefficient."}
    )
    kl_penalty: str = field(
        default="kl",
        metadata={
            "help": "Per-token KL estimate in the reward: `kl` is logp - ref_logp, `abs` its absolute value, `mse` "
            "half its square, `full` the exact KL over the whole vocabulary.",
            "choices": list(KL_PENALTIES),
        },
    )
    target: float = field(
        default=6.0, metadata={"help": "KL divergence (nats per sample) that adaptive KL control aims for."}
    )
    horizon: float = field(
        default=10000.0,
        metadata={
            "help": "Number of samples over which adaptive KL control adjusts the coefficient; larger is slower."
        },
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount factor of the generalised advantage estimate."})
    lam: float = field(
        default=0.95, metadata={"help": "Lambda of the generalised advantage estimate (bias/variance trade-off)."}
    )
    cliprange: float = field(
        default=0.2, metadata={"help": "Clipping range of the probability ratio in the PPO policy loss."}
    )
    cliprange_value: float = field(
        default=0.2,
        metadata={"help": "Clipping range of the value predictions around the old values in the value loss."},
    )
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss in the total loss."})
    batch_size: int = field(default=128, metadata={"help": "Number of samples collected per PPO step (per process)."})
    forward_batch_size: int | None = field(
        default=None,
        metadata={"help": "Deprecated alias of `mini_batch_size`; when set, it overrides `mini_batch_size`."},
    )
    mini_batch_size: int | None = field(
        default=None,
        metadata={
            "help": f"Number of samples per forward/backward pass; unset means {DEFAULT_MINI_BATCH_SIZE}, lowered "
            "to `batch_size // gradient_accumulation_steps` when that is smaller."
        },
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Number of mini-batches whose gradients are accumulated per optimizer step."}
    )
    world_size: int | None = field(
        default=None, metadata={"help": "Number of processes; set by the trainer, leave unset."}
    )
    ppo_epochs: int = field(default=4, metadata={"help": "Number of optimisation passes over each collected batch."})
    max_grad_norm: float | None = field(
        default=None, metadata={"help": "Clip the gradient norm to this value; unset disables clipping."}
    )
    optimize_cuda_cache: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `optimize_device_cache`."}
    )
    optimize_device_cache: bool = field(
        default=False,
        metadata={
            "help": "Empty the accelerator's memory cache after the big steps, to save memory at some speed cost."
        },
    )
    early_stopping: bool = field(
        default=False,
        metadata={
            "help": "Stop a PPO step's optimisation passes once the KL exceeds `target_kl` by more than 50 percent."
        },
    )
    target_kl: float = field(default=1.0, metadata={"help": "KL divergence threshold used by `early_stopping`."})
    compare_steps: int = field(
        default=1,
        metadata={"help": "Number of steps between the comparisons that decide whether to push a new best model."},
    )
    ratio_threshold: float = field(
        default=10.0,
        metadata={"help": "Skip mini-batches whose mean probability ratio exceeds this, to avoid loss spikes."},
    )
    use_score_scaling: bool = field(
        default=False, metadata={"help": "Divide the rewards by their running standard deviation."}
    )
    use_score_norm: bool = field(
        default=False,
        metadata={"help": "With `use_score_scaling`, also subtract the running mean of the rewards."},
    )
    score_clip: float | None = field(
        default=None, metadata={"help": "Clip the (scaled) rewards to plus or minus this value; unset disables it."}
    )
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Whiten the per-token rewards before computing advantages."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass to save memory."}
    )
    is_encoder_decoder: bool | None = field(
        default=None, metadata={"help": "Whether the policy is an encoder-decoder model; set by the trainer."}
    )
    is_peft_model: bool | None = field(
        default=None, metadata={"help": "Whether the policy is a PEFT model; set by the trainer."}
    )
    backward_batch_size: int | None = field(
        default=None,
        metadata={"help": "Derived as `mini_batch_size * gradient_accumulation_steps`; a value given is overwritten."},
    )
    global_backward_batch_size: int | None = field(
        default=None,
        metadata={"help": "`backward_batch_size` summed over all processes; set by the trainer, leave unset."},
    )
    global_batch_size: int | None = field(
        default=None, metadata={"help": "`batch_size` summed over all processes; set by the trainer, leave unset."}
    )
    dataset_num_proc: int | None = field(
        default=None,
        metadata={"help": "Number of processes for dataset preprocessing."},
    )
    total_ppo_epochs: int | None = field(
        default=None, init=False, metadata={"help": "Derived as `ceil(steps / batch_size)`."}
    )

    def __post_init__(self) -> None:
        for name in _JSON_DICT_FIELDS:
            setattr(self, name, _as_json_dict(name, getattr(self, name)))

        if self.kl_penalty not in KL_PENALTIES:
            raise ConfigError(f"kl_penalty={self.kl_penalty!r} is not one of {', '.join(KL_PENALTIES)}.")

        for name in (
            "batch_size",
            "gradient_accumulation_steps",
            "ppo_epochs",
            "forward_batch_size",
            "mini_batch_size",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be a positive integer.")
        if self.steps < 0:
            raise ConfigError(f"steps={self.steps} must be zero or positive.")
        if self.adap_kl_ctrl:
            for name in ("target", "horizon"):
                if getattr(self, name) <= 0:
                    raise ConfigError(f"{name}={getattr(self, name)} must be positive with adaptive KL control.")

        if self.optimize_cuda_cache is not None:
            warnings.warn(
                "`optimize_cuda_cache` is deprecated, use `optimize_device_cache` instead.",
                FutureWarning,
                stacklevel=3,
            )
            if self.optimize_device_cache is True:
                raise ConfigError(
                    f"optimize_cuda_cache={self.optimize_cuda_cache} and optimize_device_cache=True were both given; "
                    "use only `optimize_device_cache`."
                )
            self.optimize_device_cache = self.optimize_cuda_cache

        if self.forward_batch_size is not None:
            warnings.warn(
                "`forward_batch_size` is deprecated, use `mini_batch_size` instead; it overrides `mini_batch_size`, "
                "the batch size of both the forward passes and the PPO optimisation.",
                FutureWarning,
                stacklevel=3,
            )
            self.mini_batch_size = self.forward_batch_size

        if self.mini_batch_size is None:
            fitting = max(1, self.batch_size // self.gradient_accumulation_steps)
            self.mini_batch_size = min(DEFAULT_MINI_BATCH_SIZE, fitting)
            if self.mini_batch_size < DEFAULT_MINI_BATCH_SIZE:
                warnings.warn(
                    f"mini_batch_size is unset and its default {DEFAULT_MINI_BATCH_SIZE} does not fit batch_size="
                    f"{self.batch_size} with gradient_accumulation_steps={self.gradient_accumulation_steps}; "
                    f"using mini_batch_size={self.mini_batch_size}.",
                    stacklevel=3,
                )

        self.backward_batch_size = self.mini_batch_size * self.gradient_accumulation_steps
        try:
            exact_div(
                self.batch_size,
                self.backward_batch_size,
                "`batch_size` must be a multiple of `mini_batch_size * gradient_accumulation_steps`",
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None

        if self.log_with is not None and self.log_with not in TRACKERS:
            raise ConfigError(f"log_with={self.log_with!r} is not one of {', '.join(TRACKERS)}.")
        if self.log_with is not None and not tracker_is_available(self.log_with):
            package = self.log_with
            raise ConfigError(f"log_with={package!r} needs the {package} package: pip install {package}.")

        self.total_ppo_epochs = int(np.ceil(self.steps / self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        """All attributes, derived ones included, with the dictionary options flattened into `name/key` entries.

        An empty dictionary option contributes no entry (as in TRL 0.11.4). Suitable as a tracker's config.
        """
        return flatten_dict(dict(self.__dict__))


def tracker_is_available(name: str) -> bool:
    """Whether the package of tracker `name` (one of `TRACKERS`) is installed."""
    return name in {str(tracker) for tracker in get_available_trackers()}


def set_default_logging_dir(configs: Sequence[Any]) -> None:
    """Give the `PPOConfig` among a recipe's parsed `configs`, when it logs to a tracker and its `project_kwargs` name
    neither a `logging_dir` nor a `project_dir`, the `logging_dir` `<output_dir>/runs`, `output_dir` being the first
    config's that has one (tensorboard then writes to `<output_dir>/runs/<tracker_project_name>`)."""
    ppo_config = next((config for config in configs if isinstance(config, PPOConfig)), None)
    output_dir = next((config.output_dir for config in configs if getattr(config, "output_dir", None)), None)
    if ppo_config is None or ppo_config.log_with is None or output_dir is None:
        return
    if not {"logging_dir", "project_dir"} & set(ppo_config.project_kwargs):
        ppo_config.project_kwargs["logging_dir"] = str(Path(output_dir) / DEFAULT_LOGGING_DIR)


def _as_json_dict(name: str, value: Any) -> dict[str, Any]:
    """The value of a dictionary option: a dict as is, a JSON object string parsed, None as `{}`."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{name}={value!r} is not valid JSON: {err.msg}.") from err
    if not isinstance(value, dict):
        raise ConfigError(f"{name}={value!r} must be a JSON object (a dict), not {type(value).__name__}.")
    return value
