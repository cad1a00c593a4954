"""The DPO recipe: a short real run on the tiny model (from the offline SFT stage when no model is named) with the
adapter-disabled base as its reference, the shipped StackLLaMA 2 config, and bad input as one line."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from stackrlhf.recipes import dpo
from stackrlhf.recipes.runner import run_recipe
from stackrlhf.recipes.stages import StageOutputs
from stackrlhf.trainer.reporting import SUMMARY_FILE

QUICK = ["--max_steps", "4", "--logging_steps", "2", "--max_samples", "72", "--eval_samples", "16"]


class RecordingTrainer(dpo.DPOTrainer):
    """TRL's DPOTrainer, kept for inspection after the recipe returns."""

    last: RecordingTrainer | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        RecordingTrainer.last = self


@pytest.fixture(autouse=True, scope="module")
def keep_torch_threads():
    """A recipe run sets torch's thread count (the tiny config's `torch_threads: 1`); the other tests keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir):
    """A bare run (no --model_name_or_path) whose offline SFT stage is the tiny model itself, so no stage is built."""
    output_dir = tmp_path_factory.mktemp("dpo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dpo, "offline_stages", lambda: StageOutputs(output_dir, tiny_model_dir, output_dir))
        patch.setattr(dpo, "DPOTrainer", RecordingTrainer)
        torch.set_num_threads(2)
        assert run_recipe(dpo.make_parser(), dpo.main, [*QUICK, "--output_dir", str(output_dir)]) == 0
    return output_dir, json.loads((output_dir / SUMMARY_FILE).read_text()), RecordingTrainer.last


def test_dpo_starts_from_the_sft_stage_and_reports_held_out_rewards(dpo_run, tiny_model_dir, capsys):
    output_dir, summary, _ = dpo_run
    assert summary["base_model"] == str(tiny_model_dir) and summary["reference"] == "base model, adapter disabled"
    assert json.loads((output_dir / SUMMARY_FILE).read_text()) == summary
    assert summary["train_rows"] + summary["eval_rows"] + summary["dropped_rows"] == 72  # QUICK's max_samples
    assert summary["eval_rows"] > 0
    assert 0.0 <= summary["eval_reward_accuracy"] <= 1.0
    assert summary["eval_reward_margin"] == pytest.approx(
        summary["eval_reward_chosen"] - summary["eval_reward_rejected"], abs=1e-5
    )
    assert (output_dir / "adapter_model.safetensors").is_file() and (output_dir / dpo.PLOT_FILE).is_file()
    assert summary["steps"] == 4 and summary["pairs_seen"] == 4 * 8  # the tiny config's batch of 8 pairs
    assert summary["train_seconds"] > 0
    assert summary["torch_threads"] == torch.get_num_threads() == 1  # the tiny config's, set by run_recipe
    assert json.loads((output_dir / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"


def test_the_reference_is_the_base_with_the_adapter_disabled(dpo_run, tiny_model_dir):
    _, _, trainer = dpo_run
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    assert list(trainer.model.peft_config) == ["default"]  # no frozen "ref" copy of the adapter
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    inputs = trainer.processing_class("Question: Hi?\n\nAnswer: Hello.", return_tensors="pt")
    trainer.model.eval()
    with torch.no_grad():
        expected = base(**inputs).logits
        policy = trainer.model(**inputs).logits
        with trainer.model.disable_adapter():
            reference = trainer.model(**inputs).logits
    torch.testing.assert_close(reference, expected)
    assert not torch.allclose(policy, expected)


def test_the_shipped_stackllama2_config_parses(capsys):
    # bf16 needs a GPU where the options are parsed
    code = run_recipe(dpo.make_parser(), dpo.main, ["--config", "llama-2-7b/dpo", "--bf16", "false", "--dry_run"])
    assert code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["DPOConfig"]["beta"] == 0.1 and resolved["DPOConfig"]["learning_rate"] == 5.0e-4
    assert resolved["ModelConfig"]["load_in_4bit"] and resolved["ModelConfig"]["use_peft"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--beta", "0", "--dry_run"], "beta: 0.0 must be greater than 0"),
        (["--load_in_8bit", "--load_in_4bit", "--dry_run"], "8 bit and 4 bit"),
        (["--model_name_or_path", "{adapter}", "--dry_run"], "is a LoRA adapter; DPO's base must be a full model"),
        (["--eval_samples", "0", "--eval_strategy", "steps", "--dry_run"], "--eval_samples 0 holds out no pairs"),
        (["--torch_threads", "0", "--dry_run"], "torch_threads: 0 must be at least 1"),
        (
            ["--model_name_or_path", "stackrlhf/stories260K", "--max_samples", "20", "--eval_samples", "0"]
            + ["--max_length", "4"],
            "no training pair fits --max_length 4",
        ),
    ],
    ids=["beta", "8-and-4-bit", "adapter-as-base", "eval-without-rows", "threads", "prompts-fill-max-length"],
)
def test_bad_input_is_one_line(argv, expected, reward_dirs, tmp_path, capsys):
    argv = [arg.format(adapter=reward_dirs["adapter"]) for arg in argv]
    assert run_recipe(dpo.make_parser(), dpo.main, [*argv, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, err[-2000:]
