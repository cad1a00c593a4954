"""The recipes' one reward choice: the reward adapter on the shared base or a separate reward model, checked once."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import TINY_MODEL
from stackrlhf.models.modeling_value_head import AutoModelForCausalLMWithValueHead
from stackrlhf.rewards import (
    AdapterRewardScorer,
    RewardScorer,
    VaderSentimentReward,
    build_reward,
    build_sentiment_reward,
    check_reward_source,
)

TEXTS = ["Question: Is it safe?\n\nAnswer: Yes, it is.", "Question: Why?\n\nAnswer: Because."]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")


@pytest.fixture
def policy(reward_dirs):
    """A LoRA policy with a value head on the tiny base, carrying the reward adapter (shared base)."""
    torch.manual_seed(0)
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return AutoModelForCausalLMWithValueHead.from_pretrained(
        TINY_MODEL, peft_config=lora, reward_adapter=str(reward_dirs["adapter"])
    )


def test_a_reward_adapter_or_a_reward_model_passes(reward_dirs):
    check_reward_source(str(reward_dirs["adapter"]), None)
    check_reward_source(None, str(reward_dirs["merged"]))
    check_reward_source("owner/reward-adapter", None)  # a Hub id: loading it tells
    check_reward_source(None, None)  # whether a reward is required is the recipe's business


def test_a_causal_lm_adapter_is_not_a_reward_adapter(tmp_path, tiny_model_dir):
    lora = LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"])
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(tmp_path / "sft")
    with pytest.raises(ConfigError, match=r"a causal_lm adapter, not a reward model's \(SEQ_CLS"):
        check_reward_source(str(tmp_path / "sft"), None)


@pytest.mark.parametrize(
    ("reward_adapter", "reward_model", "message"),
    [
        ("{adapter}", "{merged}", r"^give either --reward_adapter \(shared base\) or --reward_model .* not both\.$"),
        ("does/not/exist/here", None, r"^--reward_adapter does/not/exist/here: no such directory\.$"),
        ("./missing", None, r"^--reward_adapter ./missing: no such directory\.$"),
        ("{merged}", None, r"--reward_adapter .*merged: no adapter_config\.json in it\.$"),
    ],
)
def test_a_bad_reward_source_is_one_clear_error(reward_dirs, reward_adapter, reward_model, message):
    paths = {name: str(path) for name, path in reward_dirs.items()}
    reward_adapter, reward_model = (value and value.format(**paths) for value in (reward_adapter, reward_model))
    with pytest.raises(ConfigError, match=message):
        check_reward_source(reward_adapter, reward_model)


def test_build_reward_needs_exactly_one_source(reward_dirs, tokenizer):
    with pytest.raises(ConfigError, match="no reward: give --reward_adapter PATH"):
        build_reward(None, tokenizer, batch_size=2, max_length=64)
    with pytest.raises(ConfigError, match="not both"):
        build_reward(
            None,
            tokenizer,
            reward_adapter=str(reward_dirs["adapter"]),
            reward_model=str(reward_dirs["merged"]),
            batch_size=2,
            max_length=64,
        )


def test_the_shared_base_and_the_separate_model_score_alike(policy, reward_dirs, tokenizer):
    shared = build_reward(
        policy, tokenizer, reward_adapter=str(reward_dirs["adapter"]), batch_size=2, max_length=64, device="cpu"
    )
    separate = build_reward(policy, tokenizer, reward_model=str(reward_dirs["merged"]), batch_size=2, max_length=64)
    assert isinstance(shared.fn, AdapterRewardScorer) and shared.separate_model is None
    assert shared.name == f"reward adapter {reward_dirs['adapter']}"
    assert isinstance(separate.fn, RewardScorer) and separate.separate_model is separate.fn.model
    assert separate.name == f"reward model {reward_dirs['merged']}"
    assert shared.fn(TEXTS) == pytest.approx(separate.fn(TEXTS), abs=1e-4)


def test_scoring_with_the_reward_adapter_leaves_the_policy_adapter_active(policy, reward_dirs, tokenizer):
    """The reward adapter is switched in for each batch (`compute_reward_score`) and the policy's switched back."""
    reward = build_reward(policy, tokenizer, reward_adapter=str(reward_dirs["adapter"]), batch_size=1, max_length=64)
    ids = tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    policy.train()
    with torch.no_grad():
        before = policy(ids)[0]
    scores = reward.fn(TEXTS)  # two batches: two switches there and back
    assert len(scores) == 2 and scores[0] != scores[1]
    assert policy.pretrained_model.active_adapter == "default" and policy.training
    with torch.no_grad():
        torch.testing.assert_close(policy(ids)[0], before)
    with policy.pretrained_model.disable_adapter(), torch.no_grad():
        assert not torch.allclose(policy(ids)[0], before)  # the policy adapter is really the one in use


def test_the_sentiment_reward_is_vader_without_a_classifier():
    reward = build_sentiment_reward(None)
    assert isinstance(reward.fn, VaderSentimentReward) and reward.separate_model is None
    assert reward.name == "VADER compound sentiment"


def test_a_classifier_that_cannot_load_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="--reward_model .*: cannot load it"):
        build_sentiment_reward(str(tmp_path / "missing-classifier"))
