"""Planner records: the bundled ones match a fresh count, local models are cached by config hash, and planning a
bundled model imports no torch."""

import json
import logging
import shutil
import subprocess
import sys

import pytest

from stackrlhf.planner.configs import bundled_models
from stackrlhf.planner.records import (
    RECORDS_DIR,
    ModelRecord,
    _local_record,
    build_record,
    bundled_record_names,
    model_record,
)


@pytest.mark.parametrize("name", bundled_record_names())
def test_each_bundled_record_is_what_a_fresh_count_gives(name):
    shipped = json.loads((RECORDS_DIR / f"{name.replace('/', '--')}.json").read_text())
    assert shipped == json.loads(json.dumps(build_record(name).to_json())), (
        f"{name}: regenerate with python -m stackrlhf.planner.records"
    )


def test_a_record_survives_json():
    record = model_record("gpt2")
    assert ModelRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert record.context_length == 1024 and record.default_lora_targets == ("c_attn",)


def test_a_local_model_is_counted_once_then_read_from_the_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("STACKRLHF_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "my-model"
    model.mkdir()
    shutil.copy(bundled_models()["gpt2"], model / "config.json")
    _local_record.cache_clear()
    first = model_record(str(model))
    (entry,) = (tmp_path / "cache" / "planner").glob("*.json")
    assert first == model_record("gpt2")

    _local_record.cache_clear()
    monkeypatch.setattr("stackrlhf.planner.records.build_record", lambda name: pytest.fail("counted again"))
    assert model_record(str(model)) == first  # from the cache entry

    entry.write_text("{truncated")
    _local_record.cache_clear()
    monkeypatch.undo()
    monkeypatch.setenv("STACKRLHF_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        assert model_record(str(model)) == first
    assert "unreadable planner cache entry" in caplog.text
    assert json.loads(entry.read_text())["model_type"] == "gpt2"  # rewritten


def test_a_changed_config_is_counted_afresh(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKRLHF_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "my-model"
    model.mkdir()
    values = json.loads(bundled_models()["gpt2"].read_text())
    (model / "config.json").write_text(json.dumps(values))
    small = model_record(str(model)).inventories["causal_lm"].params_total
    (model / "config.json").write_text(json.dumps(values | {"n_layer": 2}))
    assert model_record(str(model)).inventories["causal_lm"].params_total < small


@pytest.mark.subprocess
def test_planning_a_bundled_model_imports_no_torch():
    code = (
        "import sys; from stackrlhf.cli import main;"
        "assert main(['plan', '--model', 'meta-llama/Llama-2-7b-hf', '--stage', 'ppo', '--quantization', '8bit'])"
        " == 0;"
        "assert main(['plan', '--config', 'gpt-neox-20b/sentiment']) == 0;"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'bitsandbytes') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
