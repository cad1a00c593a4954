"""Parameter counts of the bundled configs: exact, and equal to the published sizes."""

import pytest

from stackrlhf.planner import bundled_models, plan
from stackrlhf.planner.configs import load_model_config
from stackrlhf.planner.counting import inspect_model, meta_model

PUBLISHED = {
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,
    "meta-llama/Llama-2-13b-hf": 13_015_864_320,
    "meta-llama/Llama-2-70b-hf": 68_976_648_192,
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    "EleutherAI/gpt-neox-20b": 20_554_567_680,
    "tiiuae/falcon-7b": 6_921_720_704,
    "huggyllama/llama-30b": 32_528_943_616,
    "facebook/opt-1.3b": 1_315_758_080,
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", sorted(bundled_models()))
def test_plan_counts_every_parameter_of_the_meta_model(name):
    model = meta_model(load_model_config(name))
    assert plan(model=name, stage="sft").params_total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_bundled_configs_have_the_published_sizes(name):
    assert inspect_model(load_model_config(name)).params_total == PUBLISHED[name]


def test_tied_embeddings_count_once():
    inventory = inspect_model(load_model_config("gpt2"))
    assert "lm_head" not in inventory.quantized_layers  # output embeddings stay floating point
    assert inventory.params_total == PUBLISHED["gpt2"]


def test_bundled_tiny_model_plans(tiny_model_dir):
    result = plan(model="stackrlhf/stories260K", stage="ppo", quantization="none", lora_r=8, batch_size=4)
    assert 200_000 < result.params_total < 300_000
    assert result.fits and result.max_batch_size > 4
    assert plan(model=str(tiny_model_dir), stage="sft", quantization="none", lora_r=8).params_total == (
        result.params_total
    )
