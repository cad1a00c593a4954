"""The plan's components, monotonicity, sanity anchors and error messages."""

import pytest

from stackrlhf.errors import ConfigError
from stackrlhf.planner import plan
from stackrlhf.planner.estimate import GIB

NEOX = "EleutherAI/gpt-neox-20b"


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
@pytest.mark.parametrize("quantization", ["none", "bf16", "8bit", "4bit"])
def test_bigger_batches_and_responses_never_need_less(stage, quantization):
    base = dict(model="gpt2", stage=stage, quantization=quantization, lora_r=8)
    batches = [plan(**base, batch_size=b, mini_batch_size=2, max_batch=False).peak_bytes for b in (1, 2, 4, 8, 16)]
    lengths = [plan(**base, response_length=n, max_batch=False).peak_bytes for n in (1, 32, 128, 512)]
    assert batches == sorted(batches) and batches[0] < batches[-1]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]


def test_verdicts_are_monotonic_in_card_size_and_max_batch_fits():
    result = plan(model="meta-llama/Llama-2-7b-hf", quantization="8bit", gpu_memory_gb=24)
    verdicts = list(result.verdicts.values())
    assert verdicts == sorted(verdicts)  # False ... True
    largest = result.max_batch_size
    assert plan(result.settings, batch_size=largest).fits
    assert not plan(result.settings, batch_size=largest + 1).fits


def test_eight_bit_weights_are_about_one_byte_per_parameter():
    result = plan(model=NEOX, stage="ppo", quantization="8bit", lora_r=16, batch_size=1, mini_batch_size=1)
    components = result.components
    quantized_gb = (components["quantized_weights"] + components["quantization_constants"]) / 1e9
    assert 0.9 < quantized_gb / (result.params_total / 1e9) < 1.0  # embeddings are not quantized
    assert 1.1 < result.peak_bytes / 1e9 / (result.params_total / 1e9) < 1.4  # the trl-peft write-up: 1.2-1.4 GB/B


def test_four_bit_double_quant_shrinks_only_the_constants():
    plain = plan(model="huggyllama/llama-30b", quantization="4bit", batch_size=1, mini_batch_size=1)
    double = plan(plain.settings, double_quant=True)
    assert double.components["quantized_weights"] == plain.components["quantized_weights"]
    # fp32 absmax per 64 values (0.5 bit/param) becomes uint8 + a second level (about 0.127 bit/param)
    ratio = double.components["quantization_constants"] / plain.components["quantization_constants"]
    assert 0.24 < ratio < 0.27


def test_lora_and_checkpointing_reduce_memory():
    full = plan(model="gpt2", stage="sft", quantization="bf16", lora_r=0, gradient_checkpointing=False)
    lora = plan(full.settings, lora_r=16)
    checkpointed = plan(lora.settings, gradient_checkpointing=True)
    assert full.components["optimizer_states"] > 100 * lora.components["optimizer_states"]
    assert checkpointed.components["activations"] < lora.components["activations"]


def test_chatllama_holds_three_models():
    """Actor, critic and reward model (chatllama has no reference model), against one shared base."""
    shared = plan(model="facebook/opt-1.3b", quantization="bf16", lora_r=16)
    chatllama = plan(shared.settings, design="chatllama")
    weights = shared.components["unquantized_weights"]
    assert 1.9 * weights < chatllama.components["other_models"] < 2.1 * weights
    assert chatllama.peak_bytes > shared.peak_bytes + 1.9 * weights


def test_json_fields():
    values = plan(model="gpt2", quantization="4bit").to_dict()
    assert isinstance(values["params_total"], int) and isinstance(values["peak_bytes"], int)
    assert isinstance(values["fits"], bool) and set(values["verdicts"]) == {"16GB", "24GB", "40GB", "80GB"}
    assert values["peak_bytes"] > values["peak_allocated_bytes"] > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "no-such/model-xyz"}, "bundled models: EleutherAI/gpt-neox-20b"),
        ({"model": "gpt2", "lora_target_modules": ["q_proj"]}, "its linear layers are: c_attn, c_fc, c_proj"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"response_length": 0}, "response_length"),
        ({"quantization": "8bit", "double_quant": True}, "double_quant applies to 4bit"),
        ({"quantization": "4bit", "lora_r": 0}, "set lora_r > 0"),
    ],
)
def test_bad_settings_name_the_value(overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan(**{"model": "gpt2", **overrides})


def test_headline_cases_on_a_24gb_card():
    for model, quantization in [
        ("meta-llama/Llama-2-7b-hf", "8bit"),
        ("meta-llama/Llama-2-13b-hf", "4bit"),
        ("huggyllama/llama-30b", "4bit"),
    ]:
        result = plan(model=model, quantization=quantization, batch_size=1, mini_batch_size=1, double_quant=False)
        assert result.peak_bytes < 24 * GIB, model


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_keeping_non_quantized_weights_16_bit_halves_them_and_lowers_the_peak(quantization):
    upcast = plan(model="EleutherAI/gpt-neox-20b", stage="ppo", quantization=quantization, batch_size=1)
    kept = plan(upcast.settings, upcast_non_quantized=False)
    # the weights halve; a few float32 buffers (rotary frequencies) do not
    assert kept.components["unquantized_weights"] * 2 == pytest.approx(
        upcast.components["unquantized_weights"], rel=1e-6
    )
    assert kept.components["quantized_weights"] == upcast.components["quantized_weights"]
    assert kept.peak_bytes < upcast.peak_bytes


def test_the_plan_uses_the_ppo_steps_own_head_chunk():
    from stackrlhf.planner.activations import HEAD_CHUNK_ELEMENTS
    from stackrlhf.trainer.lean_forward import CHUNK_ELEMENTS

    assert HEAD_CHUNK_ELEMENTS == CHUNK_ELEMENTS


def test_a_quantized_step_plans_its_largest_weight_dequantized():
    """bitsandbytes' int8 backward (and every 4-bit matmul) materialises the largest weight in floating point."""
    from stackrlhf.planner.activations import dequantized_weight_bytes
    from stackrlhf.planner.estimate import _inventory

    dims = _inventory("EleutherAI/gpt-neox-20b", "causal_lm").dims
    assert dims.largest_linear == 24576 * 6144  # the MLP's dense_h_to_4h / dense_4h_to_h
    assert dequantized_weight_bytes(dims, "8bit", 4) == 24576 * 6144 * 4
    assert dequantized_weight_bytes(dims, "4bit", 4) == 24576 * 6144 * 2  # bfloat16 compute dtype
    assert dequantized_weight_bytes(dims, "bf16", 2) == 0
    plan_8bit = plan(model="EleutherAI/gpt-neox-20b", stage="ppo", quantization="8bit", max_batch=False)
    assert plan_8bit.components["dequantized_weight"] == 24576 * 6144 * 4
