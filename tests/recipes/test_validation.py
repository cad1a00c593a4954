"""The validation pass where options are parsed: what it accepts (values argparse would convert, shipped configs,
programmatic overrides), what it refuses, and that every recipe registers its own check."""

from __future__ import annotations

import typing
from enum import Enum

import pytest
from trl import ModelConfig

from stackrlhf import cli
from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import TINY_MODEL
from stackrlhf.models.loading import check_model_path
from stackrlhf.recipes import evaluate, merge, ppo, reward, sentiment, sft
from stackrlhf.recipes.runner import parse_args, parse_config
from stackrlhf.recipes.validation import RANGES, _conforms, check_output_dir, check_range


class Color(str, Enum):
    RED = "red"


@pytest.mark.parametrize(
    ("value", "hint", "fits"),
    [
        (1, float, True),
        (True, int, False),
        (1.0, int, False),
        (None, str, True),
        (None, int | None, True),
        (None, float, False),
        ("x", int | str, True),
        (["a", "b"], list[str] | None, True),
        ([1], list[str], False),
        ({"a": 1}, dict[str, typing.Any] | str | None, True),
        ("red", Color, True),
        ("blue", Color | str, True),
        ("hh", typing.Literal["hh", "columns"], True),
        ("xml", typing.Literal["hh", "columns"], False),
        (object(), "SomeForwardRef", True),
    ],
)
def test_type_hints_are_matched_leniently_where_in_doubt(value, hint, fits):
    assert _conforms(value, hint) is fits


def test_yaml_strings_that_convert_as_on_the_command_line_pass(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-5\nuse_peft: 'yes'\nlora_target_modules: q_proj\nmax_steps: '3'\n")
    _, training_args, model_args = parse_args(
        sft.make_parser(), ["--config", str(config), "--output_dir", str(tmp_path)]
    )
    assert training_args.learning_rate == 1e-5 and training_args.max_steps == 3
    assert model_args.use_peft is True


def test_programmatic_overrides_are_validated_too():
    with pytest.raises(ConfigError, match=r"max_steps: '\?' \(str\) is not an integer"):
        parse_config(sft.make_parser(), max_steps="?")
    with pytest.raises(ConfigError, match="lora_r: 0 must be at least 1"):
        parse_config(sft.make_parser(), lora_r=0)


def test_ranges_allow_none_and_boundaries():
    check_range("save_total_limit", None)
    check_range("max_steps", -1)
    check_range("lora_dropout", 0.0)
    check_range("eval_samples", 0)
    check_range("not_an_option", -5)
    with pytest.raises(ConfigError, match="save_total_limit: 0 must be at least 1"):
        check_range("save_total_limit", 0)
    assert all(limits.text for limits in RANGES.values())


def test_an_output_directory_may_be_created_deep(tmp_path):
    check_output_dir(tmp_path / "a" / "b" / "c", "output_dir")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create it, .*file is a file"):
        check_output_dir(tmp_path / "file" / "b", "output_dir")


@pytest.mark.parametrize("module", [sft, reward, ppo, sentiment, evaluate, merge])
def test_every_recipe_registers_its_check(module):
    assert module.make_parser().recipe_check is not None


def test_the_cli_subcommand_runs_the_same_validation(tmp_path, capsys):
    assert cli.main(["reward", "--dry_run", "--per_device_train_batch_size", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: per_device_train_batch_size: 0 must be at least 1."


def test_hub_ids_and_the_bundled_model_pass_the_path_check(tiny_model_dir):
    check_model_path(TINY_MODEL, "model_name_or_path")
    check_model_path("meta-llama/Llama-2-7b-hf", "model_name_or_path")
    check_model_path(str(tiny_model_dir), "model_name_or_path")
    with pytest.raises(ConfigError, match="no such directory"):
        check_model_path("/no/such/model", "model_name_or_path")


def test_a_ppo_dry_run_checks_the_reward_adapter_without_loading(reward_dirs, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("validation must not load a model")

    monkeypatch.setattr(ppo, "load_policy", refuse)
    argv = ["--model_name_or_path", str(reward_dirs["merged"]), "--reward_adapter", str(reward_dirs["adapter"])]
    *_, model_args, base_args, _ = parse_args(ppo.make_parser(), [*argv, "--output_dir", str(tmp_path)])
    assert isinstance(model_args, ModelConfig) and base_args.reward_adapter == str(reward_dirs["adapter"])


def test_a_write_error_during_a_run_is_one_line_naming_the_path(capsys):
    from stackrlhf.recipes import merge
    from stackrlhf.recipes.runner import run_recipe

    def disk_full(*arguments):
        raise OSError(28, "No space left on device", "/outputs/sft/checkpoint-10/model.safetensors")

    assert run_recipe(merge.make_parser(), disk_full, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: /outputs/sft/checkpoint-10/model.safetensors: No space left on device."]
