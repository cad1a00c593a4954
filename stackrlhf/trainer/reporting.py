"""What a run leaves to read: `stats.jsonl`, PNG plots, `samples.json`, the end-of-run table, memory per role, and
every stage's `stackrlhf_summary.json`.

`stats.jsonl` has one JSON object per PPO step: the step number, the mean and spread of the rewards, the scalar
statistics of `PPOTrainer.step` under TRL's names (`objective/kl`, `ppo/loss/value`, ...) and the step's seconds.
`samples.json` holds `{"before": [...], "after": [...]}`: one `{"query", "response", "reward"}` per sample prompt,
generated before and after training. `finish_run` writes an RL run's report at its end.

A kill never leaves these files half-written for a resumed run to trip over: `samples.json` and the summary are
replaced in one step, `stats.jsonl` is rewritten in one step on resume, and a last line torn by a kill mid-append is
dropped (with a warning) when the file is read. A failed write is an `OutputError` naming the file.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stackrlhf.atomic import write_text_atomically
from stackrlhf.errors import DataError
from stackrlhf.outputs import writing

logger = logging.getLogger(__name__)

STATS_FILE = "stats.jsonl"
SUMMARY_FILE = "stackrlhf_summary.json"
SAMPLES_FILE = "samples.json"
PLOTTED = {
    "reward_mean": "mean reward",
    "objective/kl": "KL to the reference (nats)",
    "ppo/loss/value": "value loss",
    "objective/entropy": "entropy (nats per response)",
}
SMOOTHING = 5


class StatsLog:
    """Append one line per PPO step to `path`; on resume, first drop the lines after the resumed step.

    Args:
        path: the `stats.jsonl` file.
        resume_step: None starts a new file; an int keeps the lines of steps `< resume_step` (steps count from 0).
    """

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        kept = [record for record in read_stats(self.path) if record["step"] < resume_step] if resume_step else []
        if resume_step and [record["step"] for record in kept] != list(range(resume_step)):
            logger.warning(
                "%s holds %d records of the %d steps before step %d: the report will miss the others.",
                self.path,
                len(kept),
                resume_step,
                resume_step,
            )
        with writing(self.path.name, self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def write(self, step: int, stats: dict[str, Any], rewards: Sequence[float], seconds: float) -> dict[str, Any]:
        """Record step `step`: `stats` from `PPOTrainer.step` (scalars kept) and the step's `rewards` (gathered from
        every process)."""
        record: dict[str, Any] = {"step": step, "reward_mean": float(np.mean(rewards))}
        record["reward_std"] = float(np.std(rewards))
        record["samples"] = len(rewards)
        for key, value in stats.items():
            scalar = _scalar(value)
            if scalar is not None:
                record[key] = scalar
        record["seconds"] = seconds
        with writing(self.path.name, self.path.parent), self.path.open("a") as f:
            end = f.tell()
            try:
                f.write(json.dumps(record) + "\n")
                f.flush()
            except OSError:
                f.truncate(end)  # no torn line left behind (best effort: the disk may refuse this too)
                raise
        return record


def read_stats(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `stats.jsonl` file ([] when it does not exist); a last line torn by a kill is dropped with a
    warning.

    Raises:
        DataError: a line before the last one is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except ValueError as err:
            if number == lines[-1][0]:
                logger.warning("%s: dropping its last line %d, cut short by an interrupted write.", path, number)
                break
            raise DataError(f"{path} line {number} is not JSON ({err}); delete or repair that line.") from err
        if not isinstance(record, dict) or "step" not in record:
            raise DataError(f"{path} line {number} is not a step's record (no 'step').")
        records.append(record)
    return records


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    elif isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        return float(value)
    return None


def summarize(records: Sequence[dict[str, Any]], fraction: float = 0.2) -> dict[str, float]:
    """Mean reward over the first and last `fraction` of steps, the last KL and the total seconds."""
    if not records:
        return {}
    count = max(1, math.ceil(len(records) * fraction))
    rewards = [record["reward_mean"] for record in records]
    return {
        "steps": len(records),
        "reward_first": float(np.mean(rewards[:count])),
        "reward_last": float(np.mean(rewards[-count:])),
        "kl_last": records[-1].get("objective/kl", float("nan")),
        "kl_mean": float(np.mean([record.get("objective/kl", float("nan")) for record in records])),
        "seconds": float(sum(record["seconds"] for record in records)),
    }


def plot_stats(
    records: Sequence[dict[str, Any]],
    path: str | Path,
    title: str,
    panels: dict[str, str] = PLOTTED,
    xlabel: str = "PPO step",
) -> Path:
    """Plot four statistics per step (`panels`: stats.jsonl key -> title; by default PPO's mean reward, KL, value loss
    and entropy), each with its running mean, into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [record["step"] + 1 for record in records]
    figure, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for axis, (key, label) in zip(axes.flat, panels.items(), strict=True):
        values = np.array([record.get(key, float("nan")) for record in records], dtype=float)
        axis.plot(steps, values, marker=".", linewidth=0.8, alpha=0.6, label="per step")
        if len(values) >= 2 * SMOOTHING:
            smooth = np.convolve(values, np.ones(SMOOTHING) / SMOOTHING, mode="valid")
            axis.plot(steps[SMOOTHING - 1 :], smooth, linewidth=2, label=f"mean of {SMOOTHING} steps")
            axis.legend(fontsize=8)
        axis.set_title(label)
        axis.grid(alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel(xlabel)
    figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, Path(path))


def save_figure(figure: Any, path: Path) -> Path:
    """Write a matplotlib figure as a PNG (its folder made if needed; a write error is one `OutputError` line), then
    close it."""
    import matplotlib.pyplot as plt

    try:
        with writing(path.name, path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by the tensors (storage as allocated: packed 4-bit weights count half a byte per value)."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


@dataclass(frozen=True)
class RoleBytes:
    """Parameter bytes per role of a value-head policy (see `role_bytes`), and what its design keeps from holding.

    Attributes:
        base: the frozen base; also the reference model (adapter disabled) and the reward model's body.
        policy_adapter: the policy's LoRA adapter (and `modules_to_save`).
        value_head: the value head.
        reward_adapter: the reward adapter with its score head; None when the base carries no reward adapter.
        optimizer_state: the optimizer's state tensors; None when no optimizer was given.
        is_peft: the policy is an adapter on the base, so the reference (and a reward adapter's reward model) ride
            on the base instead of being copies of it.
    """

    base: int
    policy_adapter: int
    value_head: int
    reward_adapter: int | None
    optimizer_state: int | None
    is_peft: bool

    @property
    def has_reward_adapter(self) -> bool:
        """Whether a reward adapter (with its score head) rides on the base."""
        return self.reward_adapter is not None

    def held(self) -> dict[str, int]:
        """Bytes per role held, under the labels of the memory table."""
        roles = {"base (shared)": self.base, "policy adapter": self.policy_adapter, "value head": self.value_head}
        if self.reward_adapter is not None:
            roles["reward adapter + head"] = self.reward_adapter
        if self.optimizer_state is not None:
            roles["optimizer state"] = self.optimizer_state
        return roles

    def not_held(self) -> dict[str, int]:
        """The copies of the base a design without the shared base would hold ({} for a policy that is no
        adapter): the reference, and the reward model too when a reward adapter rides on the base."""
        if not self.is_peft:
            return {}
        if self.has_reward_adapter:
            return {"not held: separate reference + reward copies": 2 * self.base}
        return {"not held: separate reference copy": self.base}


def role_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> RoleBytes:
    """Parameter bytes per role of a shared-base value-head model, and the optimizer's state bytes.

    Roles: the frozen base (which is also the reference model, adapter disabled, and the reward model's body), the
    policy LoRA adapter, the value head, the reward adapter with its score head. Quantization constants kept
    outside parameters (bitsandbytes' absmax, SCB) are not counted.
    """
    reward_name = getattr(model, "rm_adapter_name", None)
    base = policy_adapter = value_head = reward_adapter = 0
    for name, param in model.named_parameters():
        size = getattr(param, "ds_numel", param.numel()) * param.element_size()  # ZeRO-3: the whole, not the part
        if name.startswith("v_head."):
            value_head += size
        elif name.startswith("score.") or (reward_name and f".{reward_name}." in name):
            reward_adapter += size
        elif "lora_" in name or "modules_to_save" in name:
            policy_adapter += size
        else:
            base += size
    optimizer_state = None
    if optimizer is not None:
        optimizer_state = tensor_bytes(
            value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)
        )
    return RoleBytes(
        base=base,
        policy_adapter=policy_adapter,
        value_head=value_head,
        reward_adapter=reward_adapter if reward_name else None,
        optimizer_state=optimizer_state,
        is_peft=bool(getattr(model, "is_peft_model", False)),
    )


def format_table(rows: Sequence[tuple[str, str]], header: tuple[str, str] = ("", "")) -> str:
    """A two-column plain-text table."""
    width = max(len(name) for name, _ in [header, *rows])
    lines = [f"{header[0]:<{width}}  {header[1]}".rstrip(), "-" * (width + 2 + max(len(v) for _, v in rows))]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def format_bytes(size: int) -> str:
    """`size` bytes in kB, MB or GB (powers of 10), 3 significant digits at least."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def write_summary(output_dir: str | Path, summary: dict[str, Any]) -> None:
    """Write a stage's summary (base model, data sizes, metrics) as `stackrlhf_summary.json` beside its outputs."""
    with writing(SUMMARY_FILE, output_dir):
        write_text_atomically(Path(output_dir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")


def read_samples(output_dir: str | Path) -> dict[str, Any]:
    """The sample generations saved in `output_dir`'s `samples.json` ({} when there is none, or with a warning when
    it cannot be read)."""
    path = Path(output_dir, SAMPLES_FILE)
    if not path.is_file():
        return {}
    try:
        samples = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        logger.warning("%s is unreadable (%s): its generations are made again.", path, type(err).__name__)
        return {}
    if not isinstance(samples, dict):
        logger.warning("%s holds no {'before': ..., 'after': ...} object: its generations are made again.", path)
        return {}
    return samples


def write_samples(output_dir: str | Path, samples: dict[str, Any]) -> None:
    """Write the sample generations as `samples.json` in `output_dir` (created if needed)."""
    with writing(SAMPLES_FILE, output_dir):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomically(Path(output_dir, SAMPLES_FILE), json.dumps(samples, indent=2, ensure_ascii=False) + "\n")


def finish_run(
    output_dir: str | Path,
    reward_name: str,
    samples: dict[str, list[dict[str, Any]]],
    memory: RoleBytes,
    processes: int,
    *,
    summary: dict[str, Any] | None = None,
    extra_roles: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write an RL run's report in `output_dir` and print its table; main process only, after the last step.

    Writes `samples.json` (`samples`: the generations before and after training), `plots/training.png` from
    `stats.jsonl`, and `stackrlhf_summary.json`: `summary`'s fields, the reward summary of `summarize`, bytes per
    role (`memory`'s, then `extra_roles` for models outside the policy, then the copies the shared base avoids, and
    the CUDA peak on a GPU), the plot's path and the number of processes.

    Returns:
        The summary written.
    """
    output_dir = Path(output_dir)
    write_samples(output_dir, samples)
    records = read_stats(output_dir / STATS_FILE)
    plot = plot_stats(records, output_dir / "plots" / "training.png", f"PPO: {reward_name}") if records else None
    roles = memory.held() | (extra_roles or {}) | memory.not_held()
    if torch.cuda.is_available():
        roles["CUDA peak allocated"] = torch.cuda.max_memory_allocated()
    result = {
        "stage": "ppo",
        "reward": reward_name,
        **(summary or {}),
        **summarize(records),
        "memory_bytes": roles,
        "plot": str(plot) if plot else None,
        "processes": processes,
    }
    write_summary(output_dir, result)
    print(end_of_run_table(result, samples))
    return result


def end_of_run_table(result: dict[str, Any], samples: dict[str, list[dict[str, Any]]]) -> str:
    """The printed summary: steps, mean reward of the first and last 20% of steps, KL, time, memory per role."""
    rows = [
        ("PPO steps", str(result.get("steps", 0))),
        ("mean reward, first 20% of steps", f"{result.get('reward_first', float('nan')):.4f}"),
        ("mean reward, last 20% of steps", f"{result.get('reward_last', float('nan')):.4f}"),
        ("KL to reference, last step (nats)", f"{result.get('kl_last', float('nan')):.4f}"),
        ("time in PPO steps", f"{result.get('seconds', 0.0):.1f} s"),
    ]
    rows += [(f"memory: {role}", format_bytes(size)) for role, size in result["memory_bytes"].items()]
    lines = [format_table(rows, ("PPO run", "value"))]
    for before, after in zip(samples.get("before", []), samples.get("after", []), strict=False):
        lines.append(f"\nprompt: {_short(before['query'])}")
        lines.append(f"  before ({before['reward']:+.3f}): {_short(before['response'])}")
        lines.append(f"  after  ({after['reward']:+.3f}): {_short(after['response'])}")
    return "\n".join(lines)


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
