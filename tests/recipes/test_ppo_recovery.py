"""The PPO recipe recovers from kills, damaged checkpoints and torn files, refuses to mix runs, and reports failed
writes in one line without touching earlier outputs."""

import errno
import json
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stackrlhf.errors import ConfigError
from stackrlhf.models.bundled import TINY_MODEL
from stackrlhf.outputs import OutputError
from stackrlhf.recipes import ppo
from stackrlhf.recipes.runner import parse_args
from stackrlhf.trainer.checkpointing import checkpoint_dirs
from stackrlhf.trainer.reporting import SAMPLES_FILE, STATS_FILE, read_stats

WORKER = Path(__file__).parents[1] / "trainer" / "ppo_kill_worker.py"
QUICK = [
    "--model_name_or_path", TINY_MODEL,
    "--steps", "12", "--batch_size", "4", "--mini_batch_size", "2", "--ppo_epochs", "2",
    "--output_min_length", "4", "--output_max_length", "10", "--max_prompt_length", "64",
    "--max_samples", "300", "--eval_samples", "40", "--num_sample_prompts", "2", "--sample_max_new_tokens", "8",
    "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--save_steps", "1",
]  # fmt: skip


def run(args, **hooks):
    return ppo.train_ppo(*parse_args(ppo.make_parser(), args)[:5], **hooks)


def comparable(records):
    return [{k: v for k, v in r.items() if k != "seconds" and not k.startswith("time/")} for r in records]


def staged(directory):
    return sorted(path.relative_to(directory) for path in Path(directory).rglob(".staging-*"))


def assert_same_policy(resumed, expected):
    for name in ("adapter_model.safetensors", "model.safetensors"):
        want, got = load_file(expected / name), load_file(resumed / name)
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=f"{name}: {key}")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, reward_dirs):
    """An uninterrupted 3-step run with checkpoints 1 and 2, and its arguments."""
    out = tmp_path_factory.mktemp("finished") / "run"
    args = [*QUICK, "--reward_adapter", str(reward_dirs["adapter"])]
    run([*args, "--output_dir", str(out)])
    return out, args


@pytest.fixture
def copy_of(finished, tmp_path):
    out, args = finished
    shutil.copytree(out, tmp_path / "run")
    return tmp_path / "run", [*args, "--output_dir", str(tmp_path / "run")]


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_save_total_limit_below_one_is_refused(limit):
    with pytest.raises(ConfigError, match=r"save_total_limit.* must be at least 1"):
        parse_args(ppo.make_parser(), [*QUICK, "--save_total_limit", limit])


def test_resume_refuses_other_settings_in_one_line_naming_them(copy_of):
    out, args = copy_of
    before = (out / STATS_FILE).read_text()
    with pytest.raises(ConfigError) as raised:
        run(
            [
                *args,
                "--batch_size",
                "2",
                "--learning_rate",
                "3e-5",
                "--seed",
                "7",
                "--resume_from_checkpoint",
                "latest",
            ]
        )
    message = str(raised.value)
    assert "\n" not in message and "checkpoint-2 was written with other settings" in message
    for expected in ("batch_size: checkpoint 4, now 2", "learning_rate: checkpoint 0.0005, now 3e-05"):
        assert expected in message
    assert "seed: checkpoint 0, now 7" in message and "total_ppo_epochs: checkpoint 3, now 6" in message
    assert (out / STATS_FILE).read_text() == before  # refused before anything was written


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda c: (c / "trainable.safetensors").write_bytes((c / "trainable.safetensors").read_bytes()[:100]),
         "trainable.safetensors has 100 bytes"),
        (lambda c: (c / "optimizer.json").unlink(), "optimizer.json is missing"),
        (lambda c: (c / "policy" / "adapter_config.json").write_text("{}"), "policy/adapter_config.json has 2 bytes"),
    ],
)  # fmt: skip
def test_latest_passes_over_a_damaged_checkpoint_to_the_newest_intact_one(copy_of, finished, caplog, damage, problem):
    out, args = copy_of
    damage(out / "checkpoint-2")
    caplog.set_level(logging.INFO)
    summary = run([*args, "--resume_from_checkpoint", "latest"])
    assert f"Not resuming {out / 'checkpoint-2'}: {problem}" in caplog.text
    assert f"Resumed from {out / 'checkpoint-1'} at step 1 of 3" in caplog.text
    assert summary["steps"] == 3
    assert comparable(read_stats(out / STATS_FILE)) == comparable(read_stats(finished[0] / STATS_FILE))
    assert_same_policy(out, finished[0])
    assert [path.name for path in checkpoint_dirs(out)] == ["checkpoint-1", "checkpoint-2"]  # the damaged one replaced


def test_a_named_damaged_checkpoint_is_one_line_naming_the_file(copy_of):
    out, args = copy_of
    (out / "checkpoint-1" / "rng_state_0.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(ConfigError, match=r"damaged checkpoint \(rng_state_0.safetensors has 10 bytes, \d+ were"):
        run([*args, "--resume_from_checkpoint", str(out / "checkpoint-1")])
    (out / "checkpoint-2" / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="no intact checkpoint .*checkpoint-2: no manifest.json.*checkpoint-1: rng"):
        run([*args, "--resume_from_checkpoint", "latest"])


def test_a_torn_stats_line_and_unreadable_samples_are_repaired_on_resume(copy_of, finished, caplog):
    out, args = copy_of
    with (out / STATS_FILE).open("a") as f:
        f.write('{"step": 3, "rew')
    (out / SAMPLES_FILE).write_text('{"before": [')
    run([*args, "--resume_from_checkpoint", "latest"])
    assert "dropping its last line 4, cut short by an interrupted write" in caplog.text
    assert "samples.json is unreadable" in caplog.text
    assert comparable(read_stats(out / STATS_FILE)) == comparable(read_stats(finished[0] / STATS_FILE))
    expected = json.loads((finished[0] / SAMPLES_FILE).read_text())
    assert json.loads((out / SAMPLES_FILE).read_text()) == expected  # "before" from the checkpoint


def test_a_failed_checkpoint_write_is_one_line_and_keeps_earlier_outputs(tmp_path, reward_dirs, monkeypatch):
    import stackrlhf.trainer.checkpointing as checkpointing

    out = tmp_path / "run"
    real_save_file = checkpointing.save_file

    def disk_full_in_checkpoint_2(tensors, filename, *args, **kwargs):
        if ".staging-checkpoint-2." in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpointing, "save_file", disk_full_in_checkpoint_2)
    with pytest.raises(OutputError) as raised:
        run([*QUICK, "--reward_adapter", str(reward_dirs["adapter"]), "--output_dir", str(out)])
    assert str(raised.value) == f"cannot write checkpoint-2 in {out}: No space left on device."
    assert [path.name for path in checkpoint_dirs(out)] == ["checkpoint-1"] and staged(out) == []
    assert [record["step"] for record in read_stats(out / STATS_FILE)] == [0, 1]
    assert json.loads((out / SAMPLES_FILE).read_text())["before"]


@pytest.mark.subprocess
def test_kill_9_at_every_point_then_resume_equals_an_uninterrupted_run(tmp_path, reward_dirs):
    """One output directory goes through eight kills in a row, each run resuming what the last one left."""
    args = [*QUICK, "--steps", "20", "--save_total_limit", "2", "--reward_adapter", str(reward_dirs["adapter"])]
    full, cut = tmp_path / "full", tmp_path / "cut"
    resume = [*args, "--output_dir", str(cut), "--resume_from_checkpoint", "latest"]
    runs = [
        ([*args, "--output_dir", str(full)], None),
        ([*args, "--output_dir", str(cut)], "samples-write"),  # before any checkpoint
        ([*args, "--output_dir", str(cut)], None),  # refused: cut holds that run's outputs
        ([*args, "--output_dir", str(cut), "--overwrite_output_dir"], "mid-save"),
        (resume, "stats-rewrite"),
        (resume, "before-rename"),
        (resume, "mid-rotation"),
        (resume, "stats-append"),
        (resume, "after-rotation"),
        (resume, "final-save"),
        (resume, None),
    ]
    plan, results = tmp_path / "plan.json", tmp_path / "results.json"
    plan.write_text(json.dumps({"runs": [{"argv": argv, "kill": kill} for argv, kill in runs]}))
    done = subprocess.run(
        [sys.executable, str(WORKER), str(plan), str(results)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = json.loads(results.read_text())
    expected = [{"signal": int(signal.SIGKILL), "rc": None} if kill else {"signal": None, "rc": 0} for _, kill in runs]
    expected[2] = {"signal": None, "rc": 2}
    assert outcomes == expected, done.stderr[-3000:]
    assert f"error: output_dir {cut} holds another run's outputs (stats.jsonl)" in done.stderr

    assert staged(cut) == [] and staged(full) == []
    assert [path.name for path in checkpoint_dirs(cut)] == ["checkpoint-3", "checkpoint-4"]
    records = read_stats(cut / STATS_FILE)
    assert [record["step"] for record in records] == [0, 1, 2, 3, 4]
    assert comparable(records) == comparable(read_stats(full / STATS_FILE))
    assert_same_policy(cut, full)
    assert json.loads((cut / SAMPLES_FILE).read_text()) == json.loads((full / SAMPLES_FILE).read_text())
