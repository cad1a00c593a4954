"""`stackrlhf plan` from the command line: JSON output, the table, and one-line errors with exit code 2."""

import json

from stackrlhf.planner.cli import run


def test_json_output(capsys):
    argv = ["--model", "EleutherAI/gpt-neox-20b", "--stage", "ppo", "--quantization", "8bit", "--lora_r", "16"]
    argv += ["--gpu_memory_gb", "24", "--batch_size", "1", "--mini_batch_size", "1", "--json"]
    assert run(argv) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["params_total"] == 20_554_567_680
    assert values["fits"] is (values["peak_bytes"] <= 24 * 2**30)
    assert values["components"]["quantized_weights"] > 18 * 2**30
    assert values["settings"]["lora_target_modules"] is None and values["gradient_checkpointing"] is True


def test_table_output(capsys):
    assert run(["--model", "gpt2", "--stage", "sft", "--quantization", "4bit", "--double_quant"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808 parameters" in out and "quantization_constants" in out
    verdict = "verdict for batch 8 sequences of 256 tokens; 4bit + double quant weights, float32 activations:\n"
    assert verdict + "fits: 16 GB yes, 24 GB yes, 40 GB yes, 80 GB yes" in out and "largest that fits 24 GB" in out
    assert "  batch_size " in out and "  sequence_length " in out


def test_bad_value_is_one_line_and_exit_code_2(capsys):
    assert run(["--model", "gpt2", "--lora_target_modules", "q_proj", "v_proj"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: LoRA target module(s) q_proj, v_proj not found in GPT2LMHeadModel")


def test_stackrlhf_plan_goes_straight_to_the_planner(capsys):
    from stackrlhf import cli

    assert cli.main(["plan", "--model", "gpt2", "--stage", "reward", "--json"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert set(values["limits"]) == {"batch_size", "sequence_length"} and values["max_batch_size"] > 0
    assert values["limits"]["batch_size"] == values["max_batch_size"]  # sft/reward: the same search
