"""Value-head models: TRL 0.11.4's checkpoints and outputs, save/load layouts, quantized LoRA policies, the reward
adapter and reference models.

The 0.11.4 checkpoints and outputs under tests/golden/fixtures/ are written by tests/golden/make_trl_checkpoint.py
with TRL 0.11.4 itself.
"""

import json
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Cache,
    OPTConfig,
    T5Config,
    T5ForConditionalGeneration,
)

import stackrlhf.models.modeling_base as modeling_base
from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import TINY_MODEL, resolve_model_name_or_path
from stackrlhf.models.modeling_value_head import (
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    ValueHead,
    create_reference_model,
)
from stackrlhf.recipes import reward
from stackrlhf.recipes.runner import parse_args
from stackrlhf.rewards.scorers import RewardScorer

FIXTURES = Path(__file__).parents[1] / "golden" / "fixtures"
GOLDEN = json.loads((FIXTURES / "trl_checkpoint_outputs.json").read_text())
INPUT_IDS = torch.tensor(GOLDEN["input_ids"])
ATTENTION_MASK = torch.tensor(GOLDEN["attention_mask"])
V_HEAD_KEYS = {"v_head.summary.weight", "v_head.summary.bias"}


def lora(**kwargs) -> LoraConfig:
    return LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **kwargs)


def outputs(model, input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK, **kwargs):
    """(logits, value) of `model` in eval mode, without gradients."""
    model.eval()
    with torch.no_grad():
        logits, _, value = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return logits, value


def assert_golden(model, expected: dict) -> None:
    logits, value = outputs(model)
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(value, torch.tensor(expected["value"]), atol=1e-5, rtol=0)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    return torch.load(path, weights_only=True)


@pytest.fixture
def in_fixtures(monkeypatch):
    """Work in the fixtures directory: the 0.11.4 LoRA checkpoint names its base relative to it."""
    monkeypatch.chdir(FIXTURES)


# ------------------------------------------------------------------------------------------ TRL 0.11.4 checkpoints


@pytest.mark.parametrize("layout", ["plain", "plain_bin", "plain_sharded"])
def test_trl_0114_full_checkpoints_give_its_logits_and_values(layout):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(FIXTURES / f"trl_checkpoint_{layout}")  # a Path
    assert not model.is_peft_model
    assert_golden(model, GOLDEN["plain"])


def test_trl_0114_lora_checkpoint_gives_its_logits_values_and_base_logits(in_fixtures):
    model = AutoModelForCausalLMWithValueHead.from_pretrained("trl_checkpoint_peft")
    assert model.is_peft_model and isinstance(model.pretrained_model, PeftModel)
    assert_golden(model, GOLDEN["peft"])
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # is_trainable=False

    with model.pretrained_model.disable_adapter():
        logits, _ = outputs(model)
    base = AutoModelForCausalLM.from_pretrained("trl_checkpoint_base").eval()
    with torch.no_grad():
        base_logits = base(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK).logits
    torch.testing.assert_close(logits, base_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, torch.tensor(GOLDEN["base_logits"]), atol=1e-5, rtol=0)


def test_is_trainable_makes_the_loaded_adapter_trainable(in_fixtures):
    model = AutoModelForCausalLMWithValueHead.from_pretrained("trl_checkpoint_peft", is_trainable=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("v_head.") for n in trainable)


def test_resaving_a_trl_0114_plain_checkpoint_writes_the_same_file(tmp_path):
    source = FIXTURES / "trl_checkpoint_plain"
    AutoModelForCausalLMWithValueHead.from_pretrained(str(source)).save_pretrained(tmp_path)
    ours, theirs = tensors(tmp_path / "model.safetensors"), tensors(source / "model.safetensors")
    assert ours.keys() == theirs.keys() and V_HEAD_KEYS <= ours.keys()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0)


def test_resaving_a_trl_0114_lora_checkpoint_writes_its_value_head_without_pickle(tmp_path, in_fixtures):
    model = AutoModelForCausalLMWithValueHead.from_pretrained("trl_checkpoint_peft")
    model.save_pretrained(tmp_path / "resaved")
    source, saved = FIXTURES / "trl_checkpoint_peft", tmp_path / "resaved"
    # 0.11.4 pickled the value head into pytorch_model.bin; the same tensors go to model.safetensors
    for ours_name, theirs_name in [("adapter_model.safetensors",) * 2, ("model.safetensors", "pytorch_model.bin")]:
        ours, theirs = tensors(saved / ours_name), tensors(source / theirs_name)
        assert ours.keys() == theirs.keys()
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0)
    assert tensors(saved / "model.safetensors").keys() == V_HEAD_KEYS
    assert not (saved / "pytorch_model.bin").exists()
    assert_golden(AutoModelForCausalLMWithValueHead.from_pretrained(str(saved)), GOLDEN["peft"])


# --------------------------------------------------------------------------------------------- loading and saving


def test_plain_round_trip_keeps_the_value_head_in_model_safetensors(tmp_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, v_head_init_strategy="normal")
    model.v_head.summary.bias.data.fill_(0.5)
    ids = torch.tensor([[1, 346, 306, 414, 383]])
    logits, value = outputs(model, ids, None)
    model.save_pretrained(tmp_path)

    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert V_HEAD_KEYS <= set(f.keys())
        torch.testing.assert_close(f.get_tensor("v_head.summary.weight"), model.v_head.summary.weight.detach())
    assert not (tmp_path / "pytorch_model.bin").exists()
    reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path))
    reloaded_logits, reloaded_value = outputs(reloaded, ids, None)
    torch.testing.assert_close(reloaded_logits, logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(reloaded_value, value, atol=1e-6, rtol=0)


def test_lora_round_trip_saves_adapter_and_value_head_beside_it(tmp_path):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, peft_config=lora(init_lora_weights=False))
    ids = torch.tensor([[1, 346, 306, 414, 383]])
    logits, value = outputs(model, ids, None)
    model.save_pretrained(tmp_path / "policy")  # the directory does not exist yet

    saved = tmp_path / "policy"
    base = json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == resolve_model_name_or_path(TINY_MODEL)  # a real directory: plain peft finds it offline
    assert tensors(saved / "model.safetensors").keys() == V_HEAD_KEYS
    assert not V_HEAD_KEYS & tensors(saved / "adapter_model.safetensors").keys()
    assert not (saved / "pytorch_model.bin").exists()
    reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(saved))
    assert reloaded.is_peft_model
    reloaded_logits, reloaded_value = outputs(reloaded, ids, None)
    torch.testing.assert_close(reloaded_logits, logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(reloaded_value, value, atol=1e-6, rtol=0)


def test_state_dict_is_the_models_plus_v_head_or_only_v_head_with_peft():
    base = AutoModelForCausalLM.from_pretrained(FIXTURES / "trl_checkpoint_base")
    plain = AutoModelForCausalLMWithValueHead.from_pretrained(base)
    assert plain.state_dict().keys() == base.state_dict().keys() | V_HEAD_KEYS
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(
        AutoModelForCausalLM.from_pretrained(FIXTURES / "trl_checkpoint_base"),
        peft_config=LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["c_attn"], fan_in_fan_out=True),
    )
    assert policy.state_dict().keys() == V_HEAD_KEYS


def test_post_init_loads_the_v_head_keys():
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(FIXTURES / "trl_checkpoint_base"))
    weight, bias = torch.full((1, 32), 0.5), torch.tensor([-1.0])
    model.post_init({"v_head.summary.weight": weight, "v_head.summary.bias": bias, "transformer.wte.weight": None})
    torch.testing.assert_close(model.v_head.summary.weight.detach(), weight)
    torch.testing.assert_close(model.v_head.summary.bias.detach(), bias)


def test_push_to_hub_uploads_what_save_pretrained_writes(monkeypatch):
    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": f"user/{repo_id}"})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.update(repo_id=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()))
        uploaded["keys"] = tensors(Path(folder_path) / "model.safetensors").keys()

    monkeypatch.setattr(modeling_base.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(modeling_base.HfApi, "upload_folder", upload_folder)
    AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL).push_to_hub("policy")
    assert uploaded["repo_id"] == "user/policy" and "model.safetensors" in uploaded["files"]
    assert V_HEAD_KEYS <= uploaded["keys"]


def test_from_pretrained_wraps_a_loaded_model_or_peft_model(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(base)
    assert model.pretrained_model is base and not model.is_peft_model and not model.supports_rm_adapter
    assert model.config is base.config and model.current_device == "cpu" and not model.is_sequential_parallel

    policy = AutoModelForCausalLMWithValueHead.from_pretrained(base, peft_config=lora())
    assert isinstance(policy.pretrained_model, PeftModel) and policy.is_peft_model
    again = AutoModelForCausalLMWithValueHead.from_pretrained(policy.pretrained_model)
    assert again.pretrained_model is policy.pretrained_model and again.is_peft_model


def test_from_pretrained_rejects_bad_arguments(tiny_model_dir):
    with pytest.raises(ValueError, match="string or a PreTrainedModel"):
        AutoModelForCausalLMWithValueHead.from_pretrained(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="peft.PeftConfig"):
        AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, peft_config={"r": 4})
    with pytest.raises(ValueError, match="only be used with a PeftModel"):
        AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, reward_adapter=str(tiny_model_dir))
    with pytest.raises(ConfigError, match="quantization_config"):
        AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, load_in_8bit=True, quantization_config=object())
    with pytest.raises(ValueError, match="v_head_init_strategy"):
        AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, v_head_init_strategy="xavier")


def test_v_head_normal_init_uses_the_initializer_range():
    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        TINY_MODEL, v_head_init_strategy="normal", v_head_initializer_range=1e-3, summary_dropout_prob=0.0
    )
    weight = model.v_head.summary.weight.detach()
    assert weight.shape == (1, 64) and 0 < weight.std() < 3e-3
    assert torch.count_nonzero(model.v_head.summary.bias) == 0
    assert isinstance(model.v_head.dropout, torch.nn.Identity)
    default = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    assert isinstance(default.v_head.dropout, torch.nn.Dropout) and default.v_head.dropout.p == 0.1
    assert default.v_head.summary.weight.detach().abs().max() > 1e-2  # nn.Linear's default init


# ------------------------------------------------------------------------------------------------------- forward


def test_forward_returns_logits_loss_and_value_with_their_shapes():
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    ids = torch.tensor([[1, 346, 306, 414, 383], [1, 400, 21, 0, 0]])
    mask = (ids != 0).long()
    model.eval()
    logits, loss, value = model(input_ids=ids, attention_mask=mask)
    assert logits.shape == (2, 5, 512) and logits.dtype == torch.float32
    assert loss is None
    assert value.shape == (2, 5) and value.dtype == torch.float32 and value.requires_grad

    _, loss, _ = model(input_ids=ids, attention_mask=mask, labels=ids)
    assert loss.ndim == 0 and loss > 0
    expected = model.v_head(
        model.pretrained_model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    )
    torch.testing.assert_close(value, expected.squeeze(-1))


def test_forward_returns_and_takes_the_key_value_cache():
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    ids = torch.tensor([[1, 346, 306, 414, 383]])
    full_logits, full_value = outputs(model, ids, None)
    with torch.no_grad():
        *_, cache = model(input_ids=ids[:, :-1], return_past_key_values=True)
        assert isinstance(cache, Cache)
        logits, _, value = model(input_ids=ids[:, -1:], past_key_values=cache)
    torch.testing.assert_close(logits[:, -1], full_logits[:, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(value[:, -1], full_value[:, -1], atol=1e-5, rtol=0)


def test_generate_is_the_wrapped_models():
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    ids = torch.tensor([[1, 346, 306]])
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 7)
    torch.testing.assert_close(generated, model.pretrained_model.generate(ids, max_new_tokens=4, do_sample=False))


@pytest.mark.parametrize("peft_config", [None, lora()], ids=["plain", "lora"])
def test_is_gradient_checkpointing_follows_the_model_without_deprecation_warnings(recwarn, peft_config):
    """TRL's `unwrap_model_for_generation` reads it before every `PPOTrainer.generate`; transformers 5.24 warns on
    the model's old `is_gradient_checkpointing` name, so the wrapper reads `is_activation_checkpointing`."""
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, peft_config=peft_config)
    recwarn.clear()
    assert model.is_gradient_checkpointing is False
    assert not [w for w in recwarn.list if "checkpointing" in str(w.message)]
    model.pretrained_model.activation_checkpointing_enable()
    recwarn.clear()
    assert model.is_gradient_checkpointing is True
    assert not [w for w in recwarn.list if "checkpointing" in str(w.message)]


def test_value_head_width_and_dtype():
    head = ValueHead(T5Config(d_model=8), summary_dropout_prob=0.0)
    value = head(torch.randn(2, 3, 8, dtype=torch.bfloat16))
    assert value.shape == (2, 3, 1) and value.dtype == torch.float32  # half-precision hidden states are upcast
    assert ValueHead(OPTConfig(hidden_size=32, word_embed_proj_dim=16)).summary.in_features == 16


def test_seq2seq_value_head_forward_shapes():
    config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, decoder_start_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(T5ForConditionalGeneration(config))
    assert model.is_encoder_decoder and model.v_head.summary.in_features == 16
    model.eval()
    ids, decoder_ids = torch.randint(1, 64, (2, 7)), torch.randint(1, 64, (2, 4))
    logits, loss, value = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=decoder_ids)
    assert logits.shape == (2, 4, 64) and loss is None and value.shape == (2, 4)
    *_, cache = model(input_ids=ids, decoder_input_ids=decoder_ids, return_past_key_values=True)
    assert isinstance(cache, Cache)


# ------------------------------------------------------------------------------------------- quantized LoRA bases


@pytest.mark.parametrize(
    ("quantization", "layer_type"),
    [({"load_in_8bit": True}, bnb.nn.Linear8bitLt), ({"load_in_4bit": True}, bnb.nn.Linear4bit)],
)
def test_lora_on_a_quantized_base_trains_only_lora_and_the_value_head(monkeypatch, quantization, layer_type):
    prepared = {}

    def spy(model, **kwargs):
        prepared.update(kwargs)
        return prepare_model_for_kbit_training(model, **kwargs)

    prepare_model_for_kbit_training = modeling_base.prepare_model_for_kbit_training
    monkeypatch.setattr(modeling_base, "prepare_model_for_kbit_training", spy)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        TINY_MODEL, peft_config=lora(), gradient_checkpointing_kwargs={"use_reentrant": False}, **quantization
    )
    assert prepared == {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    assert isinstance(model.pretrained_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, layer_type)
    assert model.is_peft_model and (model.is_loaded_in_8bit or model.is_loaded_in_4bit)

    ids = torch.tensor([[1, 346, 306, 414, 383], [1, 400, 21, 87, 9]])
    model.train()
    logits, loss, value = model(input_ids=ids, labels=ids)
    (loss + value.square().mean()).backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert V_HEAD_KEYS <= with_grad and all("lora_" in n for n in with_grad - V_HEAD_KEYS)
    assert any("lora_B" in n and model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)

    model.eval()
    with torch.no_grad(), model.pretrained_model.disable_adapter():
        disabled = model(input_ids=ids)[0]
        base = model.pretrained_model.get_base_model()(input_ids=ids).logits
    torch.testing.assert_close(disabled, base)


# --------------------------------------------------------------------------------------------- reward adapter


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A LoRA reward model (score head in modules_to_save) trained for two steps by the reward recipe."""
    output_dir = tmp_path_factory.mktemp("reward")
    args = ["--max_steps", "2", "--max_samples", "16", "--eval_samples", "4", "--per_device_train_batch_size", "4"]
    reward.main(*parse_args(reward.make_parser(), [*args, "--output_dir", str(output_dir)]))
    return output_dir


@pytest.fixture
def policy_with_reward_adapter(reward_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLMWithValueHead.from_pretrained(
        TINY_MODEL,
        peft_config=lora(init_lora_weights=False),
        reward_adapter=str(reward_dir),
        reward_adapter_name="reward_model_adapter",
    )


def test_compute_reward_score_matches_the_standalone_reward_model(reward_dir, policy_with_reward_adapter):
    model = policy_with_reward_adapter
    assert model.supports_rm_adapter and model.rm_adapter_name == "reward_model_adapter"
    assert not model.score.weight.requires_grad and model.score.weight.shape == (1, 64)

    scorer = RewardScorer.from_pretrained(str(reward_dir))
    texts = ["Question: Can you help me?\n\nAnswer: Sure, happy to help.", "Question: Hi\n\nAnswer: No."]
    tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    batch = tokenizer([text + tokenizer.eos_token for text in texts], padding=True, return_tensors="pt")
    scores = model.compute_reward_score(**batch)
    assert scores.shape == (*batch["input_ids"].shape, 1) and not scores.requires_grad
    last = batch["attention_mask"].sum(dim=1) - 1
    torch.testing.assert_close(scores[torch.arange(2), last, 0], torch.tensor(scorer(texts)), atol=1e-5, rtol=0)
    with torch.no_grad():
        standalone = scorer.model(**batch).logits[:, 0]
    torch.testing.assert_close(scores[torch.arange(2), last, 0], standalone, atol=1e-5, rtol=0)


def test_compute_reward_score_leaves_the_policy_as_it_was(policy_with_reward_adapter):
    model = policy_with_reward_adapter
    ids = torch.tensor([[1, 346, 306, 414, 383]])
    before, _ = outputs(model, ids, None)
    model.train()
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}

    model.compute_reward_score(ids)
    assert model.pretrained_model.active_adapter == "default" and model.training
    assert {name: p.requires_grad for name, p in model.named_parameters()} == requires_grad
    after, _ = outputs(model, ids, None)
    torch.testing.assert_close(after, before)

    with pytest.raises(IndexError):
        model.compute_reward_score(torch.full((1, 4), 10_000))  # out of the vocabulary: the forward raises
    assert model.pretrained_model.active_adapter == "default"
    assert {name: p.requires_grad for name, p in model.named_parameters()} == requires_grad


def test_compute_reward_score_needs_a_reward_adapter():
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, peft_config=lora())
    with pytest.raises(ValueError, match="does not support reward modeling adapter"):
        model.compute_reward_score(torch.tensor([[1, 2]]))


def test_reward_adapter_without_score_head_is_rejected(tmp_path):
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, peft_config=lora())
    policy.pretrained_model.save_pretrained(tmp_path)  # a LoRA adapter with no score head
    with pytest.raises(ValueError, match="no score head"):
        AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, peft_config=lora(), reward_adapter=str(tmp_path))


# ------------------------------------------------------------------------------------------------ reference model


def test_create_reference_model_is_a_frozen_copy_in_eval_mode():
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL).train()
    ref = create_reference_model(model)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in model.parameters()) and model.training
    for (name, param), (ref_name, ref_param) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert name == ref_name and param is not ref_param and torch.equal(param, ref_param)
    ids = torch.tensor([[1, 346, 306]])
    torch.testing.assert_close(outputs(ref, ids, None), outputs(model, ids, None))


@pytest.mark.parametrize("pattern", [None, "model.layers.{layer}"])
def test_create_reference_model_shares_the_first_layers(pattern):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    ref = create_reference_model(model, num_shared_layers=2, pattern=pattern)
    for name, param in model.named_parameters():
        shared = name.startswith("pretrained_model.model.embed_tokens") or any(
            f"model.layers.{i}." in name for i in (0, 1)
        )
        assert (ref.get_parameter(name) is param) == shared, name
        assert param.requires_grad != shared, name  # the shared layers are frozen in the policy too
        assert not ref.get_parameter(name).requires_grad
    assert not ref.training


def test_create_reference_model_rejects_an_unknown_layer_pattern():
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    with pytest.raises(ValueError, match="Layer pattern could not be matched"):
        create_reference_model(model, num_shared_layers=1, pattern="decoder.block.{layer}")
    with pytest.raises(ValueError, match="Layer pattern could not be matched"):
        create_reference_model(model, num_shared_layers=99)


@pytest.mark.parametrize(("upcast", "dtype"), [(True, torch.float32), (False, torch.bfloat16)])
def test_a_quantized_base_keeps_its_16_bit_weights_when_asked(upcast, dtype):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        TINY_MODEL,
        load_in_8bit=True,
        dtype=torch.bfloat16,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        upcast_non_quantized=upcast,
    )
    assert model.pretrained_model.get_input_embeddings().weight.dtype == dtype
    assert model.pretrained_model.base_model.model.model.norm.weight.dtype == dtype
    assert model.pretrained_model.is_gradient_checkpointing
    logits, _, values = model(input_ids=torch.tensor([[1, 5, 6, 7]]))
    (logits.float().sum() + values.float().sum()).backward()
    trained = {name for name, param in model.named_parameters() if param.grad is not None}
    assert trained and all("lora_" in name or name.startswith("v_head.") for name in trained)
