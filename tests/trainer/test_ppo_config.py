"""`stackrlhf.trainer.ppo_config.PPOConfig`: TRL 0.11.4's fields, defaults and derived values (from
`golden/fixtures/core.json`), plus this project's changes: the unset `mini_batch_size` that adapts to small batches,
working deprecated aliases, one-line `ConfigError`s, and command-line parsing."""

import dataclasses
import json
import re
import sys
import warnings
from pathlib import Path

import pytest
from transformers import HfArgumentParser
from trl import ModelConfig, TrlParser

from stackrlhf.errors import ConfigError
from stackrlhf.trainer import ppo_config
from stackrlhf.trainer.ppo_config import DEFAULT_MINI_BATCH_SIZE, KL_PENALTIES, PPOConfig

REFERENCE = json.loads((Path(__file__).parents[1] / "golden" / "fixtures" / "core.json").read_text())["ppo_config"]
INEXACT = "`batch_size` must be a multiple of `mini_batch_size * gradient_accumulation_steps`, inexact division: "


def to_dict_without_exp_name(config: PPOConfig) -> dict:
    as_dict = config.to_dict()
    as_dict.pop("exp_name")
    return as_dict


def make_quietly(**kwargs) -> PPOConfig:
    """A config built with every warning turned into an error, to prove it warns about nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return PPOConfig(**kwargs)


# --- TRL 0.11.4 parity -----------------------------------------------------------------------------------------------


def test_constructor_fields_are_the_reference_fields_in_order():
    constructor_fields = [f.name for f in dataclasses.fields(PPOConfig) if f.init]
    assert constructor_fields == REFERENCE["field_names"]


def test_defaults_after_post_init_are_the_reference_defaults():
    config = make_quietly()
    for name, default in REFERENCE["defaults"].items():
        assert getattr(config, name) == default or name == "backward_batch_size", name
    assert config.mini_batch_size == DEFAULT_MINI_BATCH_SIZE == REFERENCE["defaults"]["mini_batch_size"]
    assert config.backward_batch_size == 128 and config.total_ppo_epochs == 157


@pytest.mark.parametrize("index", range(len(REFERENCE["configurations"])))
def test_to_dict_and_derived_values_match_reference(index):
    case = REFERENCE["configurations"][index]
    kwargs = case["kwargs"]
    if "forward_batch_size" in kwargs:
        with pytest.warns(FutureWarning, match="forward_batch_size"):
            config = PPOConfig(**kwargs)
    else:
        config = make_quietly(**kwargs)
    as_dict = to_dict_without_exp_name(config)
    assert as_dict == case["to_dict"]
    assert list(as_dict) == list(case["to_dict"])  # same order, derived values last


@pytest.mark.parametrize("index", [0, 1, 2])
def test_inexact_batch_division_raises_the_reference_message(index):
    case = REFERENCE["errors"][index]
    with pytest.raises(ConfigError) as err:
        PPOConfig(**case["kwargs"])
    assert f"ValueError: {err.value}" == case["error"]


def test_exp_name_defaults_to_the_script_name(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/path/to/ppo.py", "--flag"])
    assert ppo_config._default_exp_name() == "ppo"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/stackrlhf"])
    assert ppo_config._default_exp_name() == "stackrlhf"


# --- mini_batch_size left unset --------------------------------------------------------------------------------------


def test_unset_mini_batch_size_is_lowered_to_a_small_batch_size_with_a_warning():
    reference = REFERENCE["errors"][3]
    assert reference["kwargs"] == {"batch_size": 1} and "1 / 128" in reference["error"]  # 0.11.4 could not do this
    with pytest.warns(UserWarning, match="mini_batch_size is unset .* using mini_batch_size=1"):
        config = PPOConfig(batch_size=1)
    assert (config.mini_batch_size, config.backward_batch_size, config.total_ppo_epochs) == (1, 1, 20000)


def test_unset_mini_batch_size_leaves_room_for_gradient_accumulation():
    with pytest.warns(UserWarning, match="using mini_batch_size=2"):
        config = PPOConfig(batch_size=8, gradient_accumulation_steps=4)
    assert (config.mini_batch_size, config.backward_batch_size) == (2, 8)


def test_unset_mini_batch_size_that_fits_is_not_changed():
    config = make_quietly(batch_size=512)
    assert config.mini_batch_size == 128
    config = make_quietly(batch_size=256, gradient_accumulation_steps=2)
    assert config.mini_batch_size == 128


def test_unset_mini_batch_size_smaller_than_batch_size_but_not_dividing_it_still_fails():
    with pytest.raises(ConfigError, match="200 / 128 = 1.5625"):
        PPOConfig(batch_size=200)


def test_explicit_mini_batch_size_is_never_changed():
    with pytest.raises(ConfigError, match="^" + INEXACT.replace("*", r"\*") + "4 / 128 = 0.03125$"):
        PPOConfig(batch_size=4, mini_batch_size=128)
    assert make_quietly(batch_size=8, mini_batch_size=2).mini_batch_size == 2


# --- deprecated aliases ----------------------------------------------------------------------------------------------


def test_forward_batch_size_overrides_mini_batch_size():
    with pytest.warns(FutureWarning, match="forward_batch_size"):
        config = PPOConfig(batch_size=64, mini_batch_size=32, forward_batch_size=16)
    assert (config.mini_batch_size, config.backward_batch_size) == (16, 16)


def test_optimize_cuda_cache_sets_optimize_device_cache():
    with pytest.warns(FutureWarning, match="optimize_cuda_cache"):
        assert PPOConfig(optimize_cuda_cache=True).optimize_device_cache is True
    with pytest.warns(FutureWarning, match="optimize_cuda_cache"):
        assert PPOConfig(optimize_cuda_cache=False).optimize_device_cache is False
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="optimize_cuda_cache=False"):
        PPOConfig(optimize_cuda_cache=False, optimize_device_cache=True)
    assert make_quietly(optimize_device_cache=True).optimize_device_cache is True


# --- validation ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kl_penalty": "foo"}, "kl_penalty='foo' is not one of kl, abs, mse, full."),
        ({"batch_size": -4}, "batch_size=-4 must be a positive integer."),
        ({"batch_size": 0}, "batch_size=0 must be a positive integer."),
        ({"mini_batch_size": 0}, "mini_batch_size=0 must be a positive integer."),
        ({"forward_batch_size": -1}, "forward_batch_size=-1 must be a positive integer."),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0 must be a positive integer."),
        ({"ppo_epochs": 0}, "ppo_epochs=0 must be a positive integer."),
        ({"steps": -1}, "steps=-1 must be zero or positive."),
        ({"target": 0.0}, "target=0.0 must be positive with adaptive KL control."),
        ({"horizon": -1.0}, "horizon=-1.0 must be positive with adaptive KL control."),
        ({"tracker_kwargs": "{not json"}, "tracker_kwargs='{not json' is not valid JSON"),
        ({"project_kwargs": "[1, 2]"}, "project_kwargs=[1, 2] must be a JSON object (a dict), not list."),
    ],
)
def test_bad_values_raise_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        PPOConfig(**kwargs)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_every_kl_penalty_is_accepted_and_fixed_kl_ignores_target():
    for kl_penalty in KL_PENALTIES:
        assert make_quietly(kl_penalty=kl_penalty).kl_penalty == kl_penalty
    assert make_quietly(adap_kl_ctrl=False, target=0.0).target == 0.0


def test_json_options_accept_dicts_strings_and_none():
    config = make_quietly(
        tracker_kwargs='{"wandb": {"entity": "me"}}', accelerator_kwargs={"cpu": True}, project_kwargs=None
    )
    assert config.tracker_kwargs == {"wandb": {"entity": "me"}}
    assert config.accelerator_kwargs == {"cpu": True}
    assert config.project_kwargs == {}
    assert config.to_dict()["tracker_kwargs/wandb/entity"] == "me"


def test_wandb_logging_needs_wandb(monkeypatch):
    monkeypatch.setattr(ppo_config, "tracker_is_available", lambda name: name != "wandb")
    with pytest.raises(ConfigError, match="^log_with='wandb' needs the wandb package"):
        PPOConfig(log_with="wandb")
    assert make_quietly(log_with="tensorboard").log_with == "tensorboard"
    monkeypatch.setattr(ppo_config, "tracker_is_available", lambda name: True)
    assert make_quietly(log_with="wandb").log_with == "wandb"


# --- command-line parsing --------------------------------------------------------------------------------------------


def test_every_option_has_a_one_sentence_help():
    for f in dataclasses.fields(PPOConfig):
        help_text = f.metadata.get("help", "")
        assert help_text.endswith(".") and not re.search(r"\w\. [A-Z]", help_text), f.name
        assert "%" not in help_text, f.name  # argparse would try to format it


def test_hf_argument_parser_without_mini_batch_size_uses_the_adaptive_default():
    parser = HfArgumentParser((PPOConfig,))
    with pytest.warns(UserWarning, match="using mini_batch_size=4"):
        (config,) = parser.parse_args_into_dataclasses(["--batch_size", "4"], look_for_args_file=False)
    assert (config.batch_size, config.mini_batch_size) == (4, 4)
    (config,) = parser.parse_args_into_dataclasses([], look_for_args_file=False)
    assert config.mini_batch_size == DEFAULT_MINI_BATCH_SIZE


def test_hf_argument_parser_with_mini_batch_size_keeps_it():
    parser = HfArgumentParser((PPOConfig,))
    argv = ["--batch-size", "8", "--mini_batch_size", "2", "--gradient_accumulation_steps", "2"]
    (config,) = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    assert (config.mini_batch_size, config.backward_batch_size) == (2, 4)
    with pytest.raises(ConfigError, match="4 / 128"):
        parser.parse_args_into_dataclasses(["--batch_size", "4", "--mini_batch_size", "128"], look_for_args_file=False)


def test_hf_argument_parser_types_every_option():
    parser = HfArgumentParser((PPOConfig,))
    argv = [
        "--log_with", "tensorboard",
        "--tracker_kwargs", '{"tensorboard": {"flush_secs": 5}}',
        "--kl_penalty", "mse",
        "--no_adap_kl_ctrl",
        "--optimize_device_cache",
        "--score_clip", "3.5",
        "--max_grad_norm", "1",
        "--learning_rate", "1e-4",
        "--dataset_num_proc", "2",
    ]  # fmt: skip
    (config,) = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    assert config.log_with == "tensorboard" and config.tracker_kwargs == {"tensorboard": {"flush_secs": 5}}
    assert (config.kl_penalty, config.adap_kl_ctrl, config.optimize_device_cache) == ("mse", False, True)
    assert (config.score_clip, config.max_grad_norm, config.learning_rate) == (3.5, 1.0, 1e-4)
    assert config.dataset_num_proc == 2
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--kl_penalty", "foo"], look_for_args_file=False)


def test_parses_next_to_trl_model_config_without_clashes():
    parser = HfArgumentParser((PPOConfig, ModelConfig))
    config, model_config = parser.parse_args_into_dataclasses(
        [
            "--model_name_or_path",
            "stackrlhf/stories260K",
            "--use_peft",
            "--batch_size",
            "16",
            "--mini_batch_size",
            "4",
        ],
        look_for_args_file=False,
    )
    assert model_config.use_peft and model_config.model_name_or_path == "stackrlhf/stories260K"
    assert (config.batch_size, config.mini_batch_size) == (16, 4)
    assert "--mini_batch_size" in parser.format_help()


def test_trl_parser_with_a_yaml_config_and_command_line_overrides(tmp_path):
    config_file = tmp_path / "ppo.yaml"
    config_file.write_text("batch_size: 2\ntracker_kwargs:\n  wandb:\n    name: yaml-run\nseed: 3\n")
    parser = TrlParser((PPOConfig,))
    with pytest.warns(UserWarning, match="using mini_batch_size=2"):
        (config,) = parser.parse_args_and_config(["--config", str(config_file), "--seed", "5"])
    assert (config.batch_size, config.mini_batch_size, config.seed) == (2, 2, 5)
    assert config.tracker_kwargs == {"wandb": {"name": "yaml-run"}}

    (config,) = parser.parse_args_and_config(["--config", str(config_file), "--mini_batch_size", "1"])
    assert (config.mini_batch_size, config.backward_batch_size) == (1, 1)
