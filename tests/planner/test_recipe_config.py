"""`stackrlhf plan --config`: every shipped recipe config plans the run its recipe would do; flags override it."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from stackrlhf.configs import shipped_configs
from stackrlhf.planner.cli import run
from stackrlhf.planner.configs import bundled_models
from stackrlhf.planner.recipe_config import (
    RECIPE_DEFAULTS,
    detect_recipe,
    load_config_file,
    read_recipe_config,
    settings_from_arguments,
)

SHIPPED = sorted(path for name, path in shipped_configs().items()
                 if not name.startswith(("accelerate/", "tiny/")) and path.parent.name in RECIPE_DEFAULTS)  # fmt: skip
MERGED_SFT = "outputs/llama-se-merged"  # what the PPO and reward configs train on: Llama-2-7B after SFT and merge


@pytest.fixture
def merged_sft_model(tmp_path, monkeypatch):
    """Run in a directory where the configs' merged SFT model exists (its config.json: Llama-2-7B's)."""
    model_dir = tmp_path / MERGED_SFT
    model_dir.mkdir(parents=True)
    shutil.copy(bundled_models()["meta-llama/Llama-2-7b-hf"], model_dir / "config.json")
    monkeypatch.chdir(tmp_path)
    return model_dir


def _recipe_module(recipe):
    from stackrlhf.recipes import dpo, grpo, ppo, reward, sentiment, sft

    return {"sft": sft, "reward": reward, "ppo": ppo, "sentiment": sentiment, "dpo": dpo, "grpo": grpo}[recipe]


def _parsed_arguments(recipe, argv):
    """The recipe's own parse of `argv` (a GPU-less machine rejects bf16 at parse time, so it is turned off)."""
    from stackrlhf.recipes.runner import parse_args

    cpu = ["--bf16", "false"] if recipe in ("sft", "reward", "dpo", "grpo") else []
    return parse_args(_recipe_module(recipe).make_parser(), [*argv, *cpu])


def _plan_json(capsys, argv):
    assert run([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_shipped_configs_are_the_recipes():
    recipes = [detect_recipe(yaml.safe_load(path.read_text()), path=path) for path in SHIPPED]
    assert sorted(recipes) == ["dpo", "ppo", "reward", "sentiment", "sft"]  # llama-2-7b has no grpo config
    assert all(path.parent.name == recipe for path, recipe in zip(SHIPPED, recipes, strict=True))
    for recipe in ("dpo", "grpo"):  # the offline configs, told by their keys alone
        assert detect_recipe(load_config_file(f"tiny/{recipe}")) == recipe


DERIVED = {"generation_batch_size", "steps_per_generation"}
"""GRPOConfig options that TRL derives when unset: the recipe defaults keep them unset (see below)."""


@pytest.mark.parametrize("recipe", sorted(RECIPE_DEFAULTS))
def test_recipe_defaults_are_what_the_recipe_parsers_resolve(recipe):
    parsed = {}
    for arguments in _parsed_arguments(recipe, []):
        parsed |= vars(arguments)
    defaults = RECIPE_DEFAULTS[recipe]
    for name, default in defaults.items():
        value = getattr(parsed[name], "value", parsed[name])  # TrainingArguments.optim is an enum member
        if recipe == "grpo" and name in DERIVED:  # unset, TRL makes one generation per accumulated batch
            assert default is None and parsed["steps_per_generation"] == defaults["gradient_accumulation_steps"]
            assert (
                parsed["generation_batch_size"]
                == defaults["per_device_train_batch_size"] * parsed["steps_per_generation"]
            )
            continue
        assert value == default, name


@pytest.mark.parametrize("config", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_config_plans_the_run_its_recipe_would_do(config, merged_sft_model, capsys):
    values = yaml.safe_load(config.read_text())
    result = _plan_json(capsys, ["--config", str(config)])
    settings, recipe = result["settings"], result["config"]["recipe"]

    # the YAML's own values
    assert settings["model"] == values["model_name_or_path"]
    assert settings["lora_r"] == values["lora_r"]
    quantization = "8bit" if values.get("load_in_8bit") else "4bit" if values.get("load_in_4bit") else None
    quantization = quantization or ("bf16" if values.get("dtype") == "bfloat16" else None)
    assert settings["quantization"] == quantization
    if recipe in ("ppo", "sentiment"):
        assert settings["stage"] == "ppo"
        for name in ("batch_size", "mini_batch_size", "generation_batch_size"):
            assert settings[name] == values[name]
        assert settings["response_length"] == values["output_max_length"] - 1  # the recipes exclude the maximum
        assert settings["query_length"] == values.get("max_prompt_length", values.get("query_max_length"))
        assert settings["lora_target_modules"] == values["lora_target_modules"]
        assert settings["gradient_checkpointing"] is True  # 8-bit: peft's prepare_model_for_kbit_training
    else:
        assert settings["stage"] == recipe
        assert settings["batch_size"] == values["per_device_train_batch_size"]
        assert settings["query_length"] == values["max_length"] and settings["response_length"] == 0
        requested = values.get("activation_checkpointing", values.get("gradient_checkpointing"))
        assert settings["gradient_checkpointing"] is requested
    assert result["config"]["from_config"]["model_name_or_path"] == values["model_name_or_path"]
    ppo_limits = {"mini_batch_size", "generation_batch_size", "output_max_length"}
    assert set(result["recipe_limits"]) == (
        ppo_limits if recipe in ("ppo", "sentiment") else {"per_device_train_batch_size", "max_length"}
    )

    # ... and exactly what the recipe's own parser makes of the same config
    expected = settings_from_arguments(recipe, *_parsed_arguments(recipe, ["--config", str(config)])).settings
    assert read_recipe_config(config).settings == expected


def test_recipe_defaults_fill_what_a_config_leaves_out(tmp_path):
    config = tmp_path / "ppo_small.yaml"
    config.write_text("model_name_or_path: gpt2\nbatch_size: 8\n")
    run_ = read_recipe_config(config)
    assert run_.recipe == "ppo" and run_.settings.mini_batch_size == 4  # the PPO recipe's default
    assert run_.settings.response_length == 47 and run_.settings.query_length == 64  # output_max_length 48, prompt 64
    assert run_.settings.lora_target_modules == ["all-linear"] and run_.settings.quantization == "none"
    assert run_.from_config == {"model_name_or_path": "gpt2", "batch_size": 8}
    assert {"mini_batch_size", "output_max_length", "max_prompt_length"} <= set(run_.from_defaults)


def test_older_trl_option_names_are_read(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("model_name_or_path: gpt2\ntorch_dtype: bfloat16\nmax_seq_length: 128\npacking: true\n")
    run_ = read_recipe_config(config)
    assert (run_.recipe, run_.settings.quantization, run_.settings.query_length) == ("sft", "bf16", 128)
    assert run_.from_config["dtype"] == "bfloat16" and run_.from_config["max_length"] == 128


def test_unset_lengths_take_the_model_context(tmp_path):
    config = tmp_path / "sentiment.yaml"
    config.write_text("model_name_or_path: gpt2\nprompts_column: text\noutput_max_length: 24\n")
    assert read_recipe_config(config).settings.query_length == 1024 - 24  # gpt2's context less the responses
    config.write_text("model_name_or_path: gpt2\npacking: false\nmax_length: null\n")
    assert read_recipe_config(config).settings.query_length == 1024


def test_flags_override_the_config(capsys):
    config = "gpt-neox-20b/sentiment"
    argv = ["--config", config, "--mini_batch_size", "4", "--quantization", "4bit", "--gpu_memory_gb", "16"]
    result = _plan_json(capsys, argv)
    settings = result["settings"]
    assert (settings["mini_batch_size"], settings["quantization"], settings["gpu_memory_gb"]) == (4, "4bit", 16)
    assert settings["batch_size"] == 256 and settings["lora_r"] == 16  # the rest is the config's
    assert result["config"]["flags"] == {"mini_batch_size": 4, "quantization": "4bit", "gpu_memory_gb": 16}


def test_a_flag_equal_to_its_default_still_overrides(capsys):
    config = "llama-2-7b/reward"  # bf16 weights; 8bit is the planner's default
    argv = ["--config", config, "--model", "meta-llama/Llama-2-7b-hf", "--quantization", "8bit"]
    result = _plan_json(capsys, argv)
    assert result["settings"]["quantization"] == "8bit"
    assert result["config"]["flags"] == {"model": "meta-llama/Llama-2-7b-hf", "quantization": "8bit"}


def test_stage_flag_picks_the_recipe(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("model_name_or_path: gpt2\nper_device_train_batch_size: 2\nmax_length: 128\n")
    assert run(["--config", str(config)]) == 2
    assert "pass --stage" in capsys.readouterr().err
    result = _plan_json(capsys, ["--config", str(config), "--stage", "reward"])
    assert result["config"]["recipe"] == "reward" and result["settings"]["stage"] == "reward"
    assert result["settings"]["batch_size"] == 2 and result["settings"]["lora_r"] == 8  # the reward recipe's r


def test_table_says_which_values_it_used_and_what_it_cannot_plan(capsys):
    assert run(["--config", "gpt-neox-20b/sentiment"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("config ") and "(sentiment recipe, stage ppo)" in out
    assert "values used: model_name_or_path=EleutherAI/gpt-neox-20b, load_in_8bit=true" in out
    assert "responses up to 15 tokens (output_max_length 16 is excluded)" in out
    not_planned = [line for line in out.splitlines() if line.startswith("  not planned")]
    assert len(not_planned) == 1 and "reward_model=lvwerra/distilbert-imdb" in not_planned[0]
    assert "limits in the recipe's options: mini_batch_size=" in out and "output_max_length=" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_name_or_path: gpt2\nbatch_size: abc\n", "batch_size must be an integer, got 'abc'"),
        ("model_name_or_path: gpt2\nbatch_size: 8\nload_in_8bit: maybe\n", "load_in_8bit must be true/false"),
        ("model_name_or_path: gpt2\nbatch_size: 8\nmini_batch_size: 3\n", "must be a multiple of mini_batch_size"),
        ("model_name_or_path: gpt2\noutput_min_length: 9\noutput_max_length: 9\n", "need 0 < output_min_length"),
        ("model_name_or_path: gpt2\nbatch_size: 8\ndtype: half\n", "dtype 'half' is not one of"),
        ("- just\n- a list\n", "must hold a YAML mapping"),
        ("batch_size: [1\n", "is not valid YAML"),
    ],
)
def test_bad_config_value_is_one_line_and_exit_code_2(tmp_path, capsys, text, message):
    config = tmp_path / "ppo_bad.yaml"
    config.write_text(text)
    assert run(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_bad_config_path_and_bad_flag_are_one_line_and_exit_code_2(capsys):
    assert run(["--config", "no/such/config.yaml"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: config file 'no/such/config.yaml' does not exist and is not a shipped config (`stackrlhf configs` "
        "lists them)."
    ]
    assert run(["--model", "gpt2", "--batch_size", "abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --batch_size: invalid int value")


def test_a_model_yet_to_be_built_points_to_the_model_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/llama-se-merged here
    assert run(["--config", "llama-2-7b/reward"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plan its base instead, e.g. --model meta-llama/Llama-2-7b-hf" in err[0]
    assert run(["--config", "llama-2-7b/reward", "--model", "meta-llama/Llama-2-7b-hf"]) == 0


@pytest.mark.subprocess
def test_parsing_and_help_load_no_training_stack():
    code = (
        "import sys; from stackrlhf.cli import main; from stackrlhf.planner.cli import make_parser, parse;"
        "parse(make_parser(prog='p'), ['--model', 'gpt2', '--config', 'x.yaml']);"
        "from stackrlhf.planner.recipe_config import read_recipe_config;"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'accelerate', 'datasets') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    result = subprocess.run(
        [sys.executable, "-m", "stackrlhf.planner", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--config" in result.stdout
