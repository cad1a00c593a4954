import shutil

import bitsandbytes as bnb
import pytest
import torch
from trl import ModelConfig

from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import TINY_MODEL
from stackrlhf.models.loading import (
    build_peft_config,
    check_adapter_dir,
    check_model_config,
    check_model_path,
    load_model,
    load_tokenizer,
    read_adapter,
    skeleton_model,
)


def _tiny(**kwargs) -> ModelConfig:
    return ModelConfig(model_name_or_path=TINY_MODEL, **kwargs)


@pytest.mark.parametrize(
    ("quantization", "layer_type"),
    [
        ({"load_in_8bit": True}, bnb.nn.Linear8bitLt),
        ({"load_in_4bit": True, "use_bnb_nested_quant": True}, bnb.nn.Linear4bit),
    ],
)
def test_quantized_base_takes_a_lora_training_step(tiny_model_dir, quantization, layer_type):
    model_args = _tiny(use_peft=True, lora_r=4, lora_target_modules=["q_proj", "v_proj", "gate_proj"], **quantization)
    model = load_model(model_args, with_peft=True)
    tokenizer = load_tokenizer(model_args)

    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, layer_type)
    if layer_type is bnb.nn.Linear4bit:
        assert q_proj.base_layer.weight.quant_state.quant_type == "nf4"
        assert q_proj.base_layer.weight.quant_state.nested  # double quantization
    trainable = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    frozen_before = q_proj.base_layer.weight.detach().clone()

    batch = tokenizer(["Question: Where is the ball?\n\nAnswer: In the park."], return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    changed = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[name])]
    assert any("lora_B" in name for name in changed)
    assert torch.equal(q_proj.base_layer.weight, frozen_before)


def test_sequence_classification_head_for_reward_models(tiny_model_dir):
    model = load_model(_tiny(), task="sequence_classification")
    assert model.config.num_labels == 1
    assert model.config.pad_token_id is not None
    logits = model(input_ids=torch.tensor([[1, 300, 301]])).logits
    assert logits.shape == (1, 1)


def test_adapters_record_the_bundled_models_directory_as_their_base(tiny_model_dir):
    model = load_model(_tiny())
    assert model.config._name_or_path == str(tiny_model_dir)  # plain peft and transformers find it offline


def test_eight_and_four_bit_together_is_refused():
    args = _tiny()
    args.load_in_8bit = args.load_in_4bit = True
    with pytest.raises(ConfigError, match="load_in_8bit and load_in_4bit"):
        check_model_config(args)


def test_training_a_quantized_base_needs_lora():
    with pytest.raises(ConfigError, match="--use_peft"):
        check_model_config(_tiny(load_in_8bit=True), training=True)


def test_unknown_lora_target_names_the_real_layers(tiny_model_dir):
    model_args = _tiny(use_peft=True, lora_target_modules=["query_key_value", "q_proj"])
    model = load_model(_tiny())
    with pytest.raises(ConfigError) as err:
        build_peft_config(model_args, model)
    message = str(err.value)
    assert "query_key_value" in message and "q_proj" in message.split("linear layers are:")[1]
    assert "\n" not in message


def test_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load"):
        load_model(ModelConfig(model_name_or_path=str(tmp_path / "no-such-model")))


@pytest.mark.parametrize("task", ["causal_lm", "sequence_classification"])
def test_skeleton_checks_lora_targets_without_weights(tiny_model_dir, task):
    skeleton = skeleton_model(_tiny(), task=task)
    assert all(p.device.type == "meta" for p in skeleton.parameters())
    args = _tiny(use_peft=True, lora_target_modules=["q_proj", "v_proj"], lora_task_type="SEQ_CLS")
    assert build_peft_config(args, skeleton).target_modules == {"q_proj", "v_proj"}
    with pytest.raises(ConfigError, match="query_key_value"):
        build_peft_config(_tiny(use_peft=True, lora_target_modules=["query_key_value"]), skeleton)


def test_a_missing_local_model_path_says_so(tmp_path):
    for load in (load_model, load_tokenizer, skeleton_model):
        with pytest.raises(ConfigError, match=r"no such directory\.$"):
            load(ModelConfig(model_name_or_path=str(tmp_path / "no" / "such" / "model")))


def test_a_truncated_checkpoint_is_one_error_naming_the_model(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="model .*model': cannot load it"):
        load_model(ModelConfig(model_name_or_path=str(tmp_path / "model")))
    with pytest.raises(ConfigError, match=r"model\.safetensors: not a readable safetensors file"):
        check_model_path(str(tmp_path / "model"), "model_name_or_path")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"adapter_config\.json: not valid JSON \(Expecting property name"),
        ("[1, 2]", r"adapter_config\.json: expected a JSON object, got list"),
        ('{"r": 8}', "no base_model_name_or_path"),
    ],
)
def test_a_broken_adapter_config_is_one_error_naming_the_file(tmp_path, content, message):
    (tmp_path / "adapter_config.json").write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_adapter(tmp_path)


def test_an_adapter_without_weights_is_named(reward_dirs, tmp_path):
    shutil.copytree(reward_dirs["adapter"], tmp_path / "rm")
    (tmp_path / "rm" / "adapter_model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"^--reward_adapter .*rm: the adapter has no weights"):
        check_adapter_dir(str(tmp_path / "rm"), "reward_adapter")


def test_a_truncated_reward_adapter_fails_loading_in_one_line(reward_dirs, tmp_path):
    from peft import LoraConfig

    from stackrlhf.models.modeling_value_head import AutoModelForCausalLMWithValueHead

    shutil.copytree(reward_dirs["adapter"], tmp_path / "rm")
    weights = tmp_path / "rm" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    lora = LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"])
    with pytest.raises(ConfigError, match=r"reward adapter .*rm: cannot load it"):
        AutoModelForCausalLMWithValueHead.from_pretrained(
            TINY_MODEL, peft_config=lora, reward_adapter=str(tmp_path / "rm")
        )
