"""The planner's weight bytes against what bitsandbytes really stores for small models loaded in 8 and 4 bits."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from stackrlhf.planner.counting import inspect_model
from stackrlhf.planner.quantization import weight_bytes

SMALL_MODELS = {
    "llama": (
        LlamaForCausalLM,
        LlamaConfig(
            vocab_size=320,
            hidden_size=96,
            intermediate_size=200,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        ),
    ),
    "gpt2": (GPT2LMHeadModel, GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=64)),
}
QUANTIZATIONS = {
    "8bit": (BitsAndBytesConfig(load_in_8bit=True), False),
    "4bit": (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"), False),
    "4bit-double": (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
        True,
    ),
}


def _stored_tensors(model: torch.nn.Module):
    """Every tensor the loaded model keeps: parameters, buffers, 8-bit `SCB`, 4-bit quant states (nested too)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        yield tensor
        if getattr(tensor, "SCB", None) is not None:
            yield tensor.SCB
        state = getattr(tensor, "quant_state", None)
        while state is not None:
            yield from (t for t in (state.absmax, state.code, state.offset) if t is not None)
            state = state.state2


def _allocated_bytes(model: torch.nn.Module) -> int:
    storages = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in _stored_tensors(model)}
    return sum(nbytes for _, nbytes in storages)


@pytest.fixture(scope="module", params=sorted(SMALL_MODELS))
def saved_model(request, tmp_path_factory):
    model_class, config = SMALL_MODELS[request.param]
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param)
    model_class(config).save_pretrained(path)
    return path, config


@pytest.mark.parametrize("name", sorted(QUANTIZATIONS))
def test_weight_bytes_equal_what_bitsandbytes_stores(saved_model, name):
    path, config = saved_model
    quantization_config, double_quant = QUANTIZATIONS[name]
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization_config, dtype=torch.float32)
    planned = weight_bytes(inspect_model(config), name[:4], double_quant, float_bytes=4)
    assert planned.total == _allocated_bytes(model)
    assert planned.quantized > 0 and planned.constants > 0


def test_unquantized_model_bytes_are_parameters_and_buffers(saved_model):
    path, config = saved_model
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    planned = weight_bytes(inspect_model(config), "none", False, float_bytes=4)
    assert planned.quantized == planned.constants == 0
    assert planned.total == _allocated_bytes(model)
