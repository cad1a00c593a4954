"""Output directories: one run's outputs per directory, and I/O failures as one line.

A training recipe (SFT, reward, PPO, sentiment) refuses an `--output_dir` that holds another run's outputs
(`RUN_OUTPUTS`: statistics, samples, summaries, checkpoints, a saved model or adapter) unless it resumes that run
(`--resume_from_checkpoint`) or is told to replace them (`--overwrite_output_dir`, which deletes exactly those and
leaves other files alone). A new run thus never mixes its statistics, checkpoints or model with an older run's.

An `OSError` while writing outputs (a read-only directory, a full disk, a file where a directory should be) becomes an
`OutputError`: one line naming the output and the problem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from stackrlhf.atomic import honour_umask, remove_stale_staging, staging_path
from stackrlhf.errors import ConfigError, one_line

logger = logging.getLogger(__name__)

RUN_OUTPUTS = (
    "stackrlhf_summary.json",
    "stats.jsonl",
    "samples.json",
    "plots",
    "runs",
    "checkpoint-*",
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "training_args.bin",
    "training_args.json",
    "trainer_state.json",
)
"""Name patterns of what a stackrlhf run writes in its output directory (a model's files as transformers and peft
save them, the TRL trainers' checkpoints and state, the RL loop's statistics and report)."""


class OutputError(ConfigError, OSError):
    """An output that cannot be written (permissions, read-only or full file system, a file in the way)."""


def reason(err: OSError) -> str:
    """What went wrong, without the (possibly temporary) path: e.g. 'No space left on device'."""
    return err.strerror or one_line(err)


@contextlib.contextmanager
def writing(what: str, output_dir: str | Path, action: str = "write") -> Iterator[None]:
    """Turn an `OSError` of the block into an `OutputError` 'cannot {action} {what} in {output_dir}: {reason}'."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(f"cannot {action} {what} in {output_dir}: {reason(err)}.") from err


def run_outputs(output_dir: str | Path) -> list[Path]:
    """The entries of `output_dir` that a stackrlhf run wrote (`RUN_OUTPUTS`), sorted; [] when it does not exist."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    return sorted({path for pattern in RUN_OUTPUTS for path in directory.glob(pattern)})


def prepare_output_dir(output_dir: str | Path, *, clean: bool = True) -> None:
    """Create `output_dir`, check that files can be written in it and, with `clean` (on one process only), remove
    what killed writers left staged there (`stackrlhf.atomic.remove_stale_staging`).

    Raises:
        OutputError: it cannot be created or written (named with the problem).
    """
    directory = Path(output_dir)
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"output_dir {directory} is a file, not a directory.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output_dir {directory}: {reason(err)}.") from err
    probe = staging_path(directory, "write-test")
    try:
        probe.open("x").close()
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write in output_dir {directory}: {reason(err)}.") from err
    if not clean:
        return
    with writing("what interrupted writes left", directory, action="delete"):
        cleaned = remove_stale_staging(directory)
    if cleaned:
        logger.warning("Removed what interrupted writes left in %s: %s.", directory, ", ".join(sorted(set(cleaned))))


def guard_output_dir(output_dir: str | Path, *, resuming: bool, overwrite: bool) -> None:
    """Refuse to start a run in a directory that holds another run's outputs, unless resuming or overwriting.

    Args:
        output_dir: the run's output directory (created, and checked to be writable).
        resuming: the run resumes from a checkpoint (its outputs are continued, not mixed with another run's).
        overwrite: delete the `RUN_OUTPUTS` found in `output_dir` first (other files are kept).

    Raises:
        ConfigError: another run's outputs without `resuming` or `overwrite`, or both flags at once.
        OutputError: `output_dir` cannot be created, written, or cleared.
    """
    directory = Path(output_dir)
    if resuming and overwrite:
        raise ConfigError(
            f"--overwrite_output_dir would delete the run that --resume_from_checkpoint continues in {directory}: "
            "pass one of them."
        )
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"output_dir {directory} is a file, not a directory.")
    found = run_outputs(directory)
    if found and not resuming and not overwrite:
        names = ", ".join(path.name for path in found[:4]) + (", ..." if len(found) > 4 else "")
        raise ConfigError(
            f"output_dir {directory} holds another run's outputs ({names}): continue it with --resume_from_checkpoint "
            "latest, replace them with --overwrite_output_dir, or choose another --output_dir."
        )
    main = _is_main_process()  # it alone deletes and cleans; every process checks that it can write
    if found and overwrite and main:
        logger.info("--overwrite_output_dir: deleting %d outputs of an earlier run in %s.", len(found), directory)
        with writing("the earlier run's outputs", directory, action="delete"):
            for path in found:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
    prepare_output_dir(directory, clean=main)


def guard_run_outputs(configs: Sequence[Any], *, overwrite: bool) -> None:
    """`guard_output_dir` for a recipe's parsed dataclasses: a training recipe's (`_training_config`) names the
    directory and whether the run resumes.

    Raises:
        ConfigError: as `guard_output_dir`, or `overwrite` for a recipe with no such fields.
    """
    config = _training_config(configs)
    if config is not None:
        resuming = config.resume_from_checkpoint not in (None, False, "", "false", "False")
        guard_output_dir(config.output_dir, resuming=resuming, overwrite=overwrite)
        return
    if overwrite:
        raise ConfigError("--overwrite_output_dir applies to the training recipes (sft, reward, ppo, sentiment) only.")


def _training_config(configs: Sequence[Any]) -> Any | None:
    """Of a recipe's parsed dataclasses, the first with `output_dir` (set) and `resume_from_checkpoint` fields: a
    training recipe's; None for other recipes."""
    for config in configs:
        names = {f.name for f in dataclasses.fields(config)}
        if {"output_dir", "resume_from_checkpoint"} <= names and config.output_dir:
            return config
    return None


def share_run_outputs(configs: Sequence[Any]) -> None:
    """After a training recipe's run, on the main process: give what it wrote the umask's file mode (`honour_umask`;
    TRL's trainers save their safetensors owner-only)."""
    config = _training_config(configs)
    if config is not None and _is_main_process():
        for path in run_outputs(config.output_dir):
            honour_umask(path)


def _is_main_process() -> bool:
    """Whether this is the launch's first process (before accelerate is set up: from the launcher's variables)."""
    return os.environ.get("RANK", "0") == "0"
