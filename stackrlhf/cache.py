"""Cache entries that any number of processes can share: built once, checked before every use, rebuilt when broken.

An entry is a directory in the cache (the converted bundled model, each offline stage). `ensure_entry` holds a lock
file beside it (`fcntl.flock`, so the processes of one launch and unrelated runs alike take turns) while it checks an
existing entry and, when it is missing or broken, builds it into a staging directory that is renamed into place; the
processes that waited then check and use that entry. An entry is checked against the manifest written when it was
built (every file's size and sha256) and by its own content check (config, weights and tokenizer parse); a broken one
is named in a warning with what is wrong, deleted and built again.

A process that is one of several (torchrun, `accelerate launch --num_processes N`) builds in a fresh single-process
interpreter: under a process group transformers' `save_pretrained` writes weights on rank 0 only, and a trainer would
wait on collectives the other processes never join. An entry is therefore the same whichever number of processes
started it.

This module imports nothing heavy (the content checks import safetensors and tokenizers when they run).
"""

from __future__ import annotations

import fcntl
import importlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stackrlhf.errors import ConfigError, StackRLHFError, one_line
from stackrlhf.manifest import file_sha256, write_manifest

logger = logging.getLogger(__name__)

MANIFEST_FILE = "stackrlhf_manifest.json"
"""Written into every entry once it is built: each file's size and sha256."""

_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# What launchers (torchrun, accelerate launch, mpirun) set to make a process one of several; a builder child drops it.
_LAUNCH_VARIABLES = {"RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK"}
_LAUNCH_VARIABLES |= {"ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", *_SIZE_VARIABLES}
_LAUNCH_PREFIXES = ("TORCHELASTIC_", "PMI_", "OMPI_COMM_WORLD_", "MV2_COMM_WORLD_")
_CHILD_CONFIG_ERROR = 2


class BrokenEntry(Exception):
    """What makes a cache entry unusable, in a few words (raised by content checks)."""


def ensure_entry(
    target: Path, build: Callable[..., None], *args: str, check: Callable[[Path], None], what: str
) -> Path:
    """Return the cache entry `target`, building it first when it is missing or broken.

    Args:
        target: the entry's directory.
        build: a module-level function `build(directory, *args)` that writes the entry into an existing empty
            directory; it runs in this process, or in a fresh single-process interpreter when this process is one of
            several (see the module docstring).
        args: strings passed on to `build`.
        check: `check(directory)` raises `BrokenEntry` when the entry's content is unusable.
        what: the entry in words, for messages ("converted model", "SFT stage").

    Raises:
        ConfigError: the cache directory cannot be created or written, or `build` raised one in a child process.
        RuntimeError: `build` failed in a child process, or what it built does not pass `check`.
    """
    target = Path(target)
    lock = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError as err:
        raise ConfigError(
            f"cannot write to the cache directory {target.parent} ({err.strerror}); point STACKRLHF_CACHE at a "
            "writable directory."
        ) from err
    with _locked(lock, what):
        if target.exists() or target.is_symlink():
            problem = entry_problem(target, check)
            if problem is None:
                logger.info("Reusing the cached %s in %s.", what, target)
                return target
            logger.warning("The cached %s in %s is broken (%s); deleting and rebuilding it.", what, target, problem)
            _remove(target)
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a build that was killed
            _remove(stale)
        logger.info("Building the %s into %s (cached for later runs).", what, target)
        staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()  # unlike tempfile.mkdtemp (mode 0700), this honours the umask the entry should get
        try:
            _run_build(build, staging, args, what)
            try:
                check(staging)
            except BrokenEntry as err:
                raise RuntimeError(f"the {what} just built in {staging} is unusable: {err}") from err
            write_manifest(staging, MANIFEST_FILE)
            os.rename(staging, target)
        except BaseException:
            _remove(staging)
            raise
    return target


def entry_problem(entry: Path, check: Callable[[Path], None]) -> str | None:
    """What is wrong with the cache entry `entry` (its manifest, then `check`), or None when it is usable."""
    if not entry.is_dir():
        return "not a directory"
    try:
        verify_manifest(entry)
        check(entry)
    except BrokenEntry as err:
        return str(err)
    return None


def verify_manifest(directory: Path) -> None:
    """Raise `BrokenEntry` unless every file `directory`'s manifest lists is there with its size and sha256."""
    if not (directory / MANIFEST_FILE).is_file():
        raise BrokenEntry(f"no {MANIFEST_FILE}: built by an older stackrlhf, or not to the end")
    files = read_json(directory, MANIFEST_FILE, "files")["files"]
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise BrokenEntry(f"{name} is missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise BrokenEntry(f"{name} has {size} bytes, {expected['size']} when it was built")
        if file_sha256(path) != expected["sha256"]:
            raise BrokenEntry(f"{name} changed since it was built (sha256 differs)")


def read_json(directory: Path, name: str, *keys: str) -> dict[str, Any]:
    """Parse the JSON object `directory/name`; raise `BrokenEntry` when it is missing, unparsable or lacks a key."""
    path = directory / name
    if not path.is_file():
        raise BrokenEntry(f"{name} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BrokenEntry(f"{name} does not parse: {one_line(err)}") from err
    if not isinstance(data, dict):
        raise BrokenEntry(f"{name} is not a JSON object")
    absent = [key for key in keys if key not in data]
    if absent:
        raise BrokenEntry(f"{name} has no {absent[0]!r}")
    return data


def read_safetensors_keys(directory: Path, name: str) -> list[str]:
    """The tensor names in the safetensors file `directory/name`, after checking its header against its size."""
    from safetensors import SafetensorError, safe_open

    path = directory / name
    if not path.is_file():
        raise BrokenEntry(f"{name} is missing")
    try:  # safe_open reads the header and checks that the tensors it describes fill the file exactly
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
    except (OSError, SafetensorError) as err:
        raise BrokenEntry(f"{name} is not a readable safetensors file: {one_line(err)}") from err
    if not keys:
        raise BrokenEntry(f"{name} holds no tensors")
    return keys


def check_model(directory: Path) -> None:
    """A transformers model directory: config.json with a model_type, safetensors weights and a tokenizer."""
    read_json(directory, "config.json", "model_type")
    if (directory / "model.safetensors.index.json").exists():
        shards = read_json(directory, "model.safetensors.index.json", "weight_map")["weight_map"]
        for shard in sorted(set(shards.values())):
            read_safetensors_keys(directory, shard)
    else:
        read_safetensors_keys(directory, "model.safetensors")
    check_tokenizer(directory)


def check_tokenizer(directory: Path) -> None:
    """A fast tokenizer: tokenizer_config.json and a tokenizer.json that `tokenizers` loads."""
    from tokenizers import Tokenizer

    read_json(directory, "tokenizer_config.json")
    read_json(directory, "tokenizer.json")
    try:
        Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as err:  # tokenizers raises plain Exceptions on a malformed file
        raise BrokenEntry(f"tokenizer.json does not load: {one_line(err)}") from err


def check_adapter(directory: Path) -> list[str]:
    """A PEFT adapter: adapter_config.json with a peft_type and its safetensors weights; returns the tensor names."""
    read_json(directory, "adapter_config.json", "peft_type")
    return read_safetensors_keys(directory, "adapter_model.safetensors")


def several_processes() -> bool:
    """Whether this process is one of several: in a process group of more than one, or launched as one."""
    torch = sys.modules.get("torch")  # not imported: no process group either
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1
    return any(_int_or_one(os.environ.get(name)) > 1 for name in _SIZE_VARIABLES)


def _int_or_one(value: str | None) -> int:
    try:
        return int(value or 1)
    except ValueError:
        return 1


def _run_build(build: Callable[..., None], staging: Path, args: tuple[str, ...], what: str) -> None:
    """`build(staging, *args)`, here or, when this process is one of several, in a single-process child."""
    if not several_processes():
        build(staging, *args)
        return
    reference = f"{build.__module__}:{build.__qualname__}"
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARIABLES and not k.startswith(_LAUNCH_PREFIXES)}
    logger.info("Building the %s in a single-process child (%s), independent of the launch.", what, reference)
    returncode = subprocess.run([sys.executable, "-m", __name__, reference, str(staging), *args], env=env).returncode
    if returncode == _CHILD_CONFIG_ERROR:
        raise ConfigError(f"building the {what} failed in a child process; its error is above.")
    if returncode:
        raise RuntimeError(f"building the {what} failed in a child process (exit status {returncode}); see above.")


@contextmanager
def _locked(lock: Path, what: str) -> Iterator[None]:
    """Hold an exclusive `flock` on the file `lock` (left in place afterwards: deleting it would race)."""
    with lock.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Waiting for another process to finish the %s (lock %s).", what, lock)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    """Delete a file or directory tree: renamed aside first, so what is left of a failed deletion is hidden."""
    aside = path.parent / f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(path, aside)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink()


def _main(argv: list[str]) -> int:
    """A builder child: `python -m stackrlhf.cache module:function directory [args...]`."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)  # as the recipes log
    reference, directory, *args = argv
    module, _, name = reference.partition(":")
    build = getattr(importlib.import_module(module), name)
    try:
        build(Path(directory), *args)
    except StackRLHFError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return _CHILD_CONFIG_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
