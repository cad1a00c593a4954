"""Resumable PPO checkpoints: safetensors + JSON, written atomically, rotated by `save_total_limit`.

A checkpoint directory `checkpoint-{step}` holds

* `policy/`: the policy (adapter + value head, or the whole model), loadable on its own with `from_pretrained`;
* `trainable.safetensors`: every trainable parameter (policy adapter, value head) by its name in the model;
* `optimizer.safetensors` + `optimizer.json`: the optimizer's state tensors and the rest of its state dict;
* `trainer_state.json`: the loop position (next step), the number of processes, the caller's extra fields and,
  under `trainer`, the rest of the trainer's `state_dict()` (for `PPOTrainer`: its step counter, the KL
  controller's coefficient, the running score moments and the LR scheduler's state);
* `rng_state_{rank}.safetensors` + `rng_state_{rank}.json`: each process's Python, NumPy and torch generators.

The trainer's own state comes from `trainer.state_dict()` and goes back through `trainer.load_state_dict()`; the
trainable parameters (the model's) and the generators (the process's) are saved here.

Nothing is unpickled on resume. The directory is assembled under a temporary name and renamed into place only when
complete, so a crash during a save leaves every earlier checkpoint as it was, and a reader never sees half of one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

from stackrlhf.atomic import write_atomically
from stackrlhf.errors import ConfigError
from stackrlhf.trainer.protocol import RLTrainer

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE_FILE = "trainer_state.json"


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints in `output_dir`, oldest (lowest step) first."""
    found = []
    for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and (path / TRAINER_STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: a directory, or `"latest"`/`"true"` for the newest one in `output_dir`.

    Raises:
        ConfigError: the directory is not a complete checkpoint, or `output_dir` has none.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint.lower() in {"latest", "last", "true"}:
        found = checkpoint_dirs(output_dir)
        if not found:
            raise ConfigError(f"--resume_from_checkpoint {resume_from_checkpoint}: {output_dir} has no checkpoint.")
        return found[-1]
    path = Path(resume_from_checkpoint)
    if not (path / TRAINER_STATE_FILE).is_file():
        raise ConfigError(f"--resume_from_checkpoint {path}: not a checkpoint directory (no {TRAINER_STATE_FILE}).")
    return path


def rotate_checkpoints(output_dir: str | Path, save_total_limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints so that at most `save_total_limit` remain; returns the deleted paths."""
    if not save_total_limit:
        return []
    found = checkpoint_dirs(output_dir)
    stale = found[: max(len(found) - save_total_limit, 0)]
    for path in stale:
        shutil.rmtree(path)
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
    trainer: RLTrainer, output_dir: str | Path, step: int, extra: dict[str, Any], save_total_limit: int | None = None
) -> Path | None:
    """Save everything a resumed run needs after `step` PPO steps; collective: call it on every process.

    Args:
        trainer: a `stackrlhf.PPOTrainer` (any `RLTrainer`).
        output_dir: where `checkpoint-{step}` goes.
        step: PPO steps done so far (the resumed run starts at this step).
        extra: JSON-safe fields of the caller's loop (e.g. its data position), returned by `load_ppo_checkpoint`.
        save_total_limit: keep at most this many checkpoints (oldest deleted); None keeps all.

    Returns:
        The checkpoint directory on the main process, None on the others.
    """
    accelerator = trainer.accelerator
    rng_states = gather_object([rng_state()])  # one per process; [this one's] in a single process
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    model = accelerator.unwrap_model(trainer.model)
    trainable = {name: param for name, param in model.named_parameters() if param.requires_grad}
    own_state = trainer.state_dict()
    optimizer_state = own_state.pop("optimizer")  # tensors: to safetensors, the rest to JSON
    trainer_state = {"step": step, "world_size": accelerator.num_processes, "extra": extra, "trainer": own_state}

    def write(directory: Path) -> None:
        save_policy_safetensors(model, directory / "policy")
        trainer.tokenizer.save_pretrained(directory / "policy")
        save_file(
            {name: param.detach().cpu().contiguous() for name, param in trainable.items()},
            str(directory / "trainable.safetensors"),
        )
        save_state(directory, "optimizer", optimizer_state)
        for rank, state in enumerate(rng_states):
            save_state(directory, f"rng_state_{rank}", state)
        (directory / TRAINER_STATE_FILE).write_text(json.dumps(trainer_state, indent=2, default=_json_default))

    path = write_atomically(output_dir, f"{CHECKPOINT_PREFIX}{step}", write)
    rotate_checkpoints(output_dir, save_total_limit)
    accelerator.wait_for_everyone()
    return path


def save_policy_safetensors(model: Any, directory: Path) -> None:
    """Save a value-head policy loadable by `from_pretrained`, in safetensors only: a peft policy's adapter as peft
    writes it and its value head in `model.safetensors` beside it (read before `pytorch_model.bin`); a plain policy
    as transformers writes it, value head included."""
    if not model.is_peft_model:
        model.save_pretrained(directory)
        return
    model.pretrained_model.save_pretrained(directory)
    value_head = {key: tensor.detach().cpu().contiguous() for key, tensor in model.state_dict().items()}
    save_file(value_head, str(directory / "model.safetensors"))


def load_ppo_checkpoint(trainer: RLTrainer, checkpoint: str | Path) -> dict[str, Any]:
    """Restore a `save_ppo_checkpoint` directory into `trainer` (built with the same settings); every process.

    Returns:
        `{"step": steps done, "extra": the caller's fields}`.

    Raises:
        ConfigError: the checkpoint's parameters do not match the model's trainable ones, it was written by a run
            with another number of processes, or its trainer state does not fit `trainer.load_state_dict`.
    """
    checkpoint = Path(checkpoint)
    accelerator = trainer.accelerator
    trainer_state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    if trainer_state["world_size"] != accelerator.num_processes:
        raise ConfigError(
            f"{checkpoint} was written by {trainer_state['world_size']} processes; this run has "
            f"{accelerator.num_processes}. Resume with the same number of processes."
        )
    if "trainer" not in trainer_state:
        raise ConfigError(f"{checkpoint}: {TRAINER_STATE_FILE} has no trainer state (an older stackrlhf wrote it).")
    model = accelerator.unwrap_model(trainer.model)
    trainable = {name: param for name, param in model.named_parameters() if param.requires_grad}
    saved = load_file(str(checkpoint / "trainable.safetensors"))
    mismatched = sorted(
        name for name in set(saved) | set(trainable)
        if name not in saved or name not in trainable or saved[name].shape != trainable[name].shape
    )  # fmt: skip
    if mismatched:
        raise ConfigError(
            f"{checkpoint}: its trainable parameters do not match this model's ({len(mismatched)} differ in name or "
            f"shape, e.g. {mismatched[0]}); resume with the settings of the run that wrote it."
        )
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(saved[name])
    trainer.load_state_dict(trainer_state["trainer"] | {"optimizer": load_state(checkpoint, "optimizer")})
    set_rng_state(load_state(checkpoint, f"rng_state_{accelerator.process_index}"))
    return {"step": trainer_state["step"], "extra": trainer_state["extra"]}


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot save {type(value).__name__} in {TRAINER_STATE_FILE}")
