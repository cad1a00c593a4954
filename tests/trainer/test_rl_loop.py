"""The settings a PPO checkpoint records and compares on resume, including those older checkpoints recorded under
earlier names (`dataset_path` before `dataset_name`)."""

from stackrlhf.data import DataArguments
from stackrlhf.trainer.checkpointing import normalized, settings_differences
from stackrlhf.trainer.rl_loop import run_settings, with_earlier_names


def test_a_checkpoint_that_recorded_dataset_path_is_compared_with_dataset_name():
    current = run_settings(DataArguments(dataset_name="new.jsonl", dataset_config="data/rl"))
    assert "dataset_path" not in current and "dataset_subset" not in current
    assert (current["dataset_name"], current["dataset_config"]) == ("new.jsonl", "data/rl")
    older = {"dataset_path": "old.jsonl", "dataset_subset": None, "eval_samples": 200}
    assert settings_differences(older, with_earlier_names(current)) == [
        'dataset_path: checkpoint "old.jsonl", now "new.jsonl"',
        'dataset_subset: checkpoint null, now "data/rl"',
    ]
    same = normalized(run_settings(DataArguments(dataset_name="old.jsonl")))
    older_same = {"dataset_path": "old.jsonl", "dataset_subset": None} | {
        name: value for name, value in same.items() if name not in ("dataset_name", "dataset_config")
    }
    assert settings_differences(older_same, with_earlier_names(same)) == []


def test_a_new_checkpoint_records_only_the_new_names():
    settings = run_settings(DataArguments(dataset_path="prefs.jsonl"))
    assert settings["dataset_name"] == "prefs.jsonl" and "dataset_path" not in settings
