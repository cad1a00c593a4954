"""chatllama's config sections and defaults, and one clear ConfigError line for each bad setting."""

import json
from pathlib import Path

import pytest

from stackrlhf.chatllama import ChatLlamaConfig, ChatLlamaTrainer, TrainerConfig
from stackrlhf.chatllama.models import check_model_families
from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import TINY_MODEL


def tiny_config(**trainer) -> ChatLlamaConfig:
    config = ChatLlamaConfig.from_yaml("tiny/chatllama")
    return ChatLlamaConfig.from_dict(
        {
            "trainer_config": {**vars(config.trainer), **trainer},
            "actor_config": vars(config.actor),
            "critic_config": vars(config.critic),
            "reward_config": vars(config.reward),
        }
    )


def test_opt_config_holds_chatllamas_published_defaults():
    config = ChatLlamaConfig.from_yaml("opt-1.3b/chatllama")
    assert vars(config.trainer) == vars(TrainerConfig())
    assert (config.trainer.actor_lr, config.trainer.critic_lr, config.trainer.beta_s) == (5e-6, 9e-6, 0.02)
    assert (config.trainer.update_timesteps, config.trainer.batch_size, config.trainer.mode) == (32, 1, "faithful")
    assert (config.actor.model, config.actor.max_tokens, config.actor.min_tokens) == ("facebook/opt-1.3b", 2048, 100)
    assert config.critic.model is None  # unset: the critic starts as a copy of the reward model
    assert config.reward.model == config.critic_model == "facebook/opt-125m"
    assert config.critic.model_head_hidden_size == config.reward.model_head_hidden_size == 2048
    assert config.context_length == 2048


def test_tiny_config_critic_defaults_to_the_reward_checkpoint():
    config = ChatLlamaConfig.from_yaml("tiny/chatllama")
    assert config.critic.model is None and config.critic_model == config.reward.model == TINY_MODEL
    assert config.context_length == 512


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"batch_size": 3, "num_examples": 1, "update_timesteps": 4, "mode": "fixed"},
            r"batch_size 3 does not divide",
        ),
        ({"update_timesteps": 3, "num_episodes": 2, "max_timesteps": 4}, r"update_timesteps 3 does not divide .* 8"),
        ({"batch_size": 2, "update_timesteps": 4, "mode": "faithful"}, r"batch_size 2: faithful mode only works"),
        ({"mode": "ppo"}, r"trainer_config.mode 'ppo'"),
        ({"epochs": 0}, r"trainer_config.epochs 0"),
    ],
)
def test_trainer_config_errors_name_the_field_and_value(settings, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**settings)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"critic_config": {"load_in_8bit": True}}, r"critic_config.load_in_8bit true"),
        ({"actor_config": {"load_in_8bit": True}}, r"actor_config.load_in_8bit true: .* peft_enable"),
        ({"actor_config": {"dtype": "float16"}}, r"actor_config.dtype 'float16'"),
        ({"reward_config": {"model_head_hidden_size": 1}}, r"reward_config.model_head_hidden_size 1"),
        (
            {"reward_config": {"model_head_hidden_size": 64}, "critic_config": {"model_head_hidden_size": 32}},
            r"critic_config.model_head_hidden_size 32: .* copy of the reward model, whose head has 64 units",
        ),
        ({"actor_config": {"modell": "x"}}, r"actor_config: unknown field\(s\) modell"),
        ({"ppo_config": {}}, r"unknown config section\(s\) ppo_config"),
    ],
)
def test_section_errors_name_the_field(sections, message):
    with pytest.raises(ConfigError, match=message):
        ChatLlamaConfig.from_dict(sections)


def test_bad_yaml_is_one_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer_config: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ChatLlamaConfig.from_yaml(path)


def unknown_family_dir(tmp_path: Path, model_type: str) -> str:
    directory = tmp_path / model_type
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(directory)


def test_critic_of_an_unknown_or_unloadable_family_is_rejected(tmp_path):
    unknown = unknown_family_dir(tmp_path, "notamodel")
    with pytest.raises(ConfigError, match=r"critic_config.model '.*notamodel': not a known model family"):
        check_model_families(
            ChatLlamaConfig.from_dict(
                {
                    "actor_config": {"model": TINY_MODEL},
                    "critic_config": {"model": unknown},
                    "reward_config": {"model": TINY_MODEL},
                }
            )
        )
    with pytest.raises(ConfigError, match=r"critic_config.model '.*missing': not a known model family"):
        check_model_families(
            ChatLlamaConfig.from_dict(
                {
                    "actor_config": {"model": TINY_MODEL},
                    "critic_config": {"model": str(tmp_path / "missing")},
                    "reward_config": {"model": TINY_MODEL},
                }
            )
        )


def test_critic_of_another_family_than_the_actor_is_rejected(tmp_path):
    gpt2 = unknown_family_dir(tmp_path, "gpt2")
    sections = {
        "actor_config": {"model": TINY_MODEL},
        "critic_config": {"model": gpt2},
        "reward_config": {"model": TINY_MODEL},
    }
    with pytest.raises(
        ConfigError, match=r"critic_config.model '.*gpt2': family 'gpt2' differs from the actor's 'llama'"
    ):
        check_model_families(ChatLlamaConfig.from_dict(sections))


def test_a_prompt_longer_than_the_context_fails_before_training():
    config = tiny_config()
    long_prompt = "Question: " + "once upon a time " * 200 + "\n\nAnswer: "
    with pytest.raises(ConfigError, match=r"actor_config.max_sequence_length 512: prompt 1 has \d+ tokens"):
        ChatLlamaTrainer(config, ["Question: Hi\n\nAnswer: ", long_prompt])
