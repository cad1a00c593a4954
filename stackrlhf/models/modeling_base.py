"""TRL 0.11.4's `PreTrainedModelWrapper` and `create_reference_model`, on transformers 5 and peft 0.21.

The wrapper holds a transformers model (or a peft model around one) and adds what the value-head classes of
`stackrlhf.models.modeling_value_head` share: loading from a Hub name, a local directory, `TINY_MODEL` or a loaded
model, with 0.11.4's keyword arguments (`load_in_8bit`, `peft_config`, `reward_adapter`, ...); saving in 0.11.4's file
layout, so that checkpoints move freely between TRL 0.11.4 and stackrlhf; and the multi-adapter API that scores
texts with a reward LoRA adapter loaded next to the policy's.

Checkpoint layouts (as 0.11.4 writes and reads them):

* plain model: the transformers checkpoint (`model.safetensors`, or shards + `model.safetensors.index.json`) holds the
  model's weights and the value head's, under `v_head.summary.weight` and `v_head.summary.bias`;
* peft model: the adapter (`adapter_config.json`, `adapter_model.safetensors`, as peft saves it) and, beside it,
  the two `v_head.` tensors. 0.11.4 pickles them into `pytorch_model.bin`; stackrlhf writes them to
  `model.safetensors` (no pickle in anything we write), which 0.11.4 also reads first.

Loading also reads `pytorch_model.bin` and `pytorch_model.bin.index.json` checkpoints (0.11.4's value head beside an
adapter included, with `torch.load(weights_only=True)`), locally or from the Hub.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import tempfile
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.config import PeftConfig
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import BitsAndBytesConfig, PreTrainedModel, is_torch_npu_available, is_torch_xpu_available
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from stackrlhf.errors import ConfigError, one_line
from stackrlhf.models import bnb_cpu
from stackrlhf.models.bundled import resolve_model_name_or_path
from stackrlhf.models.loading import read_json

logger = logging.getLogger(__name__)

LAYER_PATTERNS = [
    "transformer.h.{layer}",
    "model.decoder.layers.{layer}",
    "gpt_neox.layers.{layer}",
    "model.layers.{layer}",
]
"""Where `create_reference_model` looks for layer `{layer}` (GPT-2, OPT, GPT-NeoX, Llama-like names)."""

VALUE_HEAD_FILE = "model.safetensors"
"""Beside a peft adapter, the value head's weights (safetensors; TRL 0.11.4 pickled them into `pytorch_model.bin`)."""

_CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_ADAPTER_CONFIG = "adapter_config.json"
_NOT_ON_HUB = (EntryNotFoundError, LocalEntryNotFoundError, HFValidationError, RepositoryNotFoundError)
_HUB_KWARGS = ("token", "revision", "cache_dir")
_BNB_KWARGS = frozenset(inspect.signature(BitsAndBytesConfig).parameters) - {"kwargs"}
_KBIT_KWARGS = frozenset(inspect.signature(prepare_model_for_kbit_training).parameters) - {"model"} | {
    "upcast_non_quantized"
}


class PreTrainedModelWrapper(nn.Module):
    """A transformers (or peft) model plus extra modules, loaded and saved in TRL 0.11.4's formats.

    Subclasses set `transformers_parent_class` (the Auto class that loads the model), `supported_args` (their own
    keyword arguments, taken out of `from_pretrained`'s) and implement `state_dict`, `post_init` and
    `_last_hidden_state`.

    Attributes:
        pretrained_model: the wrapped `PreTrainedModel` or `PeftModel`.
        config: its config.
        is_peft_model: `pretrained_model` is a `PeftModel`.
        is_loaded_in_8bit, is_loaded_in_4bit: its weights are bitsandbytes-quantized.
        is_sequential_parallel: it is spread over several GPUs by a `device_map` (naive pipeline parallelism).
        current_device: this process's device: its GPU index under CUDA, else `"cpu"` (or an `xpu:i` / `npu:i`).
        supports_rm_adapter: a reward adapter and its `score` head were loaded (see `compute_reward_score`).
        rm_adapter_name: the reward adapter's name, or None.
        policy_adapter_name: the policy's adapter, active except inside `compute_reward_score` (`"default"`).
    """

    transformers_parent_class: Any = None
    supported_args: tuple[str, ...] = ()
    supported_modules = ("v_head",)
    supported_rm_modules = ("score",)

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether the wrapped model recomputes activations in the backward pass (TRL's generation helpers read it)."""
        # transformers 5.24 renamed the property `is_activation_checkpointing` and warns on every read of the old name.
        flag = getattr(self.pretrained_model, "is_activation_checkpointing", None)
        if flag is None:
            flag = getattr(self.pretrained_model, "is_gradient_checkpointing", False)
        return bool(flag)

    @property
    def generation_config(self) -> Any:
        """The wrapped model's generation config."""
        return self.pretrained_model.generation_config

    @generation_config.setter
    def generation_config(self, value: Any) -> None:
        self.pretrained_model.generation_config = value

    def __init__(
        self,
        pretrained_model: PreTrainedModel | PeftModel,
        score_module: nn.Linear | None = None,
        supports_rm_adapter: bool = False,
        rm_adapter_name: str | None = None,
    ) -> None:
        super().__init__()
        self.pretrained_model = pretrained_model
        self.config = pretrained_model.config
        self.prepare_inputs_for_generation = pretrained_model.prepare_inputs_for_generation
        self.is_loaded_in_8bit = getattr(pretrained_model, "is_loaded_in_8bit", False)
        self.is_loaded_in_4bit = getattr(pretrained_model, "is_loaded_in_4bit", False)
        if self.is_loaded_in_4bit:
            bnb_cpu.install()  # bitsandbytes' 4-bit CPU layers break across eval/train switches otherwise
        self.is_peft_model = isinstance(pretrained_model, PeftModel)
        self.is_sequential_parallel = False
        self.current_device = self._get_current_device()
        for name in ("gradient_checkpointing_disable", "gradient_checkpointing_enable", "enable_input_require_grads"):
            if hasattr(pretrained_model, name):
                setattr(self, name, getattr(pretrained_model, name))
        self.supports_rm_adapter = supports_rm_adapter
        self.rm_adapter_name = rm_adapter_name
        self.policy_adapter_name = "default"
        if score_module is not None:
            self.score = score_module

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | PreTrainedModel | PeftModel, *model_args, **kwargs
    ) -> PreTrainedModelWrapper:
        """Load a model and wrap it, with TRL 0.11.4's arguments.

        Args:
            pretrained_model_name_or_path: a Hub name, a local directory, `stackrlhf.models.llama2c.TINY_MODEL`,
                or a loaded `PreTrainedModel` / `PeftModel`. A name or directory holding a peft adapter
                (`adapter_config.json`) loads the adapter's base model, then the adapter.
            *model_args: passed to the parent class's `from_pretrained`.
            **kwargs: split into
                - this class's `supported_args` (the value head's: `summary_dropout_prob`,
                  `v_head_initializer_range`, `v_head_init_strategy`);
                - `peft_config` (a `peft.PeftConfig`: wrap the model in a new adapter; ignored when the checkpoint
                  is an adapter or the model already a `PeftModel`), `is_trainable` (a loaded adapter is trained
                  further; default False), `reward_adapter` (path or Hub name of a reward-model LoRA adapter with
                  its `score` head, loaded next to the policy's) and `reward_adapter_name` (default
                  `"reward_adapter"`);
                - `prepare_model_for_kbit_training`'s arguments (`use_gradient_checkpointing`,
                  `gradient_checkpointing_kwargs`, ...), used when a quantized model gets a new adapter, and
                  `upcast_non_quantized` (default True, as 0.11.4; False keeps embeddings and norms in their
                  16-bit dtype instead of float32);
                - the rest, for the parent class's `from_pretrained` (`dtype`, `device_map`, `token`, `revision`,
                  `quantization_config`, ...). `load_in_8bit=True` / `load_in_4bit=True` and bitsandbytes options
                  given directly (`bnb_4bit_quant_type`, `llm_int8_threshold`, ...) become a `BitsAndBytesConfig`,
                  as transformers 4 did. A quantized model is placed on `current_device` unless `device_map` is
                  given.

        Returns:
            The wrapper, with its value head loaded from the checkpoint when it holds one (`v_head.` keys), else
            initialised as `v_head_init_strategy` says.

        Raises:
            ValueError: a `peft_config` that is not a `PeftConfig`, a prompt-learning adapter, a `reward_adapter`
                on a model without peft, a model of an unsupported type, or `load_in_*bit` together with a
                `quantization_config` (ConfigError).
        """
        peft_config = kwargs.pop("peft_config", None)
        reward_adapter = kwargs.pop("reward_adapter", None)
        reward_adapter_name = kwargs.pop("reward_adapter_name", "reward_adapter")
        is_trainable = kwargs.pop("is_trainable", False)
        wrapper_kwargs, model_kwargs, kbit_kwargs = cls._split_kwargs(kwargs)
        hub_kwargs = {key: model_kwargs[key] for key in _HUB_KWARGS if key in model_kwargs}

        if reward_adapter is not None and not isinstance(reward_adapter, (str, os.PathLike)):
            raise ValueError(
                "The `reward_adapter` argument should be a string representing the name of local path or the Hub id "
                "to the Reward Modeling adapter."
            )
        if peft_config is not None and not isinstance(peft_config, PeftConfig):
            raise ValueError("The `peft_config` argument should be an instance of `peft.PeftConfig` class.")

        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            pretrained_model = cls._load_pretrained_model(
                str(pretrained_model_name_or_path), model_args, model_kwargs, peft_config, is_trainable, kbit_kwargs
            )
        elif isinstance(pretrained_model_name_or_path, (PreTrainedModel, PeftModel)):
            pretrained_model = pretrained_model_name_or_path
            if model_kwargs:
                logger.warning("Arguments %s ignored: the model is already loaded.", sorted(model_kwargs))
            if peft_config is not None and isinstance(pretrained_model, PreTrainedModel):
                pretrained_model = _add_adapter(pretrained_model, peft_config, kbit_kwargs)
            elif peft_config is not None:
                logger.warning("`peft_config` argument ignored: the model is already a PeftModel.")
        else:
            raise ValueError(
                "pretrained_model_name_or_path should be a string or a PreTrainedModel, "
                f"but is {type(pretrained_model_name_or_path)}"
            )

        is_peft_model = isinstance(pretrained_model, PeftModel)
        if is_peft_model and pretrained_model.active_peft_config.is_prompt_learning:
            raise ValueError("PromptLearningConfig is not supported for PPO training.")
        if reward_adapter is not None and not is_peft_model:
            raise ValueError("reward_adapter can only be used with a PeftModel.")
        if reward_adapter is not None:
            score = cls.add_and_load_reward_modeling_adapter(
                pretrained_model, str(reward_adapter), reward_adapter_name, token=hub_kwargs.get("token")
            )
            multi_adapter_args = {
                "score_module": score,
                "supports_rm_adapter": True,
                "rm_adapter_name": reward_adapter_name,
            }
        else:
            multi_adapter_args = {"supports_rm_adapter": False}

        model = cls(pretrained_model, **multi_adapter_args, **wrapper_kwargs)
        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            path = resolve_model_name_or_path(str(pretrained_model_name_or_path))
            state_dict = _load_saved_modules(path, cls.supported_modules, hub_kwargs)
        else:
            state_dict = pretrained_model.state_dict()
        model.post_init(state_dict=state_dict)
        return model

    @classmethod
    def _load_pretrained_model(
        cls,
        name: str,
        model_args: tuple,
        model_kwargs: dict[str, Any],
        peft_config: PeftConfig | None,
        is_trainable: bool,
        kbit_kwargs: dict[str, Any],
    ) -> PreTrainedModel | PeftModel:
        """Load the model `name` holds: a transformers model, wrapped in a new adapter when `peft_config` is given,
        or the base model and the adapter of a saved peft adapter."""
        path = resolve_model_name_or_path(name)
        hub_kwargs = {key: model_kwargs[key] for key in _HUB_KWARGS if key in model_kwargs}
        _bitsandbytes_kwargs_to_config(model_kwargs)
        if model_kwargs.get("quantization_config") is not None and "device_map" not in model_kwargs:
            logger.warning(
                "The `device_map` argument is not provided: the quantized model is placed on the current device "
                "(%s). Pass a `device_map` to spread it over several devices.",
                cls._get_current_device(),
            )
            model_kwargs["device_map"] = {"": cls._get_current_device()}

        adapter_config = _find_file(path, _ADAPTER_CONFIG, hub_kwargs)
        if adapter_config is None:
            model = cls._load_transformers_model(name, *model_args, **model_kwargs)
            return model if peft_config is None else _add_adapter(model, peft_config, kbit_kwargs)
        if peft_config is not None:
            logger.warning("`peft_config` argument ignored since a peft config file was found in %s", name)
        base_name = read_json(Path(adapter_config)).get("base_model_name_or_path")
        if not isinstance(base_name, str) or not base_name:
            raise ConfigError(f"{adapter_config}: no base_model_name_or_path, so the adapter's base model is unknown.")
        base = cls._load_transformers_model(base_name, *model_args, **model_kwargs)
        try:
            return PeftModel.from_pretrained(base, path, is_trainable=is_trainable, **hub_kwargs)
        except (OSError, SafetensorError) as err:
            raise ConfigError(f"adapter {name}: cannot load it ({one_line(err)})") from err

    @classmethod
    def _load_transformers_model(cls, name: str, *model_args, **model_kwargs) -> PreTrainedModel:
        """`transformers_parent_class.from_pretrained`, with `TINY_MODEL` resolved to its converted directory, which
        adapters saved from the model record as their base (plain peft and transformers find it offline)."""
        return cls.transformers_parent_class.from_pretrained(
            resolve_model_name_or_path(name), *model_args, **model_kwargs
        )

    @classmethod
    def _split_kwargs(cls, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Split `kwargs` into (this class's `supported_args`, the model's, `prepare_model_for_kbit_training`'s)."""
        supported, model_kwargs, kbit = {}, {}, {}
        for key, value in kwargs.items():
            if key in cls.supported_args:
                supported[key] = value
            elif key in _KBIT_KWARGS:
                kbit[key] = value
            else:
                model_kwargs[key] = value
        return supported, model_kwargs, kbit

    @classmethod
    def _get_current_device(cls) -> int | str:
        """This process's device: its local GPU index under CUDA, `"xpu:i"` / `"npu:i"`, else `"cpu"`.

        The process state is created here when the model is loaded before the `Accelerator`: honour
        `ACCELERATE_USE_CPU` then, or a multi-process CPU launch (gloo) would be pinned to one process.
        """
        state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
        if is_torch_xpu_available():
            return f"xpu:{state.local_process_index}"
        if is_torch_npu_available():
            return f"npu:{state.local_process_index}"
        return state.local_process_index if torch.cuda.is_available() else "cpu"

    @classmethod
    def add_and_load_reward_modeling_adapter(
        cls,
        pretrained_model: PeftModel,
        adapter_model_id: str,
        adapter_name: str = "reward_model_adapter",
        token: str | bool | None = None,
    ) -> nn.Linear:
        """Load a reward model's LoRA adapter into `pretrained_model` (frozen) and return its score head.

        The adapter is what TRL's `RewardTrainer` saves for a peft sequence-classification model: LoRA weights
        plus the `score` layer (in `modules_to_save`), stored as `...score.weight` (and `...score.bias` if any)
        in `adapter_model.safetensors` or `adapter_model.bin`. The policy's active adapter and train/eval mode are
        left as they were.

        Returns:
            The score head: a frozen `nn.Linear(hidden_size, num_labels)` on `current_device`, in the model's dtype.

        Raises:
            ValueError: no adapter weights file, or no score head in it; a `ConfigError` (one line naming the
                adapter) when peft cannot load it (broken config, truncated weights).
        """
        was_training = pretrained_model.training
        try:
            pretrained_model.load_adapter(adapter_model_id, adapter_name, is_trainable=False, token=token)
        except (OSError, ValueError, SafetensorError) as err:
            raise ConfigError(f"reward adapter {adapter_model_id}: cannot load it ({one_line(err)})") from err
        pretrained_model.train(was_training)

        hub_kwargs = {"token": token} if token is not None else {}
        path = next((p for f in _ADAPTER_FILES if (p := _find_file(adapter_model_id, f, hub_kwargs))), None)
        if path is None:
            raise ValueError(
                f"{adapter_model_id}: no {' or '.join(_ADAPTER_FILES)} found, locally or on the Hub; make sure you "
                "have the correct adapter model id."
            )
        # peft saves a `modules_to_save` layer under its own name: `base_model.model.score.weight`.
        pattern = re.compile(rf"(?:^|\.)(?:{'|'.join(cls.supported_rm_modules)})\.(weight|bias)$")
        score_dict = {
            pattern.search(key).group(1): tensor for key, tensor in _read_tensors(path, pattern.search).items()
        }
        if "weight" not in score_dict:
            raise ValueError(
                f"{adapter_model_id}: the adapter holds no score head ({' or '.join(cls.supported_rm_modules)} "
                "weights); save the reward model with its head in `modules_to_save`."
            )
        num_labels, hidden_size = score_dict["weight"].shape
        score = nn.Linear(hidden_size, num_labels, bias="bias" in score_dict)
        score.load_state_dict(score_dict)
        score.to(device=cls._get_current_device(), dtype=pretrained_model.dtype)
        score.requires_grad_(False)
        return score

    def compute_reward_score(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        ppo_adapter_name: str | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Reward of every position of `input_ids`, from the reward adapter and its score head.

        Activates the reward adapter, runs the model in eval mode without building a graph and applies the score
        head to the last hidden state; then, whatever happens, activates `ppo_adapter_name` again and restores the
        model's train/eval mode and every parameter's `requires_grad`. The reward of a sequence is the score of its
        last token, as a sequence-classification reward model reads it.

        Args:
            input_ids: (batch, seq) token ids.
            attention_mask: (batch, seq) 1 for tokens, 0 for padding.
            ppo_adapter_name: the adapter to activate afterwards; None: `policy_adapter_name` (`"default"`).
            **kwargs: passed to the model's forward.

        Returns:
            (batch, seq, num_labels) scores, as TRL 0.11.4 returns them.

        Raises:
            ValueError: the model was loaded without a `reward_adapter`.
        """
        if not self.supports_rm_adapter:
            raise ValueError("This model does not support reward modeling adapter.")
        model = self.pretrained_model
        was_training = model.training
        requires_grad = [(param, param.requires_grad) for param in model.parameters()]
        try:
            model.set_adapter(self.rm_adapter_name)
            model.eval()
            with torch.no_grad():
                output = model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    output_hidden_states=True,
                    return_dict=True,
                    **kwargs,
                )
                last_hidden_state = self._last_hidden_state(output)
                return self.score(last_hidden_state.to(self.score.weight))
        finally:
            model.set_adapter(ppo_adapter_name or self.policy_adapter_name)
            model.train(was_training)
            for param, flag in requires_grad:
                param.requires_grad_(flag)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save in TRL 0.11.4's layout (see the module docstring).

        Args:
            save_directory: created if missing.
            **kwargs: passed to the wrapped model's `save_pretrained`; `state_dict` replaces `self.state_dict()`.
        """
        state_dict = kwargs.pop("state_dict", None)
        if state_dict is None:
            state_dict = self.state_dict()
        if not self.is_peft_model:
            self.pretrained_model.save_pretrained(save_directory, state_dict=state_dict, **kwargs)
            return
        # peft saves only the adapter: the value head goes into its own file, beside it.
        if kwargs.get("is_main_process", True):
            os.makedirs(save_directory, exist_ok=True)
            value_head = {key: tensor.detach().cpu().clone() for key, tensor in state_dict.items()}  # no shared views
            save_file(value_head, os.path.join(save_directory, VALUE_HEAD_FILE))
        self.pretrained_model.save_pretrained(save_directory, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **save_kwargs,
    ) -> Any:
        """Save as `save_pretrained` does and upload the files to the Hub repository `repo_id` (created if needed).

        Returns:
            huggingface_hub's `CommitInfo` for the upload.
        """
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as work_dir:
            self.save_pretrained(work_dir, **save_kwargs)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=work_dir,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                revision=revision,
                create_pr=create_pr,
            )

    def state_dict(self, *, destination: dict | None = None, prefix: str = "", keep_vars: bool = False) -> dict:
        """The state dict that `save_pretrained` saves."""
        raise NotImplementedError

    def post_init(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the extra modules' weights from `state_dict` (a checkpoint's) and place them on their devices."""
        raise NotImplementedError

    def _last_hidden_state(self, output: Any) -> torch.Tensor:
        """The last layer's hidden states in the wrapped model's output (`output_hidden_states=True`)."""
        raise NotImplementedError


def _bitsandbytes_kwargs_to_config(model_kwargs: dict[str, Any]) -> None:
    """Turn `load_in_8bit` / `load_in_4bit` and other `BitsAndBytesConfig` options in `model_kwargs` into its
    `quantization_config`, in place, as transformers 4 did (transformers 5 accepts only the config).

    Raises:
        ConfigError: `load_in_*bit` together with a `quantization_config`.
    """
    if not (model_kwargs.get("load_in_8bit") or model_kwargs.get("load_in_4bit")):
        model_kwargs.pop("load_in_8bit", None)
        model_kwargs.pop("load_in_4bit", None)
        return
    if model_kwargs.get("quantization_config") is not None:
        raise ConfigError(
            "You can't pass `load_in_4bit`or `load_in_8bit` as a kwarg when passing `quantization_config` argument "
            "at the same time."
        )
    options = {key: model_kwargs.pop(key) for key in list(model_kwargs) if key in _BNB_KWARGS}
    model_kwargs["quantization_config"] = BitsAndBytesConfig(**options)


def _add_adapter(model: PreTrainedModel, peft_config: PeftConfig, kbit_kwargs: dict[str, Any]) -> PeftModel:
    """Wrap `model` in a new adapter; a bitsandbytes-quantized model is first prepared for training.

    As 0.11.4 did, that is `prepare_model_for_kbit_training(model, **kbit_kwargs)`: frozen weights, the non-quantized
    ones (embeddings, `lm_head`, norms) upcast to float32, and gradient checkpointing on by default. With
    `upcast_non_quantized=False` in `kbit_kwargs` the non-quantized weights keep their dtype (e.g. bfloat16), as in
    the 20B-on-24GB write-up's peft 0.2 recipe: for gpt-neox-20b that saves 1.2 GiB of float32 embeddings and runs
    the activations in 16 bits.
    """
    kbit_kwargs = dict(kbit_kwargs)
    upcast = kbit_kwargs.pop("upcast_non_quantized", True)
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        model = (
            prepare_model_for_kbit_training(model, **kbit_kwargs) if upcast else _freeze_for_kbit(model, **kbit_kwargs)
        )
    return get_peft_model(model, peft_config)


def _freeze_for_kbit(
    model: PreTrainedModel,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: dict[str, Any] | None = None,
    **_: Any,
) -> PreTrainedModel:
    """`prepare_model_for_kbit_training` without its float32 upcast: freeze every weight and, by default, turn on
    gradient checkpointing with inputs that require grad (so the frozen embeddings still pass gradients on)."""
    for param in model.parameters():
        param.requires_grad_(False)
    if use_gradient_checkpointing:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or {"use_reentrant": True}
        )
    return model


def _find_file(name_or_path: str, filename: str, hub_kwargs: dict[str, Any]) -> str | None:
    """Path of `filename` in the local directory `name_or_path`, or downloaded from the Hub repository of that name
    (never both: a local directory is not looked up on the Hub); None when it has no such file."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        return path if os.path.isfile(path) else None
    try:
        return hf_hub_download(name_or_path, filename, **hub_kwargs)
    except _NOT_ON_HUB:
        return None


def _read_tensors(path: str, keep: Callable[[str], Any]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or torch checkpoint file whose names `keep` accepts (safetensors: only those are
    read)."""
    try:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt") as f:
                return {key: f.get_tensor(key) for key in f.keys() if keep(key)}
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, SafetensorError) as err:
        raise ConfigError(f"{path}: cannot read its tensors ({one_line(err)}); truncated or corrupt?") from err
    return {key: tensor for key, tensor in state_dict.items() if keep(key)}


def _load_saved_modules(
    name_or_path: str, modules: tuple[str, ...] = ("v_head",), hub_kwargs: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """The weights of `modules` (keys containing `"{module}."`) saved in a checkpoint, as 0.11.4 finds them.

    Tried in order, in the local directory `name_or_path` or else the Hub repository of that name:
    `model.safetensors`, `pytorch_model.bin` (a full 0.11.4 checkpoint, or the value head beside a peft adapter),
    then the sharded indexes `model.safetensors.index.json` and `pytorch_model.bin.index.json` (only the shards
    holding those keys are read).

    Returns:
        The tensors by their checkpoint names (e.g. `v_head.summary.weight`); empty when none is saved.
    """
    hub_kwargs = hub_kwargs or {}

    def keep(key: str) -> bool:
        return any(f"{module}." in key for module in modules)

    for filename in _CHECKPOINT_FILES:
        if path := _find_file(name_or_path, filename, hub_kwargs):
            return _read_tensors(path, keep)
    for filename in _INDEX_FILES:
        if index := _find_file(name_or_path, filename, hub_kwargs):
            weight_map = read_json(Path(index)).get("weight_map", {})
            state_dict = {}
            for shard in sorted({shard for key, shard in weight_map.items() if keep(key)}):
                if (path := _find_file(name_or_path, shard, hub_kwargs)) is None:
                    raise ConfigError(f"{name_or_path}: {filename} lists {shard}, which is missing.")
                state_dict |= _read_tensors(path, keep)
            return state_dict
    logger.info(
        "No %s weights found in %s. This IS expected if you are not resuming PPO training.", modules, name_or_path
    )
    return {}


def create_reference_model(
    model: PreTrainedModelWrapper, num_shared_layers: int | None = None, pattern: str | None = None
) -> PreTrainedModelWrapper:
    """A frozen copy of `model`, in eval mode, to compute the reference log-probabilities of PPO's KL penalty.

    With `num_shared_layers`, the parameters before layer `num_shared_layers` (embeddings and the first layers, in
    parameter order) are frozen in `model` too and shared: the copy holds the very same tensors, so they take no
    extra memory. (TRL 0.11.4 froze them in `model` but still copied them.)

    Args:
        model: the model to copy.
        num_shared_layers: the number of initial layers that are shared between both models and kept frozen.
        pattern: the layers' names with a `{layer}` placeholder (e.g. `"transformer.h.{layer}"` for GPT-2); None:
            the first of `LAYER_PATTERNS` found in `model`.

    Returns:
        The reference model.

    Raises:
        ValueError: DeepSpeed ZeRO-3 is enabled (load the reference model with `from_pretrained` instead), or no
            layer name matches the pattern.
    """
    if is_deepspeed_zero3_enabled():
        raise ValueError(
            "DeepSpeed ZeRO-3 is enabled and is not compatible with `create_reference_model()`. Please instantiate "
            "your reference model directly with `AutoCausalLM.from_pretrained()`."
        )
    if num_shared_layers is None:
        ref_model = deepcopy(model)
        ref_model.requires_grad_(False)
        return ref_model.eval()

    named_parameters = list(model.named_parameters())
    candidates = [pattern] if pattern is not None else LAYER_PATTERNS
    layer = next(
        (
            candidate.format(layer=num_shared_layers)
            for candidate in candidates
            if any(candidate.format(layer=num_shared_layers) in name for name, _ in named_parameters)
        ),
        None,
    )
    if layer is None:
        raise ValueError("Layer pattern could not be matched.")
    first_unshared = next(i for i, (name, _) in enumerate(named_parameters) if layer in name)
    shared = [param for _, param in named_parameters[:first_unshared]]
    for param in shared:
        param.requires_grad = False
    # Pre-seeding deepcopy's memo makes the copy reuse these tensors instead of copying them.
    ref_model = deepcopy(model, {id(param): param for param in shared})
    ref_model.requires_grad_(False)
    return ref_model.eval()
