import os
import subprocess
import sys

import pytest

from stackrlhf import cli


def test_cli_lists_every_subcommand(capsys):
    assert cli.main([]) == 0
    printed = capsys.readouterr().out
    for command in ("sft", "reward", "merge", "ppo", "sentiment", "evaluate", "plan", "convert-llama2c"):
        assert command in printed


@pytest.mark.parametrize("name", sorted(cli.RECIPES))
def test_every_option_of_every_recipe_is_explained(name):
    parser = cli.RECIPES[name].make_parser()
    unexplained = [a.dest for a in parser._actions if a.dest != "help" and not (a.help or "").strip()]
    assert unexplained == []


@pytest.mark.parametrize("name", ["sft", "reward", "merge", "ppo", "sentiment", "evaluate"])
def test_dry_run_of_every_training_recipe_prints_yaml(name, capsys):
    import yaml

    assert cli.main([name, "--dry_run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert all(isinstance(section, dict) for section in resolved.values())
    if name in ("sft", "reward", "sentiment"):
        assert resolved["ModelConfig"]["model_name_or_path"] == "stackrlhf/stories260K"
    if name == "ppo":  # no model: the offline SFT and reward stages provide the base and the reward adapter
        assert resolved["ModelConfig"]["model_name_or_path"] is None
        assert resolved["DataArguments"]["dataset_name"] == "stackrlhf/hh-rlhf-harmless"


def test_subcommand_shares_the_recipe_parser(capsys):
    assert cli.main(["sft", "--dry_run", "--lora_r", "7"]) == 0
    assert "lora_r: 7" in capsys.readouterr().out


def test_subcommand_error_is_one_line(capsys):
    assert cli.main(["merge", "--adapter_path", "/nonexistent"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: merge needs")


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["nonsense"])
    assert exit_info.value.code == 2


@pytest.mark.subprocess
def test_console_script_entry_point():
    result = subprocess.run(
        [sys.executable, "-c", "from stackrlhf.cli import main; raise SystemExit(main(['reward', '--help']))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "--lora_task_type" in result.stdout


def test_a_recipe_help_is_its_parser_help_and_is_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STACKRLHF_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "100")
    assert cli.main(["reward", "--help"]) == 0
    printed = capsys.readouterr().out
    assert printed == cli.RECIPES["reward"].make_parser(prog="stackrlhf reward").format_help()
    (cached,) = (tmp_path / "help").glob("reward-*.txt")
    cached.write_text("from the cache\n")
    assert cli.main(["reward", "-h"]) == 0
    assert capsys.readouterr().out == "from the cache\n"
    monkeypatch.setenv("COLUMNS", "80")  # another width: another entry
    assert cli.main(["reward", "--help"]) == 0
    assert capsys.readouterr().out != "from the cache\n"


@pytest.mark.subprocess
def test_top_level_help_and_a_cached_recipe_help_import_no_training_stack(tmp_path):
    env = {**os.environ, "STACKRLHF_CACHE": str(tmp_path), "COLUMNS": "100"}
    code = "from stackrlhf.cli import main; main(['sft', '--help'])"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=300)
    code = (
        "import sys; from stackrlhf.cli import main; main(['sft', '--help']);"
        "import contextlib\nwith contextlib.suppress(SystemExit): main(['--help'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules]; assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--dataset_path" in result.stdout and "COMMAND" in result.stdout
