"""Shared cache entries: built once under a file lock, checked against their manifest and content before use, rebuilt
with a warning when broken, built in a single-process child when this process is one of several."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stackrlhf.cache import (
    MANIFEST_FILE,
    BrokenEntry,
    ensure_entry,
    entry_problem,
    read_json,
    several_processes,
)
from stackrlhf.errors import ConfigError
from stackrlhf.manifest import write_manifest

REPO = Path(__file__).parents[2]


def write_greeting(directory: Path, text: str = "hello") -> None:
    """A builder: one JSON file (module-level, so a builder child can import it)."""
    (directory / "greeting.json").write_text(json.dumps({"text": text}))


def check_greeting(directory: Path) -> None:
    if read_json(directory, "greeting.json", "text")["text"] != "hello":
        raise BrokenEntry("greeting.json does not say hello")


def write_environment(directory: Path) -> None:
    """A builder that records the process and launch variables it ran with."""
    names = ("WORLD_SIZE", "RANK", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "STACKRLHF_MARK")
    recorded = {"pid": os.getpid(), **{name: os.environ.get(name) for name in names}}
    (directory / "greeting.json").write_text(json.dumps({"text": "hello", **recorded}))


def fail_with_config_error(directory: Path) -> None:
    raise ConfigError("the builder's own one-line error")


def slow_greeting(directory: Path, log: str) -> None:
    """A builder that takes a while and logs each build, so concurrent callers overlap and builds can be counted."""
    import time

    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(1.0)
    write_greeting(directory)


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


def test_entry_is_built_once_then_reused(tmp_path: Path) -> None:
    builds = []
    target = tmp_path / "cache" / "entry"

    def build(directory: Path) -> None:
        builds.append(directory)
        write_greeting(directory)

    assert ensure_entry(target, build, check=check_greeting, what="greeting") == target
    assert ensure_entry(target, build, check=check_greeting, what="greeting") == target
    assert len(builds) == 1 and builds[0].parent == target.parent and builds[0] != target
    assert _entries(target.parent) == ["entry"] and (target.parent / ".entry.lock").is_file()
    manifest = json.loads((target / MANIFEST_FILE).read_text())["files"]
    assert list(manifest) == ["greeting.json"] and manifest["greeting.json"]["size"] > 0
    assert entry_problem(target, check_greeting) is None


def _say_goodbye(entry: Path) -> None:
    write_greeting(entry, "bye")
    write_manifest(entry, MANIFEST_FILE)  # the manifest agrees: only the content check sees it


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (lambda entry: (entry / "greeting.json").unlink(), "greeting.json is missing"),
        (lambda entry: (entry / "greeting.json").write_text("{"), "greeting.json has 1 bytes"),
        (lambda entry: (entry / "greeting.json").write_text(json.dumps({"text": "hellO"})), "sha256 differs"),
        (lambda entry: (entry / MANIFEST_FILE).write_text("[]"), f"{MANIFEST_FILE} is not a JSON object"),
        (_say_goodbye, "does not say hello"),
    ],
    ids=["file deleted", "file truncated", "file changed", "bad manifest", "content check"],
)
def test_broken_entry_is_rebuilt_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, corrupt, problem: str
) -> None:
    target = ensure_entry(tmp_path / "entry", write_greeting, check=check_greeting, what="greeting")
    corrupt(target)
    with caplog.at_level(logging.WARNING, logger="stackrlhf.cache"):
        ensure_entry(target, write_greeting, check=check_greeting, what="greeting")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"cached greeting in {target} is broken (" in warning and problem in warning and "rebuilding" in warning
    assert entry_problem(target, check_greeting) is None and _entries(tmp_path) == ["entry"]


def test_a_file_in_the_entry_s_place_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "entry").write_text("junk")
    with caplog.at_level(logging.WARNING, logger="stackrlhf.cache"):
        target = ensure_entry(tmp_path / "entry", write_greeting, check=check_greeting, what="greeting")
    assert "not a directory" in caplog.text and entry_problem(target, check_greeting) is None


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def disk_full(directory: Path) -> None:
        write_greeting(directory)
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        ensure_entry(tmp_path / "entry", disk_full, check=check_greeting, what="greeting")
    assert _entries(tmp_path) == []
    # the lock was released: the next try builds
    ensure_entry(tmp_path / "entry", write_greeting, check=check_greeting, what="greeting")
    assert _entries(tmp_path) == ["entry"]


def test_unusable_build_is_an_error_not_an_entry(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="greeting just built .* unusable: greeting.json does not say hello"):
        ensure_entry(tmp_path / "entry", lambda d: write_greeting(d, "bye"), check=check_greeting, what="greeting")
    assert _entries(tmp_path) == []


def test_staging_left_by_a_killed_build_is_cleared(tmp_path: Path) -> None:
    stale = tmp_path / ".entry.tmp-12345-abcd"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"\0" * 10)
    ensure_entry(tmp_path / "entry", write_greeting, check=check_greeting, what="greeting")
    assert _entries(tmp_path) == ["entry"]


def test_uncreatable_cache_directory_is_one_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"cannot write to the cache directory .*file/sub .*STACKRLHF_CACHE"):
        ensure_entry(tmp_path / "file" / "sub" / "entry", write_greeting, check=check_greeting, what="greeting")


def test_several_processes_follows_the_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert not several_processes()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not several_processes()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert several_processes()
    monkeypatch.setenv("WORLD_SIZE", "")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert several_processes()


@pytest.mark.subprocess
def test_one_of_several_processes_builds_in_a_single_process_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launch = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}
    for name, value in {**launch, "STACKRLHF_MARK": "kept", "PYTHONPATH": str(REPO)}.items():
        monkeypatch.setenv(name, value)
    target = ensure_entry(tmp_path / "entry", write_environment, check=check_greeting, what="greeting")
    recorded = json.loads((target / "greeting.json").read_text())
    assert recorded["pid"] != os.getpid() and recorded["STACKRLHF_MARK"] == "kept"
    assert all(recorded[name] is None for name in launch)

    with pytest.raises(ConfigError, match="building the greeting failed in a child process; its error is above"):
        ensure_entry(tmp_path / "other", fail_with_config_error, check=check_greeting, what="greeting")
    assert _entries(tmp_path) == ["entry"]


@pytest.mark.subprocess
def test_concurrent_processes_build_once(tmp_path: Path) -> None:
    """Three processes (no process group) ask for a cold entry at once: one builds it, the others wait and use it."""
    log = tmp_path / "builds.log"
    code = (
        "import sys; from pathlib import Path; from stackrlhf.cache import ensure_entry; "
        "from tests.models.test_cache import check_greeting, slow_greeting; "
        "print(ensure_entry(Path(sys.argv[1]), slow_greeting, sys.argv[2], check=check_greeting, what='greeting'))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", code, str(tmp_path / "cache" / "entry"), str(log)]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0]
    assert outputs == [str(tmp_path / "cache" / "entry")] * 3
    assert len(log.read_text().splitlines()) == 1
    assert _entries(tmp_path / "cache") == ["entry"]
