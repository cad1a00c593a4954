"""`PPOTrainer.state_dict` / `load_state_dict` (what a checkpoint resumes), and `PPOTrainer` as the loop's
`RLTrainer`."""

import inspect

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from stackrlhf import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import TINY_MODEL, resolve_model_name_or_path
from stackrlhf.trainer.checkpointing import load_state, save_state
from stackrlhf.trainer.protocol import RLTrainer, RLTrainerConfig

VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD
SCORES = [torch.tensor(1.0), torch.tensor(-3.0)]


def build_trainer():
    """A trainer whose every piece of state moves in a step: score scaling (running moments), the adaptive KL
    controller, Adam, and a halving learning rate."""
    torch.manual_seed(0)  # the same initial value head every time
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name_or_path(TINY_MODEL))
    config = PPOConfig(
        batch_size=2, mini_batch_size=1, ppo_epochs=2, learning_rate=1e-3, use_score_scaling=True, use_score_norm=True
    )
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = PPOTrainer(config, model, None, tokenizer, optimizer=optimizer, lr_scheduler=scheduler)
    queries = [tokenizer.encode(text, return_tensors="pt")[0] for text in ("Once upon a time", "Lily saw a ball")]
    responses = [torch.tensor([300, 301, 302]), torch.tensor([303, 304])]
    return trainer, queries, responses


def seeded_step(trainer, queries, responses):
    torch.manual_seed(1)
    np.random.seed(1)
    return trainer.step(queries, responses, SCORES)


def test_state_dict_round_trip_gives_the_same_next_step(tiny_model_dir, tmp_path):
    first, queries, responses = build_trainer()
    first.step(queries, responses, SCORES)
    state = first.state_dict()
    save_state(tmp_path, "trainer", state)  # the checkpoint's format: tensors to safetensors, the rest to JSON

    second, _, _ = build_trainer()
    assert second.state_dict()["kl_coef"] != state["kl_coef"]
    assert second.state_dict()["running_moments"] != state["running_moments"]
    with torch.no_grad():
        weights = dict(first.model.named_parameters())
        for name, param in second.model.named_parameters():
            param.copy_(weights[name])
    second.load_state_dict(load_state(tmp_path, "trainer"))

    expected = seeded_step(first, queries, responses)
    resumed = seeded_step(second, queries, responses)
    assert expected.keys() == resumed.keys()
    for key in expected:
        if not key.startswith("time/"):
            np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)
    assert resumed["ppo/learning_rate"] == pytest.approx(1e-3 / 2)  # one scheduler step restored
    for (name, param), expected_param in zip(second.model.named_parameters(), first.model.parameters(), strict=True):
        torch.testing.assert_close(param, expected_param, rtol=0, atol=0, msg=name)
    after, expected_after = second.state_dict(), first.state_dict()
    for key in ("current_step", "kl_coef", "running_moments", "lr_scheduler"):
        assert after[key] == expected_after[key], key


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (lambda state: state.pop("kl_coef"), r"trainer state: missing keys \['kl_coef'\]"),
        (lambda state: state.pop("optimizer"), r"trainer state: missing keys \['optimizer'\]"),
        (lambda state: state["running_moments"].pop("count"), r"running_moments: missing keys \['count'\]"),
        (lambda state: state.update(step=3), r"unexpected keys \['step'\]"),
    ],
)
def test_load_state_dict_refuses_a_state_of_another_shape(tiny_model_dir, remove, message):
    trainer, _, _ = build_trainer()
    state = trainer.state_dict()
    state["kl_coef"] = state["kl_coef"] * 2
    remove(state)
    with pytest.raises(ConfigError, match=message):
        trainer.load_state_dict(state)
    assert trainer.kl_ctl.value == trainer.config.init_kl_coef  # refused before anything changed


def test_ppo_trainer_is_what_the_rl_loop_drives(tiny_model_dir):
    trainer, _, _ = build_trainer()
    assert isinstance(trainer, RLTrainer)
    assert isinstance(trainer.config, RLTrainerConfig)
    for name in ("generate", "step", "log_stats", "state_dict", "load_state_dict", "save_pretrained"):
        wanted = list(inspect.signature(getattr(RLTrainer, name)).parameters.values())
        has = list(inspect.signature(getattr(PPOTrainer, name)).parameters.values())
        named = [p.name for p in wanted if p.kind is not VAR_KEYWORD]
        assert [p.name for p in has[: len(named)]] == named, name  # the protocol's arguments, in its order
        assert all(p.default is not p.empty for p in has[len(named) :] if p.kind is not VAR_KEYWORD), name
        assert (wanted[-1].kind is VAR_KEYWORD) <= (has[-1].kind is VAR_KEYWORD), name
