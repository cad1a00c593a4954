"""TRL 0.11.4's value-head models, on transformers 5 and peft 0.21: a language model plus a scalar head that
estimates the value of every token, the policy and critic of PPO.

`AutoModelForCausalLMWithValueHead` and `AutoModelForSeq2SeqLMWithValueHead` keep 0.11.4's public behaviour:
`from_pretrained` (names, directories, loaded models, peft adapters, 8-bit / 4-bit bases), `forward` returning
`(lm_logits, loss, value)`, `generate`, `state_dict`, `save_pretrained` / `push_to_hub` in 0.11.4's checkpoint layout
(see `stackrlhf.models.modeling_base`), `post_init`, and the reward-adapter API (`compute_reward_score`).
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from stackrlhf.models.modeling_base import PreTrainedModelWrapper, create_reference_model

__all__ = [
    "AutoModelForCausalLMWithValueHead",
    "AutoModelForSeq2SeqLMWithValueHead",
    "ValueHead",
    "create_reference_model",
]

# transformers 5.x renamed the key/value cache from `past_key_values` to `cache` (argument and output field).
_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class ValueHead(nn.Module):
    """A linear head that returns a scalar for each token: dropout, then `summary = nn.Linear(hidden_size, 1)`.

    Args:
        config: the wrapped model's config. Its width is `word_embed_proj_dim` when it has one (OPT projects
            before the embeddings), else `hidden_size`, or the decoder's `hidden_size` for an encoder-decoder
            config with a `decoder` config.
        summary_dropout_prob: dropout before the linear layer, unless the config has its own
            `summary_dropout_prob`; 0 or None: no dropout.

    Raises:
        ValueError: the config gives no width.
    """

    def __init__(self, config: PreTrainedConfig, summary_dropout_prob: float | None = 0.1) -> None:
        super().__init__()
        if hasattr(config, "summary_dropout_prob"):
            summary_dropout_prob = config.summary_dropout_prob
        self.dropout = nn.Dropout(summary_dropout_prob) if summary_dropout_prob else nn.Identity()

        hidden_size = getattr(config, "hidden_size", None)
        if hasattr(config, "word_embed_proj_dim"):
            hidden_size = config.word_embed_proj_dim
        elif getattr(config, "is_encoder_decoder", False) and hasattr(getattr(config, "decoder", None), "hidden_size"):
            hidden_size = config.decoder.hidden_size
        if hidden_size is None:
            raise ValueError(f"{type(config).__name__} has no hidden_size: cannot size the value head.")

        self.summary = nn.Linear(hidden_size, 1)
        self.flatten = nn.Flatten()  # unused, as in 0.11.4; kept so the module tree is the same

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., hidden_size) hidden states → (..., 1) values, in the head's dtype (float32 unless cast): hidden
        states of another dtype (fp16, bf16) are upcast first."""
        output = self.dropout(hidden_states)
        if output.dtype != self.summary.weight.dtype:
            output = output.to(self.summary.weight.dtype)
        return self.summary(output)


class _ModelWithValueHead(PreTrainedModelWrapper):
    """What both value-head models share; subclasses say where the language-model head and last hidden state are."""

    lm_head_namings: tuple[str, ...] = ()
    supported_args = ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")

    def __init__(
        self,
        pretrained_model: PreTrainedModel | PeftModel,
        *,
        summary_dropout_prob: float | None = 0.1,
        v_head_initializer_range: float = 0.2,
        v_head_init_strategy: str | None = None,
        **wrapper_kwargs,
    ) -> None:
        """Wrap `pretrained_model` and add a value head.

        Args:
            pretrained_model: the model, with a language-model head (one of `lm_head_namings`).
            summary_dropout_prob: the value head's dropout (unless the model's config sets its own).
            v_head_initializer_range: standard deviation of the `"normal"` initialisation.
            v_head_init_strategy: None: `nn.Linear`'s default (random) initialisation; `"normal"`: weights from
                N(0, v_head_initializer_range²), bias zero.
            **wrapper_kwargs: `score_module`, `supports_rm_adapter`, `rm_adapter_name` (see `from_pretrained`).

        Raises:
            ValueError: the model has no language-model head, or an unknown `v_head_init_strategy`.
        """
        super().__init__(pretrained_model, **wrapper_kwargs)
        if not self._has_lm_head():
            raise ValueError("The model does not have a language model head, please use a model that has one.")
        self.v_head = ValueHead(self.pretrained_model.config, summary_dropout_prob=summary_dropout_prob)
        self._init_weights(v_head_initializer_range, v_head_init_strategy)

    def _has_lm_head(self) -> bool:
        raise NotImplementedError

    def _init_weights(self, initializer_range: float, init_strategy: str | None) -> None:
        if init_strategy == "normal":
            self.v_head.summary.weight.data.normal_(mean=0.0, std=initializer_range)
            self.v_head.summary.bias.data.zero_()
        elif init_strategy is not None:
            raise ValueError(f"v_head_init_strategy must be None or 'normal', got {init_strategy!r}.")

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        return_past_key_values: bool = False,
        return_last_hidden_state: bool = False,
        **kwargs,
    ) -> tuple:
        """Run the wrapped model and the value head on its last hidden state.

        Args:
            input_ids: (batch, seq) token ids (for a seq2seq model, the encoder's; pass `decoder_input_ids` too).
            past_key_values: the key/value cache of an earlier call (a transformers `Cache`), or None. Ignored by a
                prefix-tuning adapter, which supplies its own.
            attention_mask: (batch, seq) 1 for tokens, 0 for padding.
            return_past_key_values: also return the model's key/value cache.
            return_last_hidden_state: also return the last hidden state, `(batch, seq, hidden)`: the input of the
                language-model head (with `logits_to_keep=1` the caller can apply the head itself, in chunks).
            **kwargs: passed to the wrapped model (`labels`, `position_ids`, `decoder_input_ids`,
                `logits_to_keep`, ...); `output_hidden_states` and `return_dict` are forced on.

        Returns:
            `(lm_logits, loss, value)`, then the cache when `return_past_key_values`, then the last hidden state
            when `return_last_hidden_state`: lm_logits (batch, seq, vocab) in float32, loss the model's (None
            without `labels`), value (batch, seq) in the value head's dtype. For a seq2seq model, seq is the
            decoder's length.
        """
        kwargs["output_hidden_states"] = True
        kwargs["return_dict"] = True
        uses_prefix_tuning = (
            self.is_peft_model and self.pretrained_model.active_peft_config.peft_type == "PREFIX_TUNING"
        )
        if past_key_values is not None and not uses_prefix_tuning:
            kwargs[_CACHE] = past_key_values

        output = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

        last_hidden_state = self._last_hidden_state(output)
        if last_hidden_state.device != self.v_head.summary.weight.device:
            last_hidden_state = last_hidden_state.to(self.v_head.summary.weight.device)
        value = self.v_head(last_hidden_state).squeeze(-1)
        lm_logits = output.logits
        if lm_logits.dtype != torch.float32:
            lm_logits = lm_logits.float()
        outputs = (lm_logits, output.loss, value)
        if return_past_key_values:
            outputs += (getattr(output, _CACHE),)
        if return_last_hidden_state:
            outputs += (last_hidden_state,)
        return outputs

    def generate(self, *args, **kwargs) -> Any:
        """The wrapped model's `generate` (see transformers' `GenerationMixin.generate`)."""
        return self.pretrained_model.generate(*args, **kwargs)

    def state_dict(self, *, destination: dict | None = None, prefix: str = "", keep_vars: bool = False) -> dict:
        """The wrapped model's state dict (its own key names, without `pretrained_model.`) plus the value head's
        under `v_head.`; for a peft model, only the value head's (peft saves the adapter itself)."""
        if destination is None:
            destination = {}
        if not self.is_peft_model:
            self.pretrained_model.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        self.v_head.state_dict(destination=destination, prefix=f"{prefix}v_head.", keep_vars=keep_vars)
        return destination

    def post_init(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the value head from the `v_head.` keys of `state_dict` (if any), then place it (and the reward
        `score` head) on the device where the language-model head's output is.

        A model spread over several GPUs by a `device_map` gets, as in 0.11.4, its outputs moved to that device by
        a forward hook, and `is_sequential_parallel` set.

        Raises:
            ValueError: the model is partly offloaded to the CPU or disk; or `state_dict` has only some of the
                value head's weights, or weights of another size.
        """
        v_head_state = {key.split("v_head.", 1)[1]: value for key, value in state_dict.items() if "v_head." in key}
        if v_head_state:
            self.v_head.load_state_dict(v_head_state)

        device_map = getattr(self.pretrained_model, "hf_device_map", None)
        if device_map and ("cpu" in device_map.values() or "disk" in device_map.values()):
            raise ValueError(
                "The model is offloaded on CPU or disk - CPU & disk offloading is not supported for ValueHead models."
            )
        device = self._lm_head_device()
        self.v_head.to(device)
        if self.supports_rm_adapter:
            self.score.to(device)
        if device_map and len(set(device_map.values())) > 1 and not self.is_sequential_parallel:

            def outputs_to_device(module: nn.Module, inputs: Any, outputs: tuple) -> tuple:
                return tuple(out.to(device) if isinstance(out, torch.Tensor) else out for out in outputs)

            self.register_forward_hook(outputs_to_device)
            self.is_sequential_parallel = True

    def _lm_head_device(self) -> torch.device:
        """Device of the language-model head's weights (where the logits come out)."""
        for name, module in self.pretrained_model.named_modules():
            if any(naming in name for naming in self.lm_head_namings) and hasattr(module, "weight"):
                return module.weight.device
        return next(self.pretrained_model.parameters()).device


class AutoModelForCausalLMWithValueHead(_ModelWithValueHead):
    """A causal language model with a value head, as in TRL 0.11.4: `pretrained_model` is an
    `AutoModelForCausalLM` model (or a peft model around one), `v_head` a `ValueHead` on its last hidden state.

    Class attributes:
        transformers_parent_class: `AutoModelForCausalLM`, which `from_pretrained` loads with.
        lm_head_namings: attribute names of a language-model head (`lm_head`, `embed_out`).
        supported_args: the value head's `from_pretrained` arguments: `summary_dropout_prob` (default 0.1),
            `v_head_initializer_range` (default 0.2) and `v_head_init_strategy` (None or `"normal"`).
    """

    transformers_parent_class = AutoModelForCausalLM
    lm_head_namings = ("lm_head", "embed_out")

    def _has_lm_head(self) -> bool:
        return any(hasattr(self.pretrained_model, attribute) for attribute in self.lm_head_namings)

    def _last_hidden_state(self, output: Any) -> torch.Tensor:
        return output.hidden_states[-1]


class AutoModelForSeq2SeqLMWithValueHead(_ModelWithValueHead):
    """An encoder-decoder model with a value head on the decoder's last hidden state, as in TRL 0.11.4:
    `pretrained_model` is an `AutoModelForSeq2SeqLM` model (or a peft model around one).

    Class attributes:
        transformers_parent_class: `AutoModelForSeq2SeqLM`, which `from_pretrained` loads with.
        lm_head_namings: module names of a language-model head (`lm_head`, `embed_out`, `output_projection`).
        supported_args: as `AutoModelForCausalLMWithValueHead`'s.
    """

    transformers_parent_class = AutoModelForSeq2SeqLM
    lm_head_namings = ("lm_head", "embed_out", "output_projection")

    def __init__(self, pretrained_model: PreTrainedModel | PeftModel, **kwargs) -> None:
        super().__init__(pretrained_model, **kwargs)
        self.is_encoder_decoder = True

    def _has_lm_head(self) -> bool:
        return any(
            any(attribute in name for attribute in self.lm_head_namings)
            for name, _ in self.pretrained_model.named_modules()
        )

    def _last_hidden_state(self, output: Any) -> torch.Tensor:
        return output.decoder_hidden_states[-1]
