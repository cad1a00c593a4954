"""Load a base model, its tokenizer and its LoRA settings from TRL's `ModelConfig`.

One entry point for every stage: a Hub name, a local directory or the bundled tiny model (`TINY_MODEL`), in
fp32/bf16/fp16, 8-bit or 4-bit (bitsandbytes), with LoRA settings checked against the model before any training
starts. Quantization and LoRA configs come from TRL's own `get_quantization_config` / `get_peft_config`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import PartialState, init_empty_weights
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_utils import set_zero3_state
from trl import ModelConfig, get_peft_config, get_quantization_config

from stackrlhf.errors import ConfigError, first_line, one_line
from stackrlhf.models import bnb_cpu
from stackrlhf.models.bundled import TINY_MODEL, resolve_model_name_or_path

logger = logging.getLogger(__name__)

ModelTask = Literal["causal_lm", "sequence_classification"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
"""The files a saved PEFT adapter keeps its weights in (either one)."""


@dataclass(frozen=True)
class AdapterInfo:
    """Where a saved PEFT adapter's base model and tokenizer come from, and which head it needs."""

    base_model: str
    task: ModelTask
    tokenizer_source: str


def read_adapter(path: str | Path) -> AdapterInfo | None:
    """Describe the PEFT adapter saved in `path`, or return None when `path` holds no `adapter_config.json`.

    The tokenizer comes from the adapter directory when the recipe saved one there, else from the base model.

    Raises:
        ConfigError: an `adapter_config.json` that is unreadable, not a JSON object or names no base model.
    """
    config_path = Path(path) / "adapter_config.json"
    if not config_path.is_file():
        return None
    config = read_json(config_path)
    base_model = config.get("base_model_name_or_path")
    if not isinstance(base_model, str) or not base_model:
        raise ConfigError(f"{config_path}: no base_model_name_or_path, so the adapter's base model is unknown.")
    task: ModelTask = "sequence_classification" if config.get("task_type") == "SEQ_CLS" else "causal_lm"
    has_tokenizer = (Path(path) / "tokenizer_config.json").is_file()
    return AdapterInfo(base_model=base_model, task=task, tokenizer_source=str(path) if has_tokenizer else base_model)


def read_json(path: Path) -> dict:
    """The JSON object in the file `path` (a config that transformers or peft saved).

    Raises:
        ConfigError: the file cannot be read, is not valid JSON or holds no JSON object; the message names it.
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror or one_line(err)}).") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}), so not a JSON config.") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}).") from err
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(value).__name__}.")
    return value


def check_safetensors(path: Path) -> None:
    """Open the safetensors file `path` (its header only: cheap even for a multi-gigabyte shard).

    Raises:
        ConfigError: the file is truncated or corrupt (its header does not cover the file); the message names it.
    """
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{path}: not a readable safetensors file ({one_line(err)}); truncated or corrupt?") from err


def looks_like_hub_id(name: str) -> bool:
    """`name` could be a Hugging Face Hub repository id (`name` or `owner/name`) rather than a local path."""
    parts = name.split("/")
    return len(parts) <= 2 and all(parts) and not name.startswith((".", "~")) and ".." not in name


def check_model_path(name: str, option: str) -> None:
    """Check a local model directory before anything loads; a Hub id that is no local path passes (loading tells).

    Args:
        name: the value of `--{option}`: a Hub id, `TINY_MODEL` or a local directory holding `config.json` (or a
            PEFT adapter's `adapter_config.json`).
        option: the option's name, for the message.

    Raises:
        ConfigError: a missing local path, a file, a directory without config.json, a config that is not valid
            JSON, or a truncated safetensors checkpoint.
    """
    if name == TINY_MODEL:
        return
    path = Path(name).expanduser()
    if not path.exists():
        if not looks_like_hub_id(name):
            raise ConfigError(f"--{option} {name}: no such directory (and not a Hub id such as owner/name).")
        return
    if not path.is_dir():
        raise ConfigError(f"--{option} {name}: a file, not a model directory.")
    if (path / "adapter_config.json").is_file():
        check_adapter_dir(name, option)
        return
    if not (path / "config.json").is_file():
        raise ConfigError(f"--{option} {name}: no config.json in it, so not a transformers model directory.")
    read_json(path / "config.json")
    index = path / "model.safetensors.index.json"
    shards = sorted(set(read_json(index).get("weight_map", {}).values())) if index.is_file() else []
    for shard in ("model.safetensors", *shards):
        if (path / shard).is_file():
            check_safetensors(path / shard)


def check_adapter_dir(name: str, option: str) -> AdapterInfo | None:
    """Check a local PEFT adapter directory before anything loads: its config and its weights.

    Returns:
        The adapter, or None when `name` is no local directory (a Hub id: loading tells).

    Raises:
        ConfigError: a directory without adapter_config.json, a broken adapter_config.json, no weights file, or a
            truncated adapter_model.safetensors; the message names the adapter, not its base.
    """
    path = Path(name).expanduser()
    if not path.exists():
        if not looks_like_hub_id(name):
            raise ConfigError(f"--{option} {name}: no such directory.")
        return None
    adapter = read_adapter(path)
    if adapter is None:
        raise ConfigError(f"--{option} {name}: no adapter_config.json in it.")
    weights = [path / file for file in ADAPTER_WEIGHTS if (path / file).is_file()]
    if not weights:
        raise ConfigError(f"--{option} {name}: the adapter has no weights ({' or '.join(ADAPTER_WEIGHTS)}).")
    if weights[0].suffix == ".safetensors":
        check_safetensors(weights[0])
    return adapter


def check_model_config(model_args: ModelConfig, *, training: bool = False) -> None:
    """Reject settings that cannot work together, before anything is loaded.

    Args:
        model_args: TRL model arguments.
        training: the model will be trained (a quantized base then needs LoRA adapters).

    Raises:
        ConfigError: no model named, 8-bit together with 4-bit, an unknown dtype, or training a quantized base
            without LoRA.
    """
    if not model_args.model_name_or_path:
        raise ConfigError(
            "no model given: set --model_name_or_path (a Hub name, a local directory or stackrlhf/stories260K)."
        )
    if model_args.load_in_8bit and model_args.load_in_4bit:
        raise ConfigError("load_in_8bit and load_in_4bit are both set: choose one quantization.")
    if model_args.dtype not in (None, "auto", *_DTYPES):
        raise ConfigError(f"dtype {model_args.dtype!r} is not one of auto, float32, float16, bfloat16.")
    if training and (model_args.load_in_8bit or model_args.load_in_4bit) and not model_args.use_peft:
        raise ConfigError(
            "a quantized base model cannot be trained directly: add --use_peft to train LoRA adapters on it."
        )


def _torch_dtype(model_args: ModelConfig) -> torch.dtype | str:
    if model_args.dtype == "auto":
        return "auto"
    return _DTYPES[model_args.dtype or "float32"]


def load_tokenizer(model_args: ModelConfig, *, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """Load the tokenizer of `model_args.model_name_or_path`, with a pad token set.

    Models without a pad token (GPT-2, Llama) get their EOS token as padding, as StackLLaMA's scripts did.

    Raises:
        ConfigError: the tokenizer cannot be loaded, or has neither a pad nor an EOS token.
    """
    name = resolve_model_name_or_path(model_args.model_name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=model_args.model_revision)
    except (OSError, ValueError) as err:
        raise _cannot_load(model_args.model_name_or_path, "its tokenizer", err) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is None:
        raise ConfigError(
            f"the tokenizer of {model_args.model_name_or_path} has neither a pad nor an EOS token, so batches "
            "cannot be padded; add one (tokenizer.add_special_tokens) and save it with the model."
        )
    if tokenizer.pad_token is None:
        logger.warning(
            "The tokenizer of %s has no pad token: padding with its EOS token %r, as StackLLaMA did.",
            model_args.model_name_or_path,
            tokenizer.eos_token,
        )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(
    model_args: ModelConfig,
    *,
    task: ModelTask = "causal_lm",
    num_labels: int = 1,
    with_peft: bool = False,
    trust_remote_code: bool = False,
) -> PreTrainedModel | PeftModel:
    """Load the base model described by `model_args`, quantized if asked.

    Args:
        model_args: TRL model arguments: `model_name_or_path`, `dtype`, `load_in_8bit` / `load_in_4bit`
            (with `bnb_4bit_quant_type` and `use_bnb_nested_quant` for double quantization) and the LoRA fields.
        task: `"causal_lm"` for policies and SFT, `"sequence_classification"` for reward models (a scalar head).
        num_labels: outputs of the classification head; reward models use 1.
        with_peft: also wrap the model in a new LoRA adapter built from `model_args` (`use_peft` must be set).
        trust_remote_code: passed to `from_pretrained`.

    Returns:
        The model; on CUDA, a quantized model is placed on this process's GPU.

    Raises:
        ConfigError: conflicting settings, a model that cannot be found, or LoRA targets the model lacks.
    """
    check_model_config(model_args)
    name = resolve_model_name_or_path(model_args.model_name_or_path)
    quantization_config = get_quantization_config(model_args)
    kwargs = {
        "revision": model_args.model_revision,
        "dtype": _torch_dtype(model_args),
        "attn_implementation": model_args.attn_implementation,
        "quantization_config": quantization_config,
        "trust_remote_code": trust_remote_code,
    }
    if model_args.load_in_4bit:
        bnb_cpu.install()  # bitsandbytes' 4-bit CPU layers break across eval/train switches otherwise
    if quantization_config is not None and torch.cuda.is_available():
        # bitsandbytes layers are placed at load time: each process takes its own GPU (as TRL's scripts did).
        kwargs["device_map"] = {"": PartialState().local_process_index}
    try:
        if task == "causal_lm":
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        else:
            config = AutoConfig.from_pretrained(name, revision=model_args.model_revision, num_labels=num_labels)
            model = AutoModelForSequenceClassification.from_pretrained(name, config=config, **kwargs)
    except (OSError, ValueError, SafetensorError) as err:
        raise _cannot_load(model_args.model_name_or_path, "it", err) from err
    # Adapters saved later record the directory `name` resolved to (for the bundled `stackrlhf/stories260K`, its
    # converted copy in the cache) as their base, so plain peft and transformers find it offline.
    if task == "sequence_classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    if with_peft:
        peft_config = build_peft_config(model_args, model)
        if peft_config is None:
            raise ConfigError("with_peft needs --use_peft and its LoRA settings.")
        model = get_peft_model(model, peft_config)
    return model


def skeleton_model(
    model_args: ModelConfig, *, task: ModelTask = "causal_lm", trust_remote_code: bool = False
) -> PreTrainedModel:
    """The model's architecture on the meta device: its module names and shapes, no weights, no memory.

    Lets `build_peft_config` check LoRA settings before a multi-gigabyte checkpoint is loaded.
    """
    check_model_config(model_args)
    name = resolve_model_name_or_path(model_args.model_name_or_path)
    try:
        config = AutoConfig.from_pretrained(
            name, revision=model_args.model_revision, num_labels=1, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise _cannot_load(model_args.model_name_or_path, "its config", err) from err
    auto_class = AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification
    model_class = auto_class._model_mapping.get(type(config), None)  # the class itself: `from_config` would build it
    # On the meta device, and outside DeepSpeed's ZeRO-3 `zero.Init`, which transformers would enter for the
    # submodels a model builds with `from_config` (a sequence classifier's body) and which fails on meta tensors.
    with init_empty_weights(), set_zero3_state():
        if model_class is None:  # remote code: only `from_config` knows the class
            return auto_class.from_config(config, trust_remote_code=trust_remote_code)
        return model_class(config)


def _cannot_load(name: str, what: str, err: Exception) -> ConfigError:
    """One line for a model that failed to load: a missing local path says so (not the Hub's repo-id message)."""
    if not Path(name).expanduser().exists() and not looks_like_hub_id(name):
        return ConfigError(f"model {name!r}: cannot load {what}: no such directory.")
    return ConfigError(f"model {name!r}: cannot load {what} ({first_line(err)})")


def build_peft_config(model_args: ModelConfig, model: torch.nn.Module) -> LoraConfig | None:
    """TRL's `get_peft_config(model_args)`, checked against the modules `model` really has.

    Returns:
        The LoRA config, or None when `use_peft` is off.

    Raises:
        ConfigError: a target module or module to save that matches nothing in `model`.
    """
    peft_config = get_peft_config(model_args)
    if peft_config is None:
        return None
    module_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = peft_config.target_modules
    if isinstance(targets, str) and targets != "all-linear":
        targets = [targets]
    if isinstance(targets, (list, set)):
        missing = sorted(set(targets) - module_names)
        if missing:
            linear = sorted(
                {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if _is_linear(mod)} - {"lm_head"}
            )
            raise ConfigError(
                f"LoRA target module(s) {', '.join(missing)} not found in {type(model).__name__}; "
                f"its linear layers are: {', '.join(linear)}."
            )
    missing_to_save = sorted(set(peft_config.modules_to_save or []) - module_names)
    if missing_to_save:
        raise ConfigError(f"lora_modules_to_save {', '.join(missing_to_save)} not found in {type(model).__name__}.")
    return peft_config


def _is_linear(module: torch.nn.Module) -> bool:
    """True for torch and bitsandbytes linear layers (both subclass `torch.nn.Linear`)."""
    return isinstance(module, torch.nn.Linear)
