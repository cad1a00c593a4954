"""Output directories: one run's outputs per directory (`stackrlhf.outputs`), and atomic writes with staging names
that a later run cleans up (`stackrlhf.atomic`)."""

import logging
import os
import re
import stat
import subprocess

import pytest

from stackrlhf.atomic import (
    remove_atomically,
    remove_stale_staging,
    staging_path,
    write_atomically,
    write_files_atomically,
    write_text_atomically,
)
from stackrlhf.errors import ConfigError
from stackrlhf.outputs import OutputError, guard_output_dir, prepare_output_dir, run_outputs, writing
from stackrlhf.recipes import ppo, sft
from stackrlhf.recipes.runner import run_recipe


def dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def earlier_run(directory):
    """What a finished PPO run leaves, and a file of the user's."""
    (directory / "checkpoint-2").mkdir(parents=True)
    (directory / "checkpoint-2" / "trainer_state.json").write_text("{}")
    for name in ("stats.jsonl", "samples.json", "stackrlhf_summary.json", "adapter_config.json", "notes.txt"):
        (directory / name).write_text("x")
    (directory / "plots").mkdir()
    return directory


def test_a_directory_with_another_runs_outputs_is_refused(tmp_path):
    out = earlier_run(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"holds another run's outputs \(adapter_config.json, checkpoint-2, plots"):
        guard_output_dir(out, resuming=False, overwrite=False)
    guard_output_dir(out, resuming=True, overwrite=False)  # resuming continues that run
    assert len(run_outputs(out)) == 6


def test_overwrite_deletes_exactly_the_run_outputs(tmp_path, caplog):
    out = earlier_run(tmp_path / "run")
    with caplog.at_level(logging.INFO):
        guard_output_dir(out, resuming=False, overwrite=True)
    assert [path.name for path in out.iterdir()] == ["notes.txt"]
    assert "--overwrite_output_dir: deleting 6 outputs of an earlier run" in caplog.text


def test_overwrite_and_resume_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="pass one of them"):
        guard_output_dir(tmp_path, resuming=True, overwrite=True)


def test_an_empty_or_unrelated_directory_is_fine_and_a_new_one_is_created(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    guard_output_dir(tmp_path, resuming=False, overwrite=False)
    guard_output_dir(tmp_path / "new" / "run", resuming=False, overwrite=False)
    assert (tmp_path / "new" / "run").is_dir()


def test_io_problems_are_one_line_naming_the_path(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=f"^output_dir {tmp_path / 'file'} is a file, not a directory.$"):
        guard_output_dir(tmp_path / "file", resuming=False, overwrite=False)
    with pytest.raises(OutputError, match=f"^cannot create output_dir {tmp_path / 'file' / 'run'}: Not a directory.$"):
        prepare_output_dir(tmp_path / "file" / "run")

    def read_only(self, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr("pathlib.Path.open", read_only)
    with pytest.raises(OutputError, match=f"^cannot write in output_dir {tmp_path}: Read-only file system.$"):
        prepare_output_dir(tmp_path)


def test_writing_names_the_output_not_the_temporary_path(tmp_path):
    with pytest.raises(OutputError) as raised, writing("samples.json", tmp_path):
        raise OSError(28, "No space left on device", str(staging_path(tmp_path, "samples.json")))
    assert str(raised.value) == f"cannot write samples.json in {tmp_path}: No space left on device."
    assert isinstance(raised.value, OSError) and isinstance(raised.value, ConfigError)


def test_run_recipe_refuses_in_one_line_with_exit_code_2(tmp_path, capsys):
    out = earlier_run(tmp_path / "run")
    assert run_recipe(ppo.make_parser(), ppo.main, ["--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: output_dir {out} holds another run's outputs") and err.count("\n") == 1
    assert run_recipe(sft.make_parser(), sft.main, ["--output_dir", str(out)]) == 2  # TRL's SFTConfig.output_dir
    assert "holds another run's outputs" in capsys.readouterr().err
    assert run_recipe(ppo.make_parser(), ppo.main, ["--output_dir", str(out), "--save_total_limit", "0"]) == 2
    assert re.search(r"save_total_limit.* must be at least 1", capsys.readouterr().err)


def test_staging_names_carry_the_pid_and_directories_honour_the_umask(tmp_path):
    seen = []

    def write(directory):
        seen.append(directory.name)
        (directory / "a.txt").write_text("a")

    old = os.umask(0o022)
    try:
        final = write_atomically(tmp_path, "checkpoint-1", write)
        write_text_atomically(tmp_path / "stats.jsonl", "{}\n")
    finally:
        os.umask(old)
    assert seen[0].startswith(f".staging-checkpoint-1.{os.getpid()}.")
    assert stat.S_IMODE(final.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "stats.jsonl").stat().st_mode) == 0o644
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-1", "stats.jsonl"]


def test_stale_staging_is_removed_and_a_set_aside_directory_put_back(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    (tmp_path / f".staging-checkpoint-3.{dead}.0a1b2c3d").mkdir()  # a save killed before its rename
    (tmp_path / f".staging-stats.jsonl.{dead}.0a1b2c3d").write_text("{}")  # a killed file rewrite
    (tmp_path / f".staging-checkpoint-2.{dead}.old").mkdir()  # set aside; its replacement never arrived
    (tmp_path / f".staging-checkpoint-1.{dead}.old").mkdir()  # set aside; its replacement arrived
    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / ".staging-checkpoint-4.x1_y").mkdir()  # an older stackrlhf's name, without a pid
    (tmp_path / f".staging-checkpoint-5.{alive}.0a1b2c3d").mkdir()  # a live process is writing it
    (tmp_path / ".staging").mkdir()  # not ours
    cleaned = remove_stale_staging(tmp_path)
    assert sorted(cleaned) == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4", "stats.jsonl"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        ".staging",
        f".staging-checkpoint-5.{alive}.0a1b2c3d",
        "checkpoint-1",
        "checkpoint-2",
    ]


def test_prepare_output_dir_cleans_up_and_says_so(tmp_path, caplog):
    (tmp_path / f".staging-checkpoint-3.{dead_pid()}.0a1b2c3d").mkdir()
    prepare_output_dir(tmp_path, clean=False)
    assert len(list(tmp_path.iterdir())) == 1
    prepare_output_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert "Removed what interrupted writes left in" in caplog.text and "checkpoint-3" in caplog.text


def test_write_files_atomically_replaces_files_and_leaves_them_on_failure(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")

    def fail(directory):
        (directory / "adapter_model.safetensors").write_text("new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_files_atomically(tmp_path, fail)
    assert (tmp_path / "adapter_model.safetensors").read_text() == "old"
    write_files_atomically(tmp_path, lambda d: (d / "adapter_model.safetensors").write_text("new"))
    assert (tmp_path / "adapter_model.safetensors").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter_model.safetensors", "notes.txt"]


def test_remove_atomically_leaves_nothing(tmp_path):
    (tmp_path / "checkpoint-1" / "policy").mkdir(parents=True)
    remove_atomically(tmp_path / "checkpoint-1")
    assert list(tmp_path.iterdir()) == []
