"""The GRPO / RLOO recipe on the tiny model: the reward adapter on the policy's own base (scores, adapter switching),
short real runs of both algorithms, the separate reward model, and bad input as one line."""

import json
import math
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import TINY_MODEL
from stackrlhf.recipes import grpo
from stackrlhf.recipes.runner import parse_args, run_recipe
from stackrlhf.rewards import RewardScorer
from stackrlhf.rewards.shared_base import SharedBaseRewardScorer
from stackrlhf.trainer.reporting import STATS_FILE, SUMMARY_FILE, read_stats

TEXTS = ["Question: How do I bake bread?\n\nAnswer: Mix flour and water.", "Once upon a time", "Hi"]
QUICK = [
    "--model_name_or_path", TINY_MODEL,
    "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "2",
    "--max_completion_length", "8", "--max_prompt_length", "64",
    "--max_samples", "200", "--eval_samples", "20", "--num_sample_prompts", "2", "--sample_max_new_tokens", "8",
    "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
]  # fmt: skip


def run(args):
    return grpo.train_group_rl(*parse_args(grpo.make_parser(), args)[:4])


@pytest.fixture
def policy(tiny_model_dir):
    """A LoRA policy whose adapter changes the logits (not the zero-initialised one), in train mode."""
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).train()


def test_the_reward_adapter_on_the_policy_base_scores_as_the_reward_model_and_leaves_the_policy_active(
    policy, tiny_model_dir, reward_dirs
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer(TEXTS[0], return_tensors="pt")
    before = policy(**ids).logits
    scorer = SharedBaseRewardScorer(policy, tokenizer, str(reward_dirs["adapter"]), batch_size=2)
    assert policy.active_adapter == "default" and policy.training

    scores = scorer(TEXTS)
    assert scores == pytest.approx(RewardScorer.from_pretrained(str(reward_dirs["adapter"]))(TEXTS), abs=1e-5)
    assert policy.active_adapter == "default" and policy.training
    assert torch.equal(policy(**ids).logits, before)  # the policy's forward pass is exactly the policy's
    trainable = {name for name, param in policy.named_parameters() if param.requires_grad}
    assert trainable and all(".default." in name for name in trainable)
    assert any(".reward." in name for name, _ in policy.named_parameters())


def test_a_failing_reward_forward_still_switches_back(policy, tiny_model_dir, reward_dirs, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scorer = SharedBaseRewardScorer(policy, tokenizer, str(reward_dirs["adapter"]))
    body = policy.get_base_model().base_model

    def broken(*args, **kwargs):
        assert policy.active_adapter == "reward" and not policy.training
        raise RuntimeError("out of memory")

    monkeypatch.setattr(body, "forward", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        scorer(TEXTS)
    assert policy.active_adapter == "default" and policy.training
    assert all(param.requires_grad == (".default." in name) for name, param in policy.named_parameters())


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_a_short_run_on_the_shared_base_writes_every_output(tmp_path, reward_dirs, algorithm):
    out = tmp_path / algorithm
    adapter = str(reward_dirs["adapter"])
    summary = run([*QUICK, "--algorithm", algorithm, "--reward_adapter", adapter, "--output_dir", str(out)])
    assert summary["design"] == "shared base" and summary["algorithm"] == algorithm and summary["steps"] == 2
    assert summary["torch_threads"] == torch.get_num_threads()
    assert json.loads((out / SUMMARY_FILE).read_text())["steps"] == 2
    records = read_stats(out / STATS_FILE)
    assert [r["step"] for r in records] == [0, 1] and all(r["samples"] == 4 for r in records)
    assert all(math.isfinite(r["reward_mean"]) and math.isfinite(r["objective/kl"]) for r in records)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "reward").exists()
    assert (out / "plots" / "training.png").stat().st_size > 10_000
    roles = summary["memory_bytes"]
    assert roles["reward adapter + head"] > 0 and roles["policy adapter"] > 0
    assert roles["not held: separate reference + reward copies"] == 2 * roles["base (shared)"]
    # the rewards scored inside the trainer's model are the reward recipe's model's rewards
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples["before"]) == len(samples["after"]) == 2
    texts = [s["query"] + s["response"] for s in samples["before"]]
    expected = RewardScorer.from_pretrained(adapter)(texts)
    assert [s["reward"] for s in samples["before"]] == pytest.approx(expected, abs=1e-5)


def test_a_separate_reward_model_gives_the_shared_base_rewards(tmp_path, reward_dirs):
    one_step = [*QUICK, "--max_steps", "1"]
    shared = run([*one_step, "--reward_adapter", str(reward_dirs["adapter"]), "--output_dir", str(tmp_path / "a")])
    separate = run([*one_step, "--reward_model", str(reward_dirs["merged"]), "--output_dir", str(tmp_path / "b")])
    assert separate["design"] == "separate reward model"
    assert separate["memory_bytes"]["reward model (separate)"] > 0
    assert shared["reward_first"] == pytest.approx(separate["reward_first"], abs=1e-4)


def test_bad_input_is_one_line(tmp_path, reward_dirs, capsys):
    other_base = tmp_path / "other-base-adapter"
    shutil.copytree(reward_dirs["adapter"], other_base)
    config = json.loads((other_base / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(reward_dirs["merged"])  # trained on another model
    (other_base / "adapter_config.json").write_text(json.dumps(config))
    adapter = ["--reward_adapter", str(reward_dirs["adapter"])]
    cases = [
        ([*QUICK, *adapter, "--num_generations", "3"], "must be divisible by num_generations (3)"),
        ([*QUICK, "--reward_adapter", str(other_base)], f"was trained on {reward_dirs['merged']}, not on"),
        ([*QUICK, *adapter, "--algorithm", "rloo", "--loss_type", "grpo"], "RLOOTrainer has no --loss_type"),
        ([*QUICK, *adapter, "--reward_model", str(reward_dirs["merged"])], "not both"),
        ([*QUICK], "needs a reward"),
        ([*QUICK, *adapter, "--torch_threads", "0"], "torch_threads: 0 must be at least 1"),
    ]
    for args, message in cases:
        assert run_recipe(grpo.make_parser(), grpo.main, [*args, "--output_dir", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1], err
    assert not (tmp_path / "x").exists()


def test_a_reward_adapter_of_other_shapes_is_refused_when_it_loads(policy, tiny_model_dir, reward_dirs, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    weights = reward_dirs["adapter"] / "adapter_model.safetensors"
    broken = tmp_path / "adapter"
    shutil.copytree(reward_dirs["adapter"], broken)
    tensors = {key: torch.zeros(value.shape[0], value.shape[1] * 2) for key, value in load_file(weights).items()}
    save_file(tensors, broken / "adapter_model.safetensors")
    with pytest.raises(ConfigError, match="cannot load it"):
        SharedBaseRewardScorer(policy, tokenizer, str(broken))
    assert list(policy.peft_config) == ["default"] and policy.active_adapter == "default"
