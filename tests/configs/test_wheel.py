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


def test_an_installed_wheel_resolves_short_names_from_any_directory(wheel, tmp_path):
    target = tmp_path / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    code = (
        "import stackrlhf.configs as c, sys; assert c.CONFIG_DIR.is_relative_to(sys.argv[1]), c.CONFIG_DIR;"
        "print(len(c.shipped_configs())); print(c.resolve_config('llama-2-7b/ppo'))"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        cwd=empty,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    count, path = result.stdout.split()
    assert int(count) == len(shipped_configs())
    assert Path(path).is_file() and Path(path).is_relative_to(target)
