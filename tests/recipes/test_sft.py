import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from stackrlhf.models.bundled import tiny_model_path
from stackrlhf.recipes import setup, sft
from stackrlhf.recipes.runner import parse_args, run_recipe
from stackrlhf.trainer.reporting import SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[2]
QUICK = [
    "--max_steps",
    "4",
    "--max_samples",
    "96",
    "--eval_samples",
    "16",
    "--max_length",
    "128",
    "--logging_steps",
    "2",
]


def test_sft_trains_and_saves_a_lora_adapter(tmp_path, capfd):
    args = parse_args(sft.make_parser(), [*QUICK, "--output_dir", str(tmp_path)])
    summary = sft.main(*args)
    progress = capfd.readouterr().err
    assert "SFT: 100%" in progress and "SFT evaluation: 100%" in progress  # labelled bars

    adapter = load_file(tmp_path / "adapter_model.safetensors")
    assert any("lora_A" in key for key in adapter) and any("lora_B" in key for key in adapter)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_path())  # plain peft finds it offline
    saved = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert saved == summary
    assert saved["train_rows"] == 80 and saved["eval_rows"] == 16
    assert math.isfinite(saved["eval_loss"]) and saved["eval_perplexity"] > 1
    assert saved["sample"]["query"].startswith("Question: ")


def test_sft_with_no_held_out_rows_skips_evaluation(tmp_path, capsys):
    argv = [*QUICK, "--max_steps", "2", "--eval_samples", "0", "--output_dir", str(tmp_path)]
    summary = sft.main(*parse_args(sft.make_parser(), argv))
    assert summary["eval_rows"] == 0 and summary["eval_loss"] is None and summary["eval_perplexity"] is None
    assert summary["train_rows"] == 96 and summary["sample"]["query"].startswith("Question: ")
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == summary
    assert "evaluation skipped (--eval_samples 0)" in capsys.readouterr().out


def test_sft_in_4bit_with_lora(tmp_path):
    args = parse_args(sft.make_parser(), [*QUICK, "--max_steps", "2", "--load_in_4bit", "--output_dir", str(tmp_path)])
    summary = sft.main(*args)
    assert math.isfinite(summary["eval_loss"])
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_dry_run_prints_the_resolved_config_without_loading(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("--dry_run must not load a model")

    monkeypatch.setattr(setup, "load_model", refuse)
    argv = ["--config", "llama-2-7b/sft", "--learning_rate", "3e-5", "--bf16", "false", "--dry_run"]
    assert run_recipe(sft.make_parser(), sft.main, argv) == 0
    printed = capsys.readouterr().out
    assert "model_name_or_path: meta-llama/Llama-2-7b-hf" in printed  # from the YAML file
    assert "learning_rate: 3.0e-05" in printed  # the flag overrides the file
    assert "load_in_8bit: true" in printed
    assert "bf16: false" in printed  # this CPU cannot check the file's bf16: true, so the test turns it off


def _run(*argv):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.subprocess
def test_launcher_help_lists_options():
    result = _run("recipes/sft_stackllama.py", "--help")
    assert result.returncode == 0
    for option in (
        "--dataset_path",
        "--load_in_8bit",
        "--lora_r",
        "--packing",
        "--report_to",
        "--dry_run",
        "--config",
    ):
        assert option in result.stdout


@pytest.mark.subprocess
def test_launcher_reports_bad_config_in_one_line(tmp_path):
    result = _run("recipes/sft_stackllama.py", "--load_in_8bit", "--load_in_4bit", "--output_dir", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--load_in_8bit", "--load_in_4bit"], "8 bit and 4 bit"),
        (["--lora_target_modules", "query_key_value"], "query_key_value"),
        (["--dataset_path", "no/such/file.jsonl"], "no/such/file.jsonl"),
        (["--config", "no-such-config.yaml"], "no-such-config.yaml"),
        (["--dataset_path", "{missing_column}"], "missing response_k"),
        (["--eval_samples", "5000"], "leaves no training rows"),
    ],
)
def test_bad_config_exits_with_one_readable_line(tmp_path, capsys, argv, expected):
    missing_column = tmp_path / "pairs.jsonl"
    missing_column.write_text(json.dumps({"question": "Why?", "response_j": "Because."}) + "\n")
    argv = [arg.format(missing_column=missing_column) for arg in argv]
    assert run_recipe(sft.make_parser(), sft.main, [*argv, "--output_dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # progress bars and warnings may come before it
    assert error.startswith("error: ") and expected in error


def test_gradient_checkpointing_runs_reentrantly_on_an_8bit_base(tmp_path, monkeypatch):
    """Every block is checkpointed in each training step, reentrantly (the non-reentrant default would keep
    bitsandbytes' 8-bit matmul inputs alive)."""
    import transformers.modeling_utils

    calls = []
    original = transformers.modeling_utils.checkpoint

    def counting_checkpoint(function, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(function, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting_checkpoint)
    argv = [*QUICK, "--max_steps", "2", "--load_in_8bit", "--gradient_checkpointing", "true"]
    args = parse_args(sft.make_parser(), [*argv, "--eval_strategy", "no", "--output_dir", str(tmp_path)])
    sft.main(*args)

    layers = 5  # stories260K
    assert len(calls) >= 2 * layers
    assert set(calls) == {True}
