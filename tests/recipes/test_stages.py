"""The offline stages (SFT, merge, reward): built once in order and reused, checked before use and rebuilt with a
warning when broken, and built from a cold cache by a 2-process PPO run with no `stackrlhf stages` step."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from stackrlhf.cache import BrokenEntry, check_adapter, check_model, entry_problem
from stackrlhf.errors import ConfigError
from stackrlhf.recipes import stages
from stackrlhf.recipes.stages import StageOutputs, check_reward_adapter, offline_stages, pipeline_cache

RECIPE = Path(__file__).parents[2] / "recipes" / "ppo_stackllama.py"


def _write_adapter(out: Path, *keys: str) -> None:
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "base"}))
    save_file({key: torch.zeros(2) for key in keys}, out / "adapter_model.safetensors")


def _write_model(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"lm_head.weight": torch.zeros(2, 2)}, out / "model.safetensors")
    Tokenizer(WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text("{}")


@pytest.fixture
def fake_recipes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The three recipes replaced by writers of their outputs' files; returns (stage, its input) per run."""
    runs: list[tuple[str, str]] = []

    def sft(data_args, training_args, model_args) -> dict:
        runs.append(("sft", model_args.model_name_or_path))
        assert torch.get_num_threads() == stages.STAGE_THREADS  # whatever the caller's thread count
        _write_adapter(
            Path(training_args.output_dir), "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        )
        return {"eval_loss": 2.5}

    def merge(merge_args) -> None:
        runs.append(("merge", merge_args.adapter_path))
        _write_model(Path(merge_args.output_dir))

    def reward(data_args, training_args, model_args) -> dict:
        runs.append(("reward", model_args.model_name_or_path))
        _write_adapter(Path(training_args.output_dir), "base_model.model.score.weight")
        return {"eval_accuracy": 0.75}

    monkeypatch.setattr(stages.sft, "train_sft", sft)
    monkeypatch.setattr(stages.merge, "merge_adapter", merge)
    monkeypatch.setattr(stages.reward, "train_reward_model", reward)
    return runs


def test_stages_are_built_once_in_order_then_reused(
    tmp_path: Path, fake_recipes: list[tuple[str, str]], capsys
) -> None:
    threads = torch.get_num_threads()
    outputs = offline_stages(tmp_path / "pipeline")
    assert torch.get_num_threads() == threads  # the caller's count is back
    printed = capsys.readouterr().out  # one line per trained stage, naming where it is cached, not where it was built
    assert f"SFT stage: held-out loss 2.500; cached in {outputs.sft_adapter}" in printed
    assert f"reward stage: held-out pairwise accuracy 0.750; cached in {outputs.reward_adapter}" in printed
    assert ".tmp" not in printed
    assert outputs == StageOutputs(*(tmp_path / "pipeline" / name for name in ("sft", "sft-merged", "reward")))
    assert fake_recipes == [
        ("sft", "stackrlhf/stories260K"),
        ("merge", str(outputs.sft_adapter)),
        ("reward", str(outputs.sft_merged)),
    ]
    assert offline_stages(tmp_path / "pipeline") == outputs and len(fake_recipes) == 3
    assert entry_problem(outputs.sft_adapter, check_adapter) is None
    assert entry_problem(outputs.sft_merged, check_model) is None
    assert entry_problem(outputs.reward_adapter, check_reward_adapter) is None
    assert sorted(p.name for p in outputs.sft_adapter.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "stackrlhf_manifest.json",
    ]


@pytest.mark.parametrize(
    ("stage", "corrupt", "problem"),
    [
        ("sft", lambda out: (out / "adapter_model.safetensors").unlink(), "adapter_model.safetensors is missing"),
        ("sft-merged", lambda out: (out / "config.json").write_text("{"), "config.json has 1 bytes"),
        ("reward", lambda out: (out / "adapter_config.json").write_text("{}  "), "adapter_config.json has 4 bytes"),
    ],
    ids=["sft weights deleted", "merged config truncated", "reward config replaced"],
)
def test_broken_stage_is_rebuilt_with_a_warning(
    tmp_path: Path, fake_recipes: list[tuple[str, str]], caplog: pytest.LogCaptureFixture, stage, corrupt, problem
) -> None:
    outputs = offline_stages(tmp_path / "pipeline")
    corrupt(tmp_path / "pipeline" / stage)
    with caplog.at_level(logging.WARNING, logger="stackrlhf.cache"):
        assert offline_stages(tmp_path / "pipeline") == outputs
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(tmp_path / "pipeline" / stage) in warning and problem in warning and "rebuilding" in warning
    rebuilt = {"sft": "sft", "sft-merged": "merge", "reward": "reward"}[stage]
    assert [name for name, _ in fake_recipes[3:]] == [rebuilt]


def test_reward_stage_needs_its_score_head(tmp_path: Path) -> None:
    _write_adapter(tmp_path / "adapter", "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight")
    with pytest.raises(BrokenEntry, match="no score head"):
        check_reward_adapter(tmp_path / "adapter")


def test_pipeline_cache_on_a_file_is_one_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("STACKRLHF_CACHE", str(tmp_path / "file"))
    with pytest.raises(ConfigError, match=r"\$STACKRLHF_CACHE\) cannot be created: .*file is not a directory"):
        pipeline_cache()


@pytest.mark.subprocess
def test_two_process_ppo_builds_the_stages_from_a_cold_cache(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 ppo_stackllama.py` with an empty cache: no `stackrlhf stages` step needed."""
    cache = tmp_path / "cache"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "STACKRLHF_CACHE": str(cache)}
    quick = ["--steps", "8", "--batch_size", "2", "--mini_batch_size", "1", "--ppo_epochs", "1"]
    quick += ["--output_min_length", "4", "--output_max_length", "12", "--max_samples", "200", "--eval_samples", "20"]
    quick += ["--num_sample_prompts", "1", "--sample_max_new_tokens", "4", "--output_dir", str(tmp_path / "ppo")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port
    command += [str(RECIPE), *quick]
    start = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"2-process PPO from a cold cache: {time.monotonic() - start:.0f} s")
    summary = json.loads((tmp_path / "ppo" / "stackrlhf_summary.json").read_text())
    assert summary["processes"] == 2
    outputs = StageOutputs(
        *(Path(summary["stages"][name]) for name in ("sft_adapter", "sft_merged", "reward_adapter"))
    )
    assert outputs.sft_merged.parent.parent == cache / "pipeline"
    assert summary["base_model"] == str(outputs.sft_merged)
    assert summary["reward_adapter"] == str(outputs.reward_adapter)
    assert entry_problem(outputs.sft_adapter, check_adapter) is None
    assert entry_problem(outputs.sft_merged, check_model) is None
    assert entry_problem(outputs.reward_adapter, check_reward_adapter) is None
    assert result.stderr.count("Building the SFT stage into") == 1  # one process built it, the other waited
