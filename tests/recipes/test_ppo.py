"""The StackLLaMA PPO recipe on the tiny model: outputs, both reward designs, resume, interrupted saves, bad input."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import TINY_MODEL
from stackrlhf.recipes import ppo
from stackrlhf.recipes.runner import parse_args
from stackrlhf.rewards import RewardError
from stackrlhf.trainer.checkpointing import checkpoint_dirs, resolve_checkpoint
from stackrlhf.trainer.reporting import STATS_FILE, SUMMARY_FILE, read_stats
from tests.trainer.rollout_ratio import check_recipe_rollouts

QUICK = [
    "--model_name_or_path", TINY_MODEL,
    "--steps", "12", "--batch_size", "4", "--mini_batch_size", "2", "--ppo_epochs", "2",
    "--output_min_length", "4", "--output_max_length", "10", "--max_prompt_length", "64",
    "--max_samples", "300", "--eval_samples", "40", "--num_sample_prompts", "2", "--sample_max_new_tokens", "8",
    "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
]  # fmt: skip


def run(args, **hooks):
    return ppo.train_ppo(*parse_args(ppo.make_parser(), args)[:5], **hooks)


def comparable(records):
    return [{k: v for k, v in r.items() if k != "seconds" and not k.startswith("time/")} for r in records]


def test_shared_base_run_writes_every_output(tmp_path, reward_dirs):
    out = tmp_path / "run"
    summary = run([*QUICK, "--reward_adapter", str(reward_dirs["adapter"]), "--output_dir", str(out)])
    assert summary["design"] == "shared base" and summary["steps"] == 3
    assert json.loads((out / SUMMARY_FILE).read_text())["steps"] == 3
    records = read_stats(out / STATS_FILE)
    assert [r["step"] for r in records] == [0, 1, 2] and all(r["samples"] == 4 for r in records)
    assert all(math.isfinite(r["objective/kl"]) for r in records)
    assert (out / "adapter_model.safetensors").is_file() and (out / "model.safetensors").is_file()
    assert (out / "plots" / "training.png").stat().st_size > 10_000
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples["before"]) == len(samples["after"]) == 2
    roles = summary["memory_bytes"]
    assert roles["reward adapter + head"] > 0 and roles["policy adapter"] > 0
    assert roles["base (shared)"] > 5 * roles["policy adapter"]


def test_every_rollout_comes_from_the_policy_its_step_scores(tmp_path, reward_dirs, monkeypatch):
    """Before each step's update the PPO ratio π_old / π_sampling is 1 at every sampled token, also after earlier
    updates left the policy in training mode (0.11.4 then sampled with LoRA dropout on: ratios off by nats)."""
    trainers = check_recipe_rollouts(monkeypatch, ppo)
    args = [*QUICK, "--lora_dropout", "0.5", "--reward_adapter", str(reward_dirs["adapter"])]
    run([*args, "--output_dir", str(tmp_path / "run")])
    assert len(trainers[0].log_ratios) == 3 and max(trainers[0].log_ratios) < 1e-4


def test_separate_reward_model_with_an_8bit_base(tmp_path, reward_dirs):
    out = tmp_path / "run"
    args = [*QUICK, "--steps", "8", "--reward_model", str(reward_dirs["merged"]), "--load_in_8bit"]
    summary = run([*args, "--output_dir", str(out)])
    assert summary["design"] == "separate reward model" and summary["quantization"] == "8bit"
    assert summary["memory_bytes"]["reward model (separate)"] > summary["memory_bytes"]["base (shared)"]
    assert len(read_stats(out / STATS_FILE)) == 2


def test_an_8bit_shared_base_can_keep_its_16_bit_weights(tmp_path, reward_dirs):
    args = [*QUICK, "--steps", "8", "--reward_adapter", str(reward_dirs["adapter"]), "--load_in_8bit"]
    args += ["--dtype", "bfloat16", "--upcast_non_quantized", "false", "--output_dir", str(tmp_path / "run")]
    summary = run(args)
    assert summary["steps"] == 2 and math.isfinite(summary["kl_last"])
    upcast = run([*args[:-1], str(tmp_path / "upcast"), "--upcast_non_quantized", "true"])
    assert summary["memory_bytes"]["base (shared)"] < upcast["memory_bytes"]["base (shared)"]


def test_the_adapter_and_the_merged_model_give_the_same_rewards(tmp_path, reward_dirs):
    """The shared-base reward (adapter on the policy's base) equals the separate merged reward model's."""
    first = run(
        [*QUICK, "--steps", "4", "--reward_adapter", str(reward_dirs["adapter"]), "--output_dir", str(tmp_path / "a")]
    )
    second = run(
        [*QUICK, "--steps", "4", "--reward_model", str(reward_dirs["merged"]), "--output_dir", str(tmp_path / "b")]
    )
    assert first["reward_first"] == pytest.approx(second["reward_first"], abs=1e-4)


class Interrupt(Exception):
    pass


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, reward_dirs):
    args = [*QUICK, "--steps", "20", "--reward_adapter", str(reward_dirs["adapter"]), "--save_steps", "2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    run([*args, "--output_dir", str(full)])

    def stop_after_step_2(step, stats):
        if step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run([*args, "--output_dir", str(cut)], on_step=stop_after_step_2)
    assert [p.name for p in checkpoint_dirs(cut)] == ["checkpoint-2"]
    assert len(read_stats(cut / STATS_FILE)) == 3  # step 2 ran but its checkpoint is not written
    run([*args, "--output_dir", str(cut), "--resume_from_checkpoint", "latest"])

    assert comparable(read_stats(cut / STATS_FILE)) == comparable(read_stats(full / STATS_FILE))
    expected, resumed = load_file(full / "adapter_model.safetensors"), load_file(cut / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0)
    v_expected, v_resumed = load_file(full / "model.safetensors"), load_file(cut / "model.safetensors")
    for key in v_expected:
        torch.testing.assert_close(v_resumed[key], v_expected[key], rtol=0, atol=0)
    assert [p.name for p in checkpoint_dirs(cut)] == ["checkpoint-2", "checkpoint-4"]


def test_an_interrupted_save_leaves_the_previous_checkpoint_usable(tmp_path, reward_dirs, monkeypatch):
    import stackrlhf.trainer.checkpointing as checkpointing

    out = tmp_path / "run"
    args = [*QUICK, "--reward_adapter", str(reward_dirs["adapter"]), "--save_steps", "1", "--save_total_limit", "1"]
    real_save_state, calls = checkpointing.save_state, []

    def crash_on_the_second_checkpoint(directory, name, state):
        if name == "optimizer":
            calls.append(directory)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save_state(directory, name, state)

    monkeypatch.setattr(checkpointing, "save_state", crash_on_the_second_checkpoint)
    with pytest.raises(OSError, match="disk full"):
        run([*args, "--output_dir", str(out)])
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-1"]
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    # a process killed mid-save leaves a staging directory behind: it is never taken for a checkpoint
    (out / ".staging-checkpoint-2.x").mkdir()
    (out / ".staging-checkpoint-2.x" / "trainable.safetensors").write_bytes(b"partial")
    assert resolve_checkpoint("latest", out).name == "checkpoint-1"
    monkeypatch.undo()
    summary = run([*args, "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert summary["steps"] == 3


def test_a_nan_reward_stops_before_the_update_and_keeps_checkpoints(tmp_path, reward_dirs):
    out = tmp_path / "run"
    with pytest.raises(RewardError, match=r"returned nan for sample 0 of step 0"):
        run([*QUICK, "--reward_model", str(reward_dirs["nan"]), "--save_steps", "1", "--output_dir", str(out)])
    assert checkpoint_dirs(out) == []


def run_two_steps_with_checkpoints(out, reward_dirs):
    adapter = str(reward_dirs["adapter"])
    run([*QUICK, "--steps", "8", "--reward_adapter", adapter, "--save_steps", "1", "--output_dir", str(out)])


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, reward_dirs):
    out = tmp_path / "run"
    run_two_steps_with_checkpoints(out, reward_dirs)
    args = [*QUICK, "--lora_r", "8", "--reward_adapter", str(reward_dirs["adapter"]), "--output_dir", str(out)]
    with pytest.raises(ConfigError, match="trainable parameters do not match"):
        run([*args, "--resume_from_checkpoint", str(out / "checkpoint-1")])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--reward_adapter", "does/not/exist/here"], "no such directory"),
        (["--reward_adapter", "."], "no adapter_config.json"),
        (["--reward_adapter", "{adapter}", "--output_max_length", "600"], "leaves no room for a prompt"),
        (["--reward_adapter", "{adapter}", "--max_prompt_length", "3"], "all .* prompts are longer than 3 tokens"),
        ([], "needs a reward"),
        (["--reward_adapter", "{adapter}", "--reward_model", "{merged}"], "not both"),
        (["--reward_adapter", "{adapter}", "--resume_from_checkpoint", "latest"], "has no checkpoint"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, reward_dirs, extra, message):
    extra = [arg.format(**reward_dirs) for arg in extra]
    with pytest.raises(ConfigError, match=message):
        run([*QUICK, *extra, "--output_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "checkpoint-1").exists()


def model_without_special_tokens(tiny_model_dir, model_dir, *, keep_eos):
    import shutil

    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = None
    if not keep_eos:
        tokenizer.eos_token = None
    tokenizer.save_pretrained(model_dir)
    return str(model_dir)


def test_a_tokenizer_without_pad_or_eos_token_is_refused(tmp_path, tiny_model_dir, reward_dirs):
    model = model_without_special_tokens(tiny_model_dir, tmp_path / "no-pad", keep_eos=False)
    args = [*QUICK, "--model_name_or_path", model, "--reward_adapter", str(reward_dirs["adapter"])]
    with pytest.raises(ConfigError, match="neither a pad nor an EOS token"):
        run([*args, "--output_dir", str(tmp_path / "run")])


def test_a_tokenizer_without_pad_token_pads_with_eos_and_says_so(tmp_path, tiny_model_dir, reward_dirs, caplog):
    model = model_without_special_tokens(tiny_model_dir, tmp_path / "no-pad", keep_eos=True)
    args = [*QUICK, "--steps", "4", "--model_name_or_path", model, "--reward_adapter", str(reward_dirs["adapter"])]
    assert run([*args, "--output_dir", str(tmp_path / "run")])["steps"] == 1
    assert "no pad token: padding with its EOS token" in caplog.text


def test_load_refuses_a_checkpoint_from_another_world_size(tmp_path, reward_dirs):
    out = tmp_path / "run"
    run_two_steps_with_checkpoints(out, reward_dirs)
    state_file = out / "checkpoint-1" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["world_size"] = 4
    state_file.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="written by 4 processes"):
        run([*QUICK, "--reward_adapter", str(reward_dirs["adapter"]), "--output_dir", str(out),
             "--resume_from_checkpoint", str(out / "checkpoint-1")])  # fmt: skip


def test_a_checkpoint_is_safetensors_and_json_and_its_policy_loads(tmp_path, reward_dirs):
    from stackrlhf import AutoModelForCausalLMWithValueHead

    out = tmp_path / "run"
    run_two_steps_with_checkpoints(out, reward_dirs)
    checkpoint = out / "checkpoint-1"
    pickles = [p for p in checkpoint.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    assert pickles == []
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(checkpoint / "policy")
    trainable = load_file(checkpoint / "trainable.safetensors")
    torch.testing.assert_close(policy.v_head.summary.weight, trainable["v_head.summary.weight"], rtol=0, atol=0)
    lora_key = next(key for key in trainable if "lora_B" in key)
    torch.testing.assert_close(dict(policy.named_parameters())[lora_key], trainable[lora_key], rtol=0, atol=0)
