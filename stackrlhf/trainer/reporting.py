"""What a run leaves to read: `stats.jsonl`, PNG plots, the end-of-run table, memory per role, and every stage's
`stackrlhf_summary.json`.

`stats.jsonl` has one JSON object per PPO step: the step number, the mean and spread of the rewards, the scalar
statistics of `PPOTrainer.step` under TRL's names (`objective/kl`, `ppo/loss/value`, ...) and the step's seconds.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

STATS_FILE = "stats.jsonl"
SUMMARY_FILE = "stackrlhf_summary.json"
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))

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
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return record


def read_stats(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `stats.jsonl` file ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def plot_stats(records: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path | None:
    """Plot mean reward, KL, value loss and entropy per step into one PNG; None (and a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'stackrlhf[plots]'): no plots written.")
        return None
    steps = [record["step"] + 1 for record in records]
    figure, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for axis, (key, label) in zip(axes.flat, PLOTTED.items(), strict=True):
        values = np.array([record.get(key, float("nan")) for record in records], dtype=float)
        axis.plot(steps, values, marker=".", linewidth=0.8, alpha=0.6, label="per step")
        if len(values) >= 2 * SMOOTHING:
            smooth = np.convolve(values, np.ones(SMOOTHING) / SMOOTHING, mode="valid")
            axis.plot(steps[SMOOTHING - 1 :], smooth, linewidth=2, label=f"mean of {SMOOTHING} steps")
            axis.legend(fontsize=8)
        axis.set_title(label)
        axis.grid(alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("PPO step")
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by the tensors (storage as allocated: packed 4-bit weights count half a byte per value)."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def role_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Parameter bytes per role of a shared-base value-head model, and the optimizer's state bytes.

    Roles: the frozen base (which is also the reference model, adapter disabled, and the reward model's body), the
    policy LoRA adapter, the value head, the reward adapter with its score head. Quantization constants kept
    outside parameters (bitsandbytes' absmax, SCB) are not counted.
    """
    reward_name = getattr(model, "rm_adapter_name", None)
    roles = {"base (shared)": 0, "policy adapter": 0, "value head": 0}
    if reward_name:
        roles["reward adapter + head"] = 0
    for name, param in model.named_parameters():
        size = param.numel() * param.element_size()
        if name.startswith("v_head."):
            roles["value head"] += size
        elif name.startswith("score.") or (reward_name and f".{reward_name}." in name):
            roles["reward adapter + head"] += size
        elif "lora_" in name or "modules_to_save" in name:
            roles["policy adapter"] += size
        else:
            roles["base (shared)"] += size
    if optimizer is not None:
        roles["optimizer state"] = tensor_bytes(
            value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)
        )
    return roles


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
    Path(output_dir, SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
