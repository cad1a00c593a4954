"""The end-of-run report: memory per role from the model's real structure, and `finish_run`'s files and table."""

import json
import pathlib

import pytest
import torch
from peft import LoraConfig

from stackrlhf import AutoModelForCausalLMWithValueHead
from stackrlhf.errors import DataError
from stackrlhf.models.bundled import TINY_MODEL
from stackrlhf.outputs import OutputError
from stackrlhf.trainer.reporting import (
    SAMPLES_FILE,
    STATS_FILE,
    SUMMARY_FILE,
    RoleBytes,
    StatsLog,
    finish_run,
    read_samples,
    read_stats,
    role_bytes,
    write_samples,
)


def test_a_full_policy_holds_its_own_reference_copy(tiny_model_dir):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    memory = role_bytes(model, torch.optim.Adam(model.parameters()))
    assert not memory.is_peft and not memory.has_reward_adapter
    assert memory.policy_adapter == 0 and memory.value_head > 0 and memory.optimizer_state == 0  # no step yet
    assert list(memory.held()) == ["base (shared)", "policy adapter", "value head", "optimizer state"]
    assert memory.not_held() == {}


def test_a_lora_policy_rides_on_the_base_instead_of_copying_it(tiny_model_dir):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL, peft_config=lora)
    memory = role_bytes(model)
    assert memory.is_peft and not memory.has_reward_adapter and memory.optimizer_state is None
    assert 0 < memory.policy_adapter < memory.base
    assert list(memory.held()) == ["base (shared)", "policy adapter", "value head"]
    assert memory.not_held() == {"not held: separate reference copy": memory.base}


def test_finish_run_writes_samples_summary_and_table(tmp_path, capsys):
    log = StatsLog(tmp_path / STATS_FILE)
    for step, reward in enumerate([0.0, 1.0, 2.0, 3.0, 4.0]):
        log.write(step, {"objective/kl": 0.1 * step, "ppo/loss/value": 1.0}, [reward, reward + 1.0], seconds=2.0)
    samples = {
        "before": [{"query": "Q: why?", "response": " because", "reward": -1.0}],
        "after": [{"query": "Q: why?", "response": " because of this", "reward": 1.5}],
    }
    memory = RoleBytes(base=1000, policy_adapter=10, value_head=5, reward_adapter=20, optimizer_state=30, is_peft=True)

    result = finish_run(
        tmp_path, "reward adapter r", samples, memory, 1, summary={"design": "shared base"}, extra_roles={"x": 7}
    )

    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == result
    assert read_samples(tmp_path) == samples and (tmp_path / SAMPLES_FILE).is_file()
    assert result["design"] == "shared base" and result["reward"] == "reward adapter r"
    assert result["steps"] == 5 and result["processes"] == 1 and result["seconds"] == pytest.approx(10.0)
    assert result["reward_first"] == pytest.approx(0.5) and result["reward_last"] == pytest.approx(4.5)
    roles = dict(result["memory_bytes"])
    roles.pop("CUDA peak allocated", None)
    assert list(roles.items()) == [  # the table's order: held, models outside the policy, avoided copies
        ("base (shared)", 1000),
        ("policy adapter", 10),
        ("value head", 5),
        ("reward adapter + head", 20),
        ("optimizer state", 30),
        ("x", 7),
        ("not held: separate reference + reward copies", 2000),
    ]
    printed = capsys.readouterr().out
    assert "memory: not held: separate reference + reward copies  2.00 kB" in printed
    assert "mean reward, last 20% of steps" in printed and "4.5000" in printed
    assert "before (-1.000): because" in printed and "after  (+1.500): because of this" in printed


def test_a_torn_last_stats_line_is_dropped_and_a_resumed_log_keeps_the_earlier_steps(tmp_path, caplog):
    path = tmp_path / STATS_FILE
    path.write_text('{"step": 0, "reward_mean": 1.0}\n{"step": 1, "reward_mean": 2.0}\n{"step": 2, "rew')
    assert [record["step"] for record in read_stats(path)] == [0, 1]
    assert "dropping its last line 3, cut short by an interrupted write" in caplog.text
    StatsLog(path, resume_step=2)
    assert path.read_text() == '{"step": 0, "reward_mean": 1.0}\n{"step": 1, "reward_mean": 2.0}\n'
    assert [p.name for p in tmp_path.iterdir()] == [STATS_FILE]


def test_a_corrupt_stats_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / STATS_FILE
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match=rf"{STATS_FILE} line 2 is not JSON"):
        read_stats(path)


def test_a_failed_stats_append_leaves_no_torn_line(tmp_path, monkeypatch):
    path = tmp_path / STATS_FILE
    log = StatsLog(path)
    log.write(0, {}, [1.0], 0.1)
    real_open = pathlib.Path.open

    class DiskFullHalfway:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "open", lambda self, *a, **k: DiskFullHalfway(real_open(self, *a, **k)))
    with pytest.raises(OutputError, match=f"^cannot write {STATS_FILE} in {tmp_path}: No space left on device.$"):
        log.write(1, {}, [1.0], 0.1)
    monkeypatch.undo()
    assert path.read_text().count("\n") == 1 and [record["step"] for record in read_stats(path)] == [0]


def test_unreadable_samples_are_made_again(tmp_path, caplog):
    (tmp_path / SAMPLES_FILE).write_text('{"before": [')
    assert read_samples(tmp_path) == {}
    assert "samples.json is unreadable (JSONDecodeError): its generations are made again" in caplog.text
    write_samples(tmp_path, {"before": []})
    assert read_samples(tmp_path) == {"before": []} and len(list(tmp_path.iterdir())) == 1
