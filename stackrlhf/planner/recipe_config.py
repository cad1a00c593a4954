"""Plan the run a recipe describes: the recipes' own options (a `--config` YAML, or their parsed arguments) mapped
onto `PlanSettings`.

A recipe config uses the recipe's option names: TRL's `ModelConfig` (`model_name_or_path`, `dtype`, `load_in_8bit`,
`load_in_4bit`, `use_bnb_nested_quant`, `use_peft`, `lora_r`, `lora_target_modules`), the PPO recipes' `PPOConfig`
and RL-loop options (`batch_size`, `mini_batch_size`, `generation_batch_size`, `output_max_length`,
`max_prompt_length`, `upcast_non_quantized`, ...), the SFT, reward and DPO recipes' TRL `SFTConfig` / `RewardConfig`
/ `DPOConfig` (`per_device_train_batch_size`, `max_length`, `gradient_checkpointing`, `optim`, ...) and the GRPO
recipe's TRL `GRPOConfig` with its own options (`per_device_train_batch_size`, `num_generations`,
`max_completion_length`, `generation_batch_size` / `steps_per_generation`, `max_prompt_length`, `algorithm`,
`reward_model`, `reward_batch_size`, ...). `read_recipe_config` reads such a YAML without importing the training
stack: which recipe it belongs to is told by its keys (or by `stage`), options it leaves out take that recipe's
defaults (`RECIPE_DEFAULTS`, the values its parser resolves, checked against the real parsers by the tests) and
lengths take their worst case:

- PPO responses: `output_max_length - 1` tokens (the recipes draw `output_min_length <= n < output_max_length`);
- PPO prompts: the prompt filter, `max_prompt_length`, else the model's context less `output_max_length` (the
  sentiment recipe cuts prompts to fewer than `query_max_length` tokens; one more is kept for a BOS token);
- SFT, reward and DPO sequences: `max_length` (each of chosen and rejected for reward and DPO), the model's context
  when None;
- GRPO/RLOO completions: `max_completion_length` tokens; prompts: `max_prompt_length`, else (the recipe's prompt
  filter) the model's context less `max_completion_length`. The generation batch is TRL's: `generation_batch_size`,
  else `per_device_train_batch_size x steps_per_generation` (default: `gradient_accumulation_steps`), one process.

`settings_from_arguments` maps a recipe's parsed argument dataclasses the same way (the recipes' start-up verdict,
`stackrlhf.planner.verdict`). Options that change memory but that the planner cannot model are listed in
`RecipeRun.not_planned`; every other option is ignored. Older TRL names (`torch_dtype`, `max_seq_length`) are read
as their new ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stackrlhf.configs import read_config, resolve_config
from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import TINY_MODEL
from stackrlhf.planner.settings import PlanSettings

Recipe = Literal["sft", "reward", "ppo", "sentiment", "dpo", "grpo"]

RECIPE_STAGE: dict[str, str] = {
    "sft": "sft",
    "reward": "reward",
    "ppo": "ppo",
    "sentiment": "ppo",
    "dpo": "dpo",
    "grpo": "grpo",
}
"""The planner stage of each recipe (the sentiment quick start is a PPO run; the GRPO recipe's `algorithm` option,
or `--stage`, makes it rloo)."""
GROUP_ALGORITHMS = ("grpo", "rloo")
"""The GRPO recipe's `algorithm` values, each a planner stage."""


_MODEL_DEFAULTS: dict[str, Any] = {  # TRL's ModelConfig, as the recipes resolve it
    "model_name_or_path": None,
    "dtype": "float32",
    "use_peft": False,
    "lora_r": 16,
    "lora_target_modules": None,
    "load_in_8bit": False,
    "load_in_4bit": False,
    "use_bnb_nested_quant": False,
    "use_dora": False,
    "lora_modules_to_save": None,
    "lora_target_parameters": None,
    "attn_implementation": None,
}
_TRAINER_DEFAULTS: dict[str, Any] = {  # TRL's SFTConfig / RewardConfig
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "max_length": 1024,
    "gradient_checkpointing": True,
    "activation_checkpointing": False,
    "optim": "adamw_torch_fused",
    "bf16": False,
    "fp16": False,
    "activation_offloading": False,
}
_PPO_DEFAULTS: dict[str, Any] = {  # PPOConfig, RLLoopArguments, the recipes' own arguments
    "gradient_checkpointing": False,
    "forward_batch_size": None,
    "gradient_accumulation_steps": 1,
    "optimize_device_cache": False,
    "batch_size": 128,
    "mini_batch_size": 128,
    "output_min_length": 32,
    "output_max_length": 128,
    "generation_batch_size": 16,
    "max_prompt_length": None,
    "upcast_non_quantized": True,
    "reward_model": None,
}


_DPO_DEFAULTS: dict[str, Any] = {"precompute_ref_log_probs": False}  # DPOConfig besides the trainer options
_GROUP_DEFAULTS: dict[str, Any] = {  # GRPOConfig and the GRPO recipe's GroupRLArguments
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": True,
    "activation_checkpointing": False,
    "optim": "adamw_torch_fused",
    "bf16": False,
    "fp16": False,
    "num_generations": 8,
    "max_completion_length": 512,
    "generation_batch_size": None,  # TRL derives both from per_device_train_batch_size and the accumulation steps
    "steps_per_generation": None,
    "use_vllm": False,
    "use_transformers_continuous_batching": False,
    "algorithm": "grpo",
    "reward_adapter": None,
    "reward_model": None,
    "max_prompt_length": None,
    "reward_batch_size": 16,
}


def _with_offline_config(recipe: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """`defaults` (the dataclasses' values of the options the planner reads) updated with the recipe's offline config
    (`tiny/<recipe>`), as its parser resolves them (TRL's ModelConfig reads a one-item `lora_target_modules` list as
    the string)."""
    offline = {key: value for key, value in read_config(f"tiny/{recipe}").items() if key in defaults}
    if "activation_checkpointing" in offline:  # transformers mirrors it into its deprecated alias
        offline["gradient_checkpointing"] = offline["activation_checkpointing"]
    modules = offline.get("lora_target_modules")
    if isinstance(modules, list) and len(modules) == 1:
        offline["lora_target_modules"] = modules[0]
    return defaults | offline


OFFLINE_BASES = {
    "ppo": "the offline SFT and reward stages train",
    "dpo": "the recipe starts from the offline SFT stage's merged model, a fine-tuned",
    "grpo": "the recipe starts from the offline SFT and reward stages, which train",
}
"""The recipes that run without `model_name_or_path` (on the offline stages' tiny model), and what the note says."""

RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": _with_offline_config("sft", _MODEL_DEFAULTS | _TRAINER_DEFAULTS | {"packing": False}),
    "reward": _with_offline_config("reward", _MODEL_DEFAULTS | _TRAINER_DEFAULTS),
    "ppo": _with_offline_config("ppo", _MODEL_DEFAULTS | _PPO_DEFAULTS),
    "sentiment": _with_offline_config(
        "sentiment", _MODEL_DEFAULTS | _PPO_DEFAULTS | {"query_min_length": None, "query_max_length": None}
    ),
    "dpo": _with_offline_config("dpo", _MODEL_DEFAULTS | _TRAINER_DEFAULTS | _DPO_DEFAULTS),
    "grpo": _with_offline_config("grpo", _MODEL_DEFAULTS | _GROUP_DEFAULTS),
}
"""The defaults each recipe's parser resolves (dataclass defaults, then the recipe's offline config), for the
options the planner reads. `tests/planner/test_recipe_config.py` checks them against the real parsers."""

_PPO_KEYS = frozenset(
    {
        # PPOConfig
        "steps", "batch_size", "mini_batch_size", "forward_batch_size", "ppo_epochs", "init_kl_coef", "adap_kl_ctrl",
        "kl_penalty", "target", "horizon", "cliprange", "cliprange_value", "vf_coef", "target_kl", "early_stopping",
        "optimize_device_cache", "optimize_cuda_cache", "whiten_rewards", "use_score_scaling", "use_score_norm",
        "score_clip", "ratio_threshold", "log_with", "tracker_project_name", "exp_name", "reward_model",
        # RLLoopArguments and the StackLLaMA recipe's SharedBaseArguments
        "output_min_length", "output_max_length", "max_prompt_length", "generation_batch_size", "reward_baseline",
        "reward_batch_size", "num_sample_prompts", "sample_max_new_tokens", "reward_adapter",
        "reward_model_load_in_8bit", "upcast_non_quantized",
    }
)  # fmt: skip
_SENTIMENT_KEYS = frozenset(
    {
        "prompts_file", "prompts_dataset", "prompts_column", "min_prompt_chars", "query_min_length",
        "query_max_length", "num_heldout_prompts",
    }
)  # fmt: skip
_SFT_KEYS = frozenset(
    {
        "packing", "packing_strategy", "padding_free", "dataset_text_field", "completion_only_loss",
        "assistant_only_loss", "eval_packing", "loss_type", "max_seq_length", "dataset_kwargs",
    }
)  # fmt: skip
_REWARD_KEYS = frozenset({"center_rewards_coefficient", "disable_dropout"})
_DPO_KEYS = frozenset(
    {
        # DPOConfig's own options (none of them in SFTConfig, RewardConfig or GRPOConfig), and beta, which GRPOConfig
        # shares: a config with GRPO options is told apart first
        "beta", "precompute_ref_log_probs", "precompute_ref_batch_size", "f_divergence_type",
        "f_alpha_divergence_coef", "label_smoothing", "ld_alpha", "loss_weights", "use_weighting", "discopop_tau",
        "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps",
    }
)  # fmt: skip
_GROUP_KEYS = frozenset(
    {
        # GRPOConfig's own options (a selection: none of them in DPOConfig or PPO's options), RLOOConfig's and the
        # GRPO recipe's GroupRLArguments
        "num_generations", "num_generations_eval", "max_completion_length", "steps_per_generation", "num_iterations",
        "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "epsilon", "epsilon_high", "delta",
        "scale_rewards", "importance_sampling_level", "reward_weights", "mask_truncated_completions", "use_vllm",
        "vllm_mode", "log_completions", "algorithm", "normalize_advantages", "reward_clip_range",
    }
)  # fmt: skip
_TRAINER_KEYS = frozenset(
    {
        "per_device_train_batch_size", "per_device_eval_batch_size", "num_train_epochs", "max_steps", "optim",
        "bf16", "fp16", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "eval_strategy", "save_strategy",
        "logging_steps", "report_to", "activation_checkpointing",
    }
)  # fmt: skip

OLD_NAMES = {"torch_dtype": "dtype", "max_seq_length": "max_length"}
"""Options older TRL releases spelled differently (read as their new name when the new one is not set)."""

_SIXTEEN_BIT = ("bfloat16", "float16")
_DTYPES = ("auto", "bfloat16", "float16", "float32")
_OPTIMIZERS = {
    "adamw": ("adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adamw_anyprecision"),
    "adamw_8bit": ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit"),
    "adafactor": ("adafactor",),
}
_PAGED_AS_ADAMW = ("paged_adamw_32bit",)


@dataclass
class RecipeRun:
    """A recipe run, as the planner sees it.

    Attributes:
        recipe: `sft`, `reward`, `ppo` (StackLLaMA), `sentiment`, `dpo` or `grpo` (GRPO or RLOO).
        settings: what to plan (worst-case lengths; `gpu_memory_gb` left at its default).
        from_config: the options the mapping read that the config (or the parsed arguments) set.
        from_defaults: the options the mapping read that took the recipe's default.
        notes: how the lengths were derived, one line each.
        not_planned: options that change memory but that the planner does not model, as `option=value (why)`.
        options: every option value the mapping saw (recipe defaults, then the config), for the verdict's advice.
        source: where the options came from (the config path, or "the parsed arguments").
    """

    recipe: str
    settings: PlanSettings
    from_config: dict[str, Any] = field(default_factory=dict)
    from_defaults: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    not_planned: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def stage(self) -> str:
        """The planner stage of the run (the GRPO recipe's: grpo or rloo, as its `algorithm`)."""
        return self.settings.stage

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the settings, which the plan carries)."""
        return {
            "source": self.source,
            "recipe": self.recipe,
            "from_config": _jsonable(self.from_config),
            "from_defaults": _jsonable(self.from_defaults),
            "notes": self.notes,
            "not_planned": self.not_planned,
        }


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a recipe YAML, by path or shipped short name (an `env` section, which sets
    environment variables, dropped).

    Raises:
        ConfigError: a missing or unreadable file, invalid YAML, or a document that is not a mapping.
    """
    values = read_config(path)
    values.pop("env", None)
    return {str(key): value for key, value in values.items()}


def detect_recipe(values: Mapping[str, Any], stage: str | None = None, path: str | Path | None = None) -> str:
    """Which recipe a config belongs to.

    `stage` (the planner's `--stage`) decides sft, reward and dpo; grpo and rloo mean the GRPO recipe; ppo means the
    sentiment recipe when the config has one of its prompt options, else the StackLLaMA PPO recipe. Without `stage`:
    `GRPOConfig` options (`num_generations`, `max_completion_length`, ...) or `algorithm` mean grpo, PPO or RL-loop
    options ppo (or sentiment), `DPOConfig` options (`beta`, ...) dpo, `SFTConfig`-only options sft,
    `RewardConfig`-only options or `lora_task_type: SEQ_CLS` reward, and a config with only trainer options goes by
    its folder (`<model>/sft/config_*.yaml`) or file name (`sft_*`).

    Raises:
        ConfigError: a config that could be either, or none, of the recipes: pass `--stage`.
    """
    keys = set(values)
    is_sentiment = bool(keys & _SENTIMENT_KEYS)
    if stage is not None:
        if stage == "ppo":
            return "sentiment" if is_sentiment else "ppo"
        return "grpo" if stage in GROUP_ALGORITHMS else stage
    if is_sentiment:
        return "sentiment"
    if keys & _GROUP_KEYS:
        return "grpo"
    if keys & _PPO_KEYS:
        return "ppo"
    if keys & _DPO_KEYS:
        return "dpo"
    if keys & _REWARD_KEYS or str(values.get("lora_task_type", "")).upper() == "SEQ_CLS":
        return "reward"
    if keys & _SFT_KEYS:
        return "sft"
    names = (Path(path).parent.name.lower(), Path(path).name.lower()) if path is not None else ()
    for name in names:
        for recipe in ("sft", "reward", "sentiment", "ppo", "dpo", "grpo", "rloo"):
            if name.startswith(recipe):
                return "grpo" if recipe == "rloo" else recipe
    what = "trainer options" if keys & _TRAINER_KEYS else "no recipe-specific option"
    raise ConfigError(
        f"config {str(path or '')!r} has {what}: cannot tell which recipe it is for; pass --stage sft, reward, ppo, "
        "dpo, grpo or rloo."
    )


def read_recipe_config(path: str | Path, stage: str | None = None) -> RecipeRun:
    """Read a recipe YAML and map it onto `PlanSettings` (see the module docstring).

    Raises:
        ConfigError: an unreadable config, a value of the wrong type, contradictory options (as the recipe would
            reject them), or a model whose config cannot be read when a length depends on its context.
    """
    path = resolve_config(path)
    values = load_config_file(path)
    recipe = detect_recipe(values, stage, path)
    return map_options(recipe, values, source=str(path), algorithm=stage if stage in GROUP_ALGORITHMS else None)


def settings_from_arguments(recipe: str, *arguments: Any) -> RecipeRun:
    """Map a recipe's parsed argument dataclasses (e.g. `DataArguments, SFTConfig, ModelConfig`) onto
    `PlanSettings`, as `read_recipe_config` maps a config. Every field counts as set.

    Raises:
        ConfigError: as `read_recipe_config`.
    """
    values: dict[str, Any] = {}
    for argument in arguments:
        if dataclasses.is_dataclass(argument):
            values |= {f.name: getattr(argument, f.name) for f in dataclasses.fields(argument)}
    return map_options(recipe, values, source="the parsed arguments")


def map_options(
    recipe: str, values: Mapping[str, Any], *, source: str = "", algorithm: str | None = None
) -> RecipeRun:
    """Map option values (a config's, or parsed arguments') of `recipe` onto `PlanSettings`; options they leave
    out take the recipe's defaults. `algorithm` (grpo or rloo) overrides the GRPO recipe's `algorithm` option.

    Raises:
        ConfigError: as `read_recipe_config`.
    """
    if recipe not in RECIPE_DEFAULTS:
        raise ConfigError(f"unknown recipe {recipe!r}: one of {', '.join(RECIPE_DEFAULTS)}.")
    options = _Options(recipe, values, source)
    run = RecipeRun(recipe=recipe, settings=PlanSettings(), source=source)
    stage = RECIPE_STAGE[recipe]
    if recipe == "grpo":
        stage = algorithm or options.get("algorithm", str)
        if stage not in GROUP_ALGORITHMS:
            raise ConfigError(f"{source}: algorithm {stage!r} is not one of {', '.join(GROUP_ALGORITHMS)}.")
    model = options.get("model_name_or_path", str, optional=True)
    if model is None:
        if recipe not in OFFLINE_BASES:
            raise ConfigError(f"{source}: model_name_or_path is not set.")
        model = TINY_MODEL
        run.notes.append(f"no model_name_or_path: {OFFLINE_BASES[recipe]} {TINY_MODEL}")

    quantization, dtype = _quantization(options, model)
    kbit = quantization in ("8bit", "4bit")
    use_peft = options.get("use_peft", bool)
    lora_r = options.get("lora_r", int) if use_peft else 0
    targets = _target_modules(options.get("lora_target_modules", (list, str), optional=True)) if use_peft else None
    double_quant = options.get("use_bnb_nested_quant", bool) if quantization == "4bit" else False
    if stage == "ppo":
        upcast = options.get("upcast_non_quantized", bool) if kbit else True
        upcast = upcast or dtype not in _SIXTEEN_BIT  # float32 weights stay float32 either way
        lengths = _ppo_lengths(options, model, run.notes)
        gradient_checkpointing = options.get("gradient_checkpointing", bool) or kbit
        generation_batch_size = options.get("generation_batch_size", int)
        settings = PlanSettings(
            batch_size=options.get("batch_size", int),
            mini_batch_size=_mini_batch_size(options),
            generation_batch_size=generation_batch_size,
            **lengths,
        )
    elif recipe == "grpo":
        upcast = dtype not in _SIXTEEN_BIT  # TRL's trainers keep a quantized model's other weights in `dtype`
        gradient_checkpointing = _trainer_checkpointing(options)
        settings = PlanSettings(
            **_group_sizes(options, stage),
            **_group_lengths(options, model, run.notes),
            **_group_reward(options, run.not_planned),
            optimizer=_optimizer(options, run.not_planned),
        )
    else:
        upcast = dtype not in _SIXTEEN_BIT  # TRL's trainers keep a quantized model's other weights in `dtype`
        length = _trainer_length(options, model, stage, run.notes)
        gradient_checkpointing = _trainer_checkpointing(options)
        settings = PlanSettings(
            batch_size=options.get("per_device_train_batch_size", int),
            query_length=length,
            response_length=0,
            optimizer=_optimizer(options, run.not_planned),
        )
    run.settings = dataclasses.replace(
        settings,
        model=model,
        stage=stage,
        design="shared",
        quantization=quantization,
        double_quant=double_quant,
        upcast_non_quantized=upcast,
        lora_r=lora_r,
        lora_target_modules=targets,
        gradient_checkpointing=gradient_checkpointing,
    )
    run.not_planned += _not_planned(options, stage, quantization)
    run.settings.check()
    run.from_config, run.from_defaults, run.options = options.given, options.defaulted, options.values
    return run


def recipe_limits(run: RecipeRun, limits: Mapping[str, int]) -> dict[str, int]:
    """A plan's limits (`MemoryPlan.limits`) in the recipe's option names: `per_device_train_batch_size` and
    `max_length` for sft, reward and dpo; `mini_batch_size`, `generation_batch_size` and `output_max_length` (one
    more than the longest response, which it excludes) for the PPO recipes; `per_device_train_batch_size`,
    `num_generations` and `max_completion_length` for the GRPO recipe."""
    names = {
        "batch_size": "per_device_train_batch_size",
        "sequence_length": "max_length",
        "mini_batch_size": "mini_batch_size",
        "generation_batch_size": "generation_batch_size",
        "num_generations": "num_generations",
        "response_length": "max_completion_length" if run.recipe == "grpo" else "output_max_length",
    }
    exclusive = RECIPE_STAGE[run.recipe] == "ppo"  # output_max_length excludes its value
    return {
        names[name]: value + (exclusive and name == "response_length" and value > 0) for name, value in limits.items()
    }


class _Options:
    """Option values (the given ones over the recipe's defaults) that record which ones the mapping read."""

    def __init__(self, recipe: str, given: Mapping[str, Any], source: str) -> None:
        self.recipe, self.source = recipe, source
        self.provided = dict(given)
        for old, new in OLD_NAMES.items():  # configs written for older TRL releases
            if old in self.provided and new not in self.provided:
                self.provided[new] = self.provided.pop(old)
        self.values = RECIPE_DEFAULTS[recipe] | self.provided
        self.given: dict[str, Any] = {}
        self.defaulted: dict[str, Any] = {}

    def get(self, name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
        """The value of `name`, checked against `kind` (`int` and `bool` also accept their YAML spellings).

        Raises:
            ConfigError: a value of the wrong type.
        """
        value = self.values.get(name)
        (self.given if name in self.provided else self.defaulted)[name] = value
        if value is None and optional:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if bool in kinds:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
        elif int in kinds and not isinstance(value, bool):
            if isinstance(value, int):
                return value
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
        elif isinstance(value, kinds):
            return value
        wanted = " or ".join(
            {bool: "true/false", int: "an integer", str: "a string", list: "a list"}[k] for k in kinds
        )
        raise ConfigError(f"{self.source}: {name} must be {wanted}, got {value!r}.")


def _quantization(options: _Options, model: str) -> tuple[str, str]:
    """(planner quantization, weights' dtype) from `load_in_8bit`, `load_in_4bit` and `dtype` (`auto`: the
    checkpoint's own dtype)."""
    eight, four = options.get("load_in_8bit", bool), options.get("load_in_4bit", bool)
    if eight and four:
        raise ConfigError(f"{options.source}: load_in_8bit and load_in_4bit are both set: choose one quantization.")
    dtype = options.get("dtype", str, optional=True) or "float32"
    if dtype not in _DTYPES:
        raise ConfigError(f"{options.source}: dtype {dtype!r} is not one of {', '.join(_DTYPES)}.")
    if dtype == "auto":
        dtype = _checkpoint_dtype(model)
    if eight or four:
        return ("8bit" if eight else "4bit"), dtype
    return ("bf16" if dtype in _SIXTEEN_BIT else "none"), dtype


def _checkpoint_dtype(model: str) -> str:
    from stackrlhf.planner.records import model_record

    name = model_record(model).checkpoint_dtype
    return name if name in _DTYPES else "float32"


def _target_modules(value: list | str | None) -> list[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else [str(name) for name in value]
    return names or None


def _mini_batch_size(options: _Options) -> int:
    """`PPOConfig`'s mini batch: `forward_batch_size` (deprecated alias) if set, `mini_batch_size`, else 128 lowered to
    `batch_size // gradient_accumulation_steps`; rejected when `mini * accumulation` does not divide `batch_size`."""
    batch = options.get("batch_size", int)
    accumulation = options.get("gradient_accumulation_steps", int)
    mini = None
    for name in ("forward_batch_size", "mini_batch_size"):  # the deprecated alias wins, as in `PPOConfig`
        if mini is None and options.values.get(name) is not None:
            mini = options.get(name, int)
    if mini is None:
        mini = min(128, max(1, batch // max(accumulation, 1)))
    for name, value in (
        ("batch_size", batch),
        ("mini_batch_size", mini),
        ("gradient_accumulation_steps", accumulation),
    ):
        if value < 1:
            raise ConfigError(f"{options.source}: {name}={value} must be a positive integer.")
    if batch % (mini * accumulation):
        raise ConfigError(
            f"{options.source}: batch_size {batch} must be a multiple of mini_batch_size * "
            f"gradient_accumulation_steps = {mini} * {accumulation}."
        )
    return mini


def _ppo_lengths(options: _Options, model: str, notes: list[str]) -> dict[str, int]:
    """Worst-case prompt and response tokens of a PPO recipe run."""
    low, high = options.get("output_min_length", int), options.get("output_max_length", int)
    if not 0 < low < high:
        raise ConfigError(f"{options.source}: need 0 < output_min_length < output_max_length, got {low} and {high}.")
    prompt = options.get("max_prompt_length", int, optional=True)
    if prompt is not None:
        if prompt < 1:
            raise ConfigError(f"{options.source}: max_prompt_length must be at least 1, got {prompt}.")
        why = f"max_prompt_length {prompt}"
    else:
        from stackrlhf.planner.records import model_record

        context = model_record(model).context_length
        if context is None:
            raise ConfigError(
                f"{options.source}: max_prompt_length is unset and the config of {model} gives no context length: "
                "set max_prompt_length."
            )
        prompt = context - high
        if prompt < 1:
            raise ConfigError(
                f"{options.source}: output_max_length {high} leaves no room for a prompt in {model}'s "
                f"{context}-token context."
            )
        why = f"the prompt filter: {model}'s {context}-token context less output_max_length {high}"
    if options.recipe == "sentiment":
        cut = options.get("query_max_length", int, optional=True)
        if cut is not None and cut < prompt:
            prompt, why = cut, f"prompts cut below query_max_length {cut}, plus a BOS token"
    notes.append(f"prompts up to {prompt} tokens ({why})")
    notes.append(f"responses up to {high - 1} tokens (output_max_length {high} is excluded)")
    return {"query_length": prompt, "response_length": high - 1}


def _group_sizes(options: _Options, stage: str) -> dict[str, Any]:
    """GRPO/RLOO batches as TRL's `GRPOConfig` resolves them on one process: `per_device_train_batch_size`
    completions per forward/backward pass, a generation batch of `generation_batch_size`, else
    `per_device_train_batch_size x steps_per_generation` (default: `gradient_accumulation_steps`), made of whole groups
    of `num_generations`; rejected as TRL rejects them."""
    batch = options.get("per_device_train_batch_size", int)
    groups = options.get("num_generations", int)
    for name, value in (("per_device_train_batch_size", batch), ("num_generations", groups)):
        if value < 1:
            raise ConfigError(f"{options.source}: {name}={value} must be a positive integer.")
    if groups < 2:
        raise ConfigError(
            f"{options.source}: num_generations must be at least 2 for {stage} (the advantage compares completions of "
            f"the same prompt), got {groups}."
        )
    generation = options.get("generation_batch_size", int, optional=True)
    steps = options.get("steps_per_generation", int, optional=True)
    if generation is not None and steps is not None and generation != batch * steps:  # parsed arguments hold both
        raise ConfigError(
            f"{options.source}: generation_batch_size {generation} and steps_per_generation {steps} are both set and "
            f"disagree (per_device_train_batch_size {batch} x {steps}): set one of them."
        )
    if generation is None:
        if steps is None:
            steps = options.get("gradient_accumulation_steps", int)
        if steps < 1:
            raise ConfigError(f"{options.source}: steps_per_generation={steps} must be a positive integer.")
        generation, why = batch * steps, f"per_device_train_batch_size {batch} x steps_per_generation {steps}"
    else:
        why = f"generation_batch_size {generation}"
        if generation < 1 or generation % batch:
            raise ConfigError(
                f"{options.source}: generation_batch_size {generation} must be a positive multiple of "
                f"per_device_train_batch_size {batch}."
            )
    if generation % groups:
        raise ConfigError(
            f"{options.source}: num_generations {groups} must divide the generation batch {generation} ({why}): TRL "
            "generates whole groups of completions per prompt."
        )
    return {
        "batch_size": batch,
        "generation_batch_size": generation,
        "num_generations": groups,
        "reward_batch_size": options.get("reward_batch_size", int),
    }


def _group_lengths(options: _Options, model: str, notes: list[str]) -> dict[str, int]:
    """Worst-case prompt and completion tokens of a GRPO/RLOO run: `max_completion_length`, and prompts up to
    `max_prompt_length`, else up to the model's context less `max_completion_length` (the recipe's prompt filter);
    both checked against the model's context when its config can be read (it must be, without `max_prompt_length`)."""
    from stackrlhf.planner.records import model_record

    completion = options.get("max_completion_length", int, optional=True)
    if completion is None or completion < 1:
        raise ConfigError(f"{options.source}: max_completion_length must be a positive integer, got {completion}.")
    prompt = options.get("max_prompt_length", int, optional=True)
    if prompt is not None and prompt < 1:
        raise ConfigError(f"{options.source}: max_prompt_length must be at least 1, got {prompt}.")
    try:
        context = model_record(model).context_length
    except ConfigError:
        if prompt is None:
            raise
        context = None  # a model yet to be built (the merged SFT model): the recipe checks its context
    room = None if context is None else context - completion
    if room is not None and room < (prompt or 1):
        what = (
            f"max_prompt_length {prompt} + max_completion_length {completion} exceed"
            if prompt
            else f"max_completion_length {completion} leaves no room for a prompt in"
        )
        raise ConfigError(f"{options.source}: {what} {model}'s {context}-token context.")
    if prompt is not None:
        why = f"max_prompt_length {prompt}"
    elif room is None:
        raise ConfigError(
            f"{options.source}: max_prompt_length is unset and the config of {model} gives no context length: set "
            "max_prompt_length."
        )
    else:
        prompt, why = room, f"the prompt filter: {model}'s {context}-token context less max_completion_length"
    notes.append(f"prompts up to {prompt} tokens ({why})")
    notes.append(f"completions up to {completion} tokens (max_completion_length)")
    return {"query_length": prompt, "response_length": completion}


def _group_reward(options: _Options, not_planned: list[str]) -> dict[str, Any]:
    """The GRPO recipe's reward: the reward adapter on the policy's base (`reward_adapter`, or the offline reward
    stage's), or a separate `reward_model` when the planner can read its config (else listed in `not_planned`)."""
    options.get("reward_adapter", str, optional=True)
    reward_model = options.get("reward_model", str, optional=True)
    if reward_model is None:
        return {"reward_model": None}
    from stackrlhf.planner.records import model_record

    try:
        model_record(reward_model)
    except ConfigError:
        not_planned.append(
            f"reward_model={reward_model} (a separate reward model whose config cannot be read here: its weights and "
            "forward pass are not counted)"
        )
        return {"reward_model": None}
    return {"reward_model": reward_model}


def _trainer_length(options: _Options, model: str, stage: str, notes: list[str]) -> int:
    """Tokens per sequence of an SFT or reward run: `max_length`, or the model's context when it is None."""
    length = options.get("max_length", int, optional=True)
    what = "sequences" if stage == "sft" else "chosen and rejected sequences"
    if length is not None:
        if length < 1:
            raise ConfigError(f"{options.source}: max_length must be at least 1, got {length}.")
        packed = stage == "sft" and options.get("packing", bool)
        notes.append(f"{what} of {'exactly' if packed else 'up to'} {length} tokens (max_length)")
        return length
    from stackrlhf.planner.records import model_record

    context = model_record(model).context_length
    if context is None:
        raise ConfigError(f"{options.source}: max_length is unset and the config of {model} gives no context length.")
    notes.append(f"{what} up to {context} tokens (max_length unset: {model}'s context)")
    return context


def _trainer_checkpointing(options: _Options) -> bool:
    """transformers' `activation_checkpointing`, or its deprecated alias `gradient_checkpointing` when unset."""
    if options.provided.get("activation_checkpointing") is not None:
        return options.get("activation_checkpointing", bool)
    return options.get("gradient_checkpointing", bool)


def _optimizer(options: _Options, not_planned: list[str]) -> str:
    value = options.get("optim", str)
    name = str(getattr(value, "value", value))  # TrainingArguments holds an `OptimizerNames` member
    for optimizer, names in _OPTIMIZERS.items():
        if name in names:
            return optimizer
    if name not in _PAGED_AS_ADAMW:
        not_planned.append(f"optim={name} (planned as adamw)")
    return "adamw"


def _not_planned(options: _Options, stage: str, quantization: str) -> list[str]:
    """`option=value (why)` for the options set to something that changes memory in a way the plan does not model."""
    values = options.values
    found = []
    checks = [
        ("use_dora", bool(values.get("use_dora")), "DoRA's magnitude vectors and extra activations"),
        ("lora_modules_to_save", bool(values.get("lora_modules_to_save")), "fully trained module copies"),
        ("lora_target_parameters", bool(values.get("lora_target_parameters")), "LoRA on parameters"),
        ("attn_implementation", values.get("attn_implementation") == "eager", "eager attention keeps its scores"),
    ]
    if stage == "ppo":
        checks += [
            ("reward_model", bool(values.get("reward_model")), "a separate reward model: its weights are not counted"),
            (
                "optimize_device_cache",
                bool(values.get("optimize_device_cache") or values.get("optimize_cuda_cache")),
                "empties the CUDA cache after big steps: the plan keeps its allocator slack",
            ),
        ]
    else:
        if stage == "dpo":
            checks.append(
                (
                    "precompute_ref_log_probs",
                    bool(values.get("precompute_ref_log_probs")),
                    "reference log-probs computed before training: the plan still runs the reference in each step",
                )
            )
        elif stage in GROUP_ALGORITHMS:
            checks += [
                ("use_vllm", bool(values.get("use_vllm")), "vLLM generates with its own engine and memory"),
                (
                    "use_transformers_continuous_batching",
                    bool(values.get("use_transformers_continuous_batching")),
                    "a paged KV cache: the plan keeps generate's",
                ),
            ]
        eval_batch, train_batch = values.get("per_device_eval_batch_size"), values.get("per_device_train_batch_size")
        bigger_eval = isinstance(eval_batch, int) and isinstance(train_batch, int) and eval_batch > train_batch
        autocast = quantization == "none" and (values.get("bf16") or values.get("fp16"))
        checks += [
            ("bf16" if values.get("bf16") else "fp16", bool(autocast), "autocast over float32 weights"),
            ("activation_offloading", bool(values.get("activation_offloading")), "activations moved to the CPU"),
            (
                "per_device_eval_batch_size",
                stage == "sft" and bigger_eval,  # the reward recipe's evaluation has no vocabulary logits
                "SFT evaluation batches bigger than the training batch (their logits)",
            ),
        ]
    for name, applies, why in checks:
        if applies:
            found.append(f"{name}={show_value(values.get(name))} ({why})")
    return found


def show_value(value: Any) -> str:
    """An option value as a config spells it (`true`, `[q_proj, v_proj]`, `null`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    if value is None:
        return "null"
    return str(getattr(value, "value", value))


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: value if value is None or isinstance(value, (bool, int, float, str, list)) else show_value(value)
        for name, value in values.items()
    }


def _kind(value: Any) -> str:
    return "an empty file" if value is None else f"a {type(value).__name__}"
