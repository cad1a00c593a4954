"""Resumable PPO checkpoints: safetensors + JSON, written atomically, rotated by `save_total_limit`.

A checkpoint directory `checkpoint-{step}` holds

* `policy/`: the policy (adapter + value head, or the whole model), loadable on its own with `from_pretrained`;
* `trainable.safetensors`: every trainable parameter (policy adapter, value head) by its name in the model;
* `optimizer.safetensors` + `optimizer.json`: the optimizer's state tensors and the rest of its state dict (under
  DeepSpeed, `optimizer_{rank}.*`: each process's part of the ZeRO optimizer);
* `trainer_state.json`: the loop position (next step), the number of processes, the caller's extra fields and,
  under `trainer`, the rest of the trainer's `state_dict()` (for `PPOTrainer`: its step counter, the KL
  controller's coefficient, the running score moments and the LR scheduler's state);
* `rng_state_{rank}.safetensors` + `rng_state_{rank}.json`: each process's Python, NumPy and torch generators;
* `manifest.json`, written last: the size in bytes and SHA-256 of every other file.

`trainer_state.json` also records, under `settings`, the run's settings that shape its trajectory (batch sizes,
learning rate, seed, model, reward, data, ...); a run resumes only a checkpoint written with the same ones.

The trainer's own state comes from `trainer.state_dict()` and goes back through `trainer.load_state_dict()`; the
trainable parameters (the model's) and the generators (the process's) are saved here.

Nothing is unpickled on resume. The directory is assembled under a temporary name and renamed into place only when
complete, so a crash during a save leaves every earlier checkpoint as it was, and a reader never sees half of one.
Rotation renames a checkpoint out of sight before deleting it. A checkpoint damaged later (a file truncated, deleted
or changed) no longer matches its manifest: `resolve_checkpoint("latest")` passes over it, with a warning, to the
newest intact one. A checkpoint without a manifest (an older stackrlhf's) is not resumed.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

from stackrlhf.atomic import remove_atomically, write_atomically
from stackrlhf.errors import ConfigError
from stackrlhf.manifest import file_sha256, write_manifest
from stackrlhf.outputs import writing
from stackrlhf.trainer.deepspeed import full_parameters, uses_deepspeed
from stackrlhf.trainer.protocol import RLTrainer

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
LATEST = frozenset({"latest", "last", "true"})


def numbered_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Every `checkpoint-{step}` directory in `output_dir`, intact or not, as (step, path), oldest first."""
    found = []
    for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints in `output_dir` (every file of the manifest there, with its size), oldest first."""
    return [path for _, path in numbered_checkpoints(output_dir) if checkpoint_problem(path, hashes=False) is None]


def checkpoint_problem(checkpoint: Path, *, hashes: bool = True) -> str | None:
    """Why `checkpoint` cannot be resumed as written (a file of its manifest missing, of another size or, with
    `hashes`, of other contents), in a few words; None when it is intact."""
    try:
        files = json.loads((checkpoint / MANIFEST_FILE).read_text())["files"]
        recorded = {str(name): (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (an unfinished save, or an older stackrlhf's checkpoint)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST_FILE} is unreadable"
    for name, (size, _) in recorded.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    if hashes:
        for name, (_, sha256) in recorded.items():
            if file_sha256(checkpoint / name) != sha256:
                return f"{name} differs from what was written (SHA-256)"
    return None


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: a directory, or `"latest"`/`"true"` for the newest intact one in `output_dir`
    (a damaged newer one is passed over with a warning).

    Raises:
        ConfigError: the directory is not a checkpoint, or `output_dir` has no intact one.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint.lower() in LATEST:
        found = numbered_checkpoints(output_dir)
        if not found:
            raise ConfigError(f"--resume_from_checkpoint {resume_from_checkpoint}: {output_dir} has no checkpoint.")
        damaged = []
        for _, path in reversed(found):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            logger.warning("Not resuming %s: %s. Trying the checkpoint before it.", path, problem)
            damaged.append(f"{path.name}: {problem}")
        raise ConfigError(
            f"--resume_from_checkpoint {resume_from_checkpoint}: {output_dir} has no intact checkpoint "
            f"({'; '.join(damaged)})."
        )
    path = Path(resume_from_checkpoint)
    if not (path / TRAINER_STATE_FILE).is_file():
        raise ConfigError(f"--resume_from_checkpoint {path}: not a checkpoint directory (no {TRAINER_STATE_FILE}).")
    return path


def rotate_checkpoints(
    output_dir: str | Path, save_total_limit: int | None, newest_step: int | None = None
) -> list[Path]:
    """Keep the newest `save_total_limit` complete checkpoints of steps up to `newest_step` (default: all steps) and
    delete the other checkpoints of those steps, incomplete ones included; returns the deleted paths.

    Checkpoints after `newest_step` (left by an earlier pass of a resumed run) are kept: the run replaces them as it
    gets there.

    Raises:
        ConfigError: `save_total_limit` below 1.
    """
    if save_total_limit is None:
        return []
    if save_total_limit < 1:
        raise ConfigError(f"save_total_limit must be at least 1 (or unset: keep all), got {save_total_limit}.")
    found = [path for step, path in numbered_checkpoints(output_dir) if newest_step is None or step <= newest_step]
    complete = [path for path in found if checkpoint_problem(path, hashes=False) is None]
    kept = set(complete[-save_total_limit:])
    stale = [path for path in found if path not in kept]
    for path in stale:
        remove_atomically(path)
    return stale


# ------------------------------------------------------------------------------------------- state <-> files
def split_tensors(state: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """A JSON-safe copy of `state` (nested dicts/lists of numbers, strings and tensors) in which every tensor is
    moved into `tensors` under a dotted key and replaced by `{"__tensor__": key}`."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {"__keys__": [_json_key(key) for key in state]} | {
            str(i): split_tensors(value, tensors, f"{prefix}.{i}") for i, value in enumerate(state.values())
        }
    if isinstance(state, (list, tuple)):
        return [split_tensors(value, tensors, f"{prefix}.{i}") for i, value in enumerate(state)]
    if isinstance(state, (np.floating, np.integer)):
        return state.item()
    return state


def join_tensors(state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Undo `split_tensors`."""
    if isinstance(state, dict) and "__tensor__" in state:
        return tensors[state["__tensor__"]]
    if isinstance(state, dict):
        keys = [key[1] if isinstance(key, list) else key for key in state["__keys__"]]
        return {key: join_tensors(state[str(i)], tensors) for i, key in enumerate(keys)}
    if isinstance(state, list):
        return [join_tensors(value, tensors) for value in state]
    return state


def _json_key(key: Any) -> Any:
    """Dict keys survive JSON as they were: ints (optimizer parameter ids) are tagged, strings kept."""
    return ["int", key] if isinstance(key, int) else key


def save_state(directory: Path, name: str, state: Any) -> None:
    """Write `state` as `name.safetensors` (its tensors) and `name.json` (everything else)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(skeleton))


def load_state(directory: Path, name: str) -> Any:
    """Read what `save_state` wrote."""
    tensors = load_file(str(directory / f"{name}.safetensors"))
    return join_tensors(json.loads((directory / f"{name}.json").read_text()), tensors)


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by `rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------- trainer state
def save_ppo_checkpoint(
    trainer: RLTrainer,
    output_dir: str | Path,
    step: int,
    extra: dict[str, Any],
    save_total_limit: int | None = None,
    settings: dict[str, Any] | None = None,
) -> Path | None:
    """Save everything a resumed run needs after `step` PPO steps; collective: call it on every process.

    Args:
        trainer: a `stackrlhf.PPOTrainer` (any `RLTrainer`).
        output_dir: where `checkpoint-{step}` goes.
        step: PPO steps done so far (the resumed run starts at this step).
        extra: JSON-safe fields of the caller's loop (e.g. its data position), returned by `load_ppo_checkpoint`.
        save_total_limit: keep at most this many checkpoints (oldest deleted); None keeps all.
        settings: JSON-safe settings of the run that a resumed run must share (`load_ppo_checkpoint` compares them).

    Returns:
        The checkpoint directory on the main process, None on the others.

    Raises:
        OutputError: the checkpoint cannot be written (earlier checkpoints are left as they were).
    """
    accelerator = trainer.accelerator
    rng_states = gather_object([rng_state()])  # one per process; [this one's] in a single process
    per_process = uses_deepspeed(accelerator)  # each process holds its own part of a ZeRO optimizer
    own_state = trainer.state_dict()
    optimizer_states = [own_state.pop("optimizer")]  # tensors: to safetensors, the rest to JSON
    if per_process:
        optimizer_states = gather_object(optimizer_states)
    model = accelerator.unwrap_model(trainer.model)
    trainable = {name: param for name, param in model.named_parameters() if param.requires_grad}
    trainer_state = {
        "step": step,
        "world_size": accelerator.num_processes,
        "optimizer_per_process": per_process,
        "settings": normalized(settings or {}),
        "extra": extra,
        "trainer": own_state,
    }

    def write(directory: Path) -> None:
        model.save_pretrained(directory / "policy")  # safetensors only: adapter + value head, or the whole model
        trainer.tokenizer.save_pretrained(directory / "policy")
        save_file(
            {name: param.detach().cpu().clone() for name, param in trainable.items()},
            str(directory / "trainable.safetensors"),
        )
        if per_process:
            for rank, state in enumerate(optimizer_states):
                save_state(directory, f"optimizer_{rank}", state)
        else:
            save_state(directory, "optimizer", optimizer_states[0])
        for rank, state in enumerate(rng_states):
            save_state(directory, f"rng_state_{rank}", state)
        (directory / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=2, default=_json_default))
        write_manifest(directory, MANIFEST_FILE)

    name = f"{CHECKPOINT_PREFIX}{step}"
    path = None
    with full_parameters(trainable.values()):  # ZeRO-3: whole on every process while the main one writes
        if accelerator.is_main_process:
            with writing(name, output_dir):
                path = write_atomically(output_dir, name, write)
            with writing(f"checkpoints beyond save_total_limit={save_total_limit}", output_dir, action="delete"):
                rotate_checkpoints(output_dir, save_total_limit, newest_step=step)
    accelerator.wait_for_everyone()
    return path


def load_ppo_checkpoint(
    trainer: RLTrainer, checkpoint: str | Path, *, settings: dict[str, Any] | None = None, verify: bool = True
) -> dict[str, Any]:
    """Restore a `save_ppo_checkpoint` directory into `trainer` (built with the same settings); every process.

    Args:
        trainer: the trainer to restore.
        checkpoint: the checkpoint directory.
        settings: this run's settings; those the checkpoint also recorded must be equal.
        verify: check every file against the manifest first (skip it for a checkpoint `resolve_checkpoint` just
            checked).

    Returns:
        `{"step": steps done, "extra": the caller's fields}`.

    Raises:
        ConfigError: (checked in this order) the checkpoint was written by a run with another number of processes
            or with DeepSpeed where this run has none (or the reverse), it is damaged (a file missing, truncated or
            changed), its parameters do not match the model's trainable ones, it was written with other settings, or
            its trainer state does not fit `trainer.load_state_dict`.
    """
    checkpoint = Path(checkpoint)
    accelerator = trainer.accelerator
    try:
        trainer_state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        problem = checkpoint_problem(checkpoint) or f"{TRAINER_STATE_FILE} is unreadable ({type(err).__name__})"
        raise ConfigError(_damaged(checkpoint, problem)) from err
    if trainer_state["world_size"] != accelerator.num_processes:
        raise ConfigError(
            f"{checkpoint} was written by {trainer_state['world_size']} processes; this run has "
            f"{accelerator.num_processes}. Resume with the same number of processes."
        )
    if trainer_state.get("optimizer_per_process", False) != uses_deepspeed(accelerator):
        written, now = ("with", "without") if trainer_state.get("optimizer_per_process") else ("without", "with")
        raise ConfigError(
            f"{checkpoint} was written {written} DeepSpeed and this run is {now} it: resume with the accelerate "
            "config of the run that wrote it."
        )
    if "trainer" not in trainer_state:
        raise ConfigError(f"{checkpoint}: {TRAINER_STATE_FILE} has no trainer state (an older stackrlhf wrote it).")
    if verify and (problem := checkpoint_problem(checkpoint)) is not None:
        raise ConfigError(_damaged(checkpoint, problem))
    model = accelerator.unwrap_model(trainer.model)
    trainable = {name: param for name, param in model.named_parameters() if param.requires_grad}
    saved = load_file(str(checkpoint / "trainable.safetensors"))
    with full_parameters(trainable.values(), modify=True):  # ZeRO-3: whole, then partitioned again
        _load_trainable(checkpoint, trainable, saved, trainer_state, settings)
    optimizer_file = f"optimizer_{accelerator.process_index}" if uses_deepspeed(accelerator) else "optimizer"
    trainer.load_state_dict(trainer_state["trainer"] | {"optimizer": load_state(checkpoint, optimizer_file)})
    set_rng_state(load_state(checkpoint, f"rng_state_{accelerator.process_index}"))
    return {"step": trainer_state["step"], "extra": trainer_state["extra"]}


def _load_trainable(
    checkpoint: Path,
    trainable: dict[str, torch.Tensor],
    saved: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    settings: dict[str, Any] | None,
) -> None:
    """Check the checkpoint's parameters and settings against this run's, then copy its parameters in."""
    mismatched = sorted(
        name for name in set(saved) | set(trainable)
        if name not in saved or name not in trainable or saved[name].shape != trainable[name].shape
    )  # fmt: skip
    if mismatched:
        raise ConfigError(
            f"{checkpoint}: its trainable parameters do not match this model's ({len(mismatched)} differ in name or "
            f"shape, e.g. {mismatched[0]}); resume with the settings of the run that wrote it."
        )
    differences = settings_differences(trainer_state.get("settings", {}), settings or {})
    if differences:
        raise ConfigError(
            f"{checkpoint} was written with other settings ({'; '.join(differences)}): resume with the settings of "
            "the run that wrote it, or start a new run in another --output_dir."
        )
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(saved[name])


def normalized(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` as JSON reads them back (tuples as lists, other objects as strings), for comparisons."""
    return json.loads(json.dumps(settings, default=str))


def settings_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`name: checkpoint X, now Y` for each setting both record with different values, sorted by name."""
    current = normalized(current)
    return [
        f"{name}: checkpoint {json.dumps(recorded[name])}, now {json.dumps(current[name])}"
        for name in sorted(set(recorded) & set(current))
        if recorded[name] != current[name]
    ]


def _damaged(checkpoint: Path, problem: str) -> str:
    return (
        f"--resume_from_checkpoint {checkpoint}: damaged checkpoint ({problem}); resume from an earlier one, or with "
        "'latest' (the newest intact one)."
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot save {type(value).__name__} in {TRAINER_STATE_FILE}")
