"""Exact parameter counts and layer shapes, read from the real model class instantiated on the meta device.

`inspect_model` builds the architecture with accelerate's `init_empty_weights` (no memory, no weights), ties the
embeddings as `from_pretrained` would, and records what the memory formulas need: every linear layer's shape
(`nn.Linear` and GPT-2's `Conv1D`), the parameters bitsandbytes leaves unquantized, the buffers, and the sizes
(hidden, layers, heads, vocabulary) of the activation and KV-cache formulas.
"""

from __future__ import annotations

import math

import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PretrainedConfig
from transformers.pytorch_utils import Conv1D
from transformers.quantizers.base import get_keys_to_not_convert
from transformers.quantizers.quantizers_utils import should_convert_module

from stackrlhf.planner.inventory import LinearLayer, ModelDims, ModelHead, ModelInventory


def meta_model(config: PretrainedConfig, head: ModelHead = "causal_lm") -> torch.nn.Module:
    """The model class of `config` on the meta device, embeddings tied as `from_pretrained` ties them.

    `init_empty_weights` re-registers parameters after `from_config` tied them, so they are tied again here;
    without it, GPT-2, OPT and Falcon would count their output embedding twice.
    """
    auto_class = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    if head == "sequence_classification":
        config.num_labels = 1
    with init_empty_weights():
        model = auto_class.from_config(config)
    model.tie_weights()
    return model


def inspect_model(config: PretrainedConfig, head: ModelHead = "causal_lm") -> ModelInventory:
    """Count parameters and collect layer shapes of `config`'s model with `head` (no memory is allocated)."""
    model = meta_model(config, head)
    linear_layers = tuple(_linear_layers(model))
    skip = list(get_keys_to_not_convert(model)) + list(getattr(model, "_keep_in_fp32_modules", None) or [])
    quantized = frozenset(layer.name for layer in linear_layers if should_convert_module(layer.name, skip))
    return ModelInventory(
        params_total=sum(p.numel() for p in model.parameters()),
        parameter_shapes=tuple(tuple(p.shape) for p in model.parameters()),
        linear_layers=linear_layers,
        quantized_layers=quantized,
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        dims=_dims(config, model),
        architecture=type(model).__name__,
    )


def _linear_layers(model: torch.nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):  # GPT-2: weight stored (in, out)
            in_features, out_features = module.weight.shape
            yield LinearLayer(name, in_features, out_features, module.bias is not None)
        elif isinstance(module, torch.nn.Linear):
            yield LinearLayer(name, module.in_features, module.out_features, module.bias is not None)


def _dims(config: PretrainedConfig, model: torch.nn.Module) -> ModelDims:
    hidden, heads = config.hidden_size, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if config.model_type == "falcon" and not config.new_decoder_architecture:
        kv_heads = 1 if config.multi_query else heads
    intermediate = next(
        (
            getattr(config, key)
            for key in ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size")
            if getattr(config, key, None)
        ),
        4 * hidden,
    )
    gated = any(name.endswith("gate_proj") for name, _ in model.named_modules())
    activation = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None) or "gelu"
    output_layer = model.get_output_embeddings()
    largest = max(
        (
            math.prod(module.weight.shape)
            for module in model.modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not output_layer
        ),
        default=0,
    )
    return ModelDims(
        hidden=hidden,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_dim=kv_heads * (hidden // heads),
        intermediate=intermediate,
        vocab=config.vocab_size,
        gated_mlp=gated,
        activation=str(activation),
        largest_linear=largest,
    )
