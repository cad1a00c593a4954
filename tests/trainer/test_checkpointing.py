"""Checkpoint integrity (the manifest), `latest` falling back to the newest intact checkpoint, rotation, and the
comparison of recorded settings; on directories, without a model."""

import json
import logging

import pytest

from stackrlhf.errors import ConfigError
from stackrlhf.manifest import write_manifest
from stackrlhf.trainer.checkpointing import (
    MANIFEST_FILE,
    checkpoint_dirs,
    checkpoint_problem,
    resolve_checkpoint,
    rotate_checkpoints,
    settings_differences,
)


def fake_checkpoint(output_dir, step):
    """A checkpoint's shape: a few files, one in a subdirectory, and the manifest written last."""
    path = output_dir / f"checkpoint-{step}"
    (path / "policy").mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    (path / "trainable.safetensors").write_bytes(bytes(range(200)))
    (path / "policy" / "adapter_config.json").write_text("{}")
    write_manifest(path, MANIFEST_FILE)
    return path


def test_the_manifest_records_every_file_with_its_size_and_hash(tmp_path):
    path = fake_checkpoint(tmp_path, 1)
    files = json.loads((path / MANIFEST_FILE).read_text())["files"]
    assert sorted(files) == ["policy/adapter_config.json", "trainable.safetensors", "trainer_state.json"]
    assert files["trainable.safetensors"]["size"] == 200 and len(files["trainable.safetensors"]["sha256"]) == 64
    assert checkpoint_problem(path) is None


@pytest.mark.parametrize(
    ("damage", "problem", "found_by_size"),
    [
        (lambda p: (p / "trainable.safetensors").write_bytes(b"x"), "trainable.safetensors has 1 bytes, 200", True),
        (lambda p: (p / "policy" / "adapter_config.json").unlink(), "policy/adapter_config.json is missing", True),
        (lambda p: (p / "trainable.safetensors").write_bytes(bytes(200)), "trainable.safetensors differs from", False),
        (lambda p: (p / MANIFEST_FILE).unlink(), "no manifest.json (an unfinished save", True),
        (lambda p: (p / MANIFEST_FILE).write_text("{"), "manifest.json is unreadable", True),
    ],
)  # fmt: skip
def test_damage_is_detected_and_latest_falls_back(tmp_path, caplog, damage, problem, found_by_size):
    fake_checkpoint(tmp_path, 1)
    damage(fake_checkpoint(tmp_path, 2))
    assert checkpoint_problem(tmp_path / "checkpoint-2").startswith(problem)
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-1"
    assert f"Not resuming {tmp_path / 'checkpoint-2'}: {problem}" in caplog.text
    expected = ["checkpoint-1"] if found_by_size else ["checkpoint-1", "checkpoint-2"]  # listing checks sizes only
    assert [path.name for path in checkpoint_dirs(tmp_path)] == expected


def test_latest_without_an_intact_checkpoint_names_each_problem(tmp_path):
    (fake_checkpoint(tmp_path, 1) / "trainable.safetensors").unlink()
    (fake_checkpoint(tmp_path, 2) / MANIFEST_FILE).unlink()
    with pytest.raises(
        ConfigError, match=r"no intact checkpoint \(checkpoint-2: no manifest.json .*; checkpoint-1: t"
    ):
        resolve_checkpoint("latest", tmp_path)


def test_rotation_keeps_the_newest_complete_ones_and_never_deletes_them_all(tmp_path):
    for step in (1, 2, 3, 5):
        fake_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-2" / "trainable.safetensors").unlink()
    (tmp_path / "notes").mkdir()
    deleted = rotate_checkpoints(tmp_path, 1, newest_step=3)
    assert sorted(path.name for path in deleted) == ["checkpoint-1", "checkpoint-2"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-5", "notes"]
    assert rotate_checkpoints(tmp_path, None) == []
    with pytest.raises(ConfigError, match="save_total_limit must be at least 1"):
        rotate_checkpoints(tmp_path, -1)


def test_settings_differences_name_each_setting_with_both_values():
    recorded = {"batch_size": 4, "learning_rate": 1.41e-05, "seed": 0, "model_name_or_path": "a", "old_only": 1}
    current = {"batch_size": 2, "learning_rate": 1.41e-05, "seed": 1, "model_name_or_path": "b", "new_only": 2}
    assert settings_differences(recorded, current) == [
        "batch_size: checkpoint 4, now 2",
        'model_name_or_path: checkpoint "a", now "b"',
        "seed: checkpoint 0, now 1",
    ]
    assert settings_differences({"lora_target_modules": ["q", "v"]}, {"lora_target_modules": ("q", "v")}) == []
