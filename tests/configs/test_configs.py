"""Every shipped config: found by its short name, parsed by the recipe (or loader) it belongs to, with a header that
cites its sources; the offline defaults are what a no-argument run resolves."""

import pytest
import yaml

from stackrlhf import cli
from stackrlhf.chatllama import ChatLlamaConfig
from stackrlhf.configs import CONFIG_DIR, read_config, resolve_config, shipped_configs
from stackrlhf.errors import ConfigError

RECIPE_CONFIGS = {name: path for name, path in shipped_configs().items() if name.split("/")[1] in cli.RECIPES}


def test_the_configs_follow_the_model_stage_variant_layout():
    names = shipped_configs()
    assert {"tiny/sft/offline", "tiny/reward/offline", "tiny/ppo/offline", "tiny/sentiment/offline"} <= set(names)
    assert {"llama-2-7b/sft/stackllama", "llama-2-7b/reward/stackllama", "llama-2-7b/ppo/stackllama"} <= set(names)
    for name, path in names.items():
        parts = path.relative_to(CONFIG_DIR).parts
        assert parts[0] == "accelerate" or (len(parts) == 3 and parts[2].startswith("config_")), name


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_cites_its_sources_in_its_header(name):
    lines = shipped_configs()[name].read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert header, f"{name}: no comment header"
    if not name.startswith("accelerate/"):
        assert any("source" in line.lower() for line in header), f"{name}: the header names no source"


@pytest.mark.parametrize("name", sorted(RECIPE_CONFIGS))
def test_every_recipe_config_parses_with_its_recipe(name, capsys):
    recipe = name.split("/")[1]
    cpu_overrides = (
        ["--bf16", "false"] if recipe in ("sft", "reward", "dpo", "grpo") else []
    )  # bf16 needs a GPU at parse time
    assert cli.main([recipe, "--config", name, *cpu_overrides, "--dry_run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    values = {key: value for section in resolved.values() for key, value in section.items()}
    for key, value in read_config(name).items():
        if key not in ("bf16", "lora_target_modules", "lora_task_type", "packing_strategy", "report_to"):
            assert values[key] == value, (name, key)


@pytest.mark.parametrize("name", ["tiny/chatllama", "opt-1.3b/chatllama"])
def test_chatllama_configs_load(name):
    assert ChatLlamaConfig.from_yaml(name).trainer.mode == "faithful"


def test_a_no_argument_run_resolves_the_offline_config(capsys):
    assert cli.main(["sft", "--dry_run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["SFTConfig"]["max_steps"] == read_config("tiny/sft")["max_steps"]
    assert resolved["SFTConfig"]["learning_rate"] == read_config("tiny/sft")["learning_rate"]


def test_short_names_and_paths_resolve_to_the_same_file(tmp_path):
    path = resolve_config("llama-2-7b/ppo")
    assert path == resolve_config("llama-2-7b/ppo/stackllama") == resolve_config(str(path))
    assert resolve_config("accelerate/deepspeed_zero2").name == "deepspeed_zero2.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("lora_r: 4\n")
    assert resolve_config(own) == own


def test_a_folder_with_several_variants_names_them(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="several variants: tiny/chatllama/offline, .*tiny/sft/offline; name one"):
        resolve_config("tiny")
    with pytest.raises(ConfigError, match="is not a shipped config"):
        resolve_config("llama-2-70b/ppo")


def test_bad_config_files_are_one_line_errors(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("lora_r: [1, 2\n")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    for config, message in ((broken, "is not valid YAML"), (listing, "must hold a YAML mapping")):
        assert cli.main(["sft", "--config", str(config), "--dry_run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def test_configs_command_lists_and_locates_configs(capsys):
    assert cli.main(["configs"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in shipped_configs())
    assert cli.main(["configs", "accelerate/deepspeed_zero2"]) == 0
    assert capsys.readouterr().out.strip() == str(CONFIG_DIR / "accelerate" / "deepspeed_zero2.yaml")
    assert cli.main(["configs", "llama-2-7b/ppo", "--show"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == read_config("llama-2-7b/ppo")
    assert cli.main(["configs", "no/such"]) == 2
    assert capsys.readouterr().err.startswith("error: config file 'no/such' does not exist")
