"""The built wheel carries every config and every bundled file, and an installed copy finds them by short name."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from stackrlhf.configs import CONFIG_DIR, shipped_configs

ROOT = Path(__file__).parents[2]
PACKAGE_DATA = ("configs", "data/bundled", "models/bundled", "planner/bundled", "metrics/pairwise_accuracy")

pytestmark = pytest.mark.subprocess


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"  # a copy of the tracked files: the build's build/ and egg-info stay out of the checkout
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
    command += ["-w", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (built,) = out.glob("stackrlhf-*.whl")
    return built


def test_the_wheel_holds_every_config_and_bundled_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "stackrlhf"
    tracked = subprocess.run(["git", "ls-files", "stackrlhf"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    expected = {
        path.relative_to(ROOT).as_posix()
        for folder in PACKAGE_DATA
        for path in (package / folder).rglob("*")
        if path.relative_to(ROOT).as_posix() in tracked
    }
    assert {
        f"stackrlhf/configs/{path.relative_to(CONFIG_DIR).as_posix()}" for path in shipped_configs().values()
    } <= names
    assert expected - names == set()


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a directory of its own (its dependencies come from this environment)."""
    target = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return target


def run_installed(target: Path, command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(target), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_an_installed_wheel_resolves_short_names_from_any_directory(installed, tmp_path):
    target = installed
    code = (
        "import stackrlhf.configs as c, sys; assert c.CONFIG_DIR.is_relative_to(sys.argv[1]), c.CONFIG_DIR;"
        "print(len(c.shipped_configs())); print(c.resolve_config('llama-2-7b/ppo'))"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_installed(target, [sys.executable, "-c", code, str(target)], empty)
    assert result.returncode == 0, result.stderr
    count, path = result.stdout.split()
    assert int(count) == len(shipped_configs())
    assert Path(path).is_file() and Path(path).is_relative_to(target)


@pytest.mark.parametrize(
    "command",
    [
        ["python", "-m", "stackrlhf.recipes.sft", "--config", "llama-2-7b/sft"],
        ["accelerate", "launch", "--num_processes", "1", "-m", "stackrlhf.recipes.ppo", "--config", "llama-2-7b/ppo"],
        ["stackrlhf", "dpo", "--config", "llama-2-7b/dpo"],
    ],
    ids=["python -m", "accelerate launch -m", "console script"],
)
def test_an_installed_wheel_runs_the_recipes_as_the_readme_shows(installed, tmp_path, command):
    """What the README shows wheel users, from an empty directory: the installed package, not this checkout."""
    if command[0] == "stackrlhf":  # the console script pip would install: the same entry point
        command = ["python", "-c", "import sys; from stackrlhf.cli import main; sys.exit(main())", *command[1:]]
    command = [str(Path(sys.executable).with_name(command[0])), *command[1:], "--dry_run"]
    result = run_installed(installed, command, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "output_dir:" in result.stdout
