"""Peak memory of real SFT, reward and PPO steps at full width and reduced depth, measured on the CPU and
extrapolated to full depth, against `stackrlhf plan`.

A model's memory grows linearly with its number of transformer blocks k: weights, LoRA and optimizer states,
checkpointed block inputs and the KV cache add the same bytes per block, while embeddings, the language-model head,
logits and one block's recomputed activations (or dequantized weight) do not depend on k. So each configuration
(a bundled model config with random weights, bitsandbytes 8-bit or 4-bit, LoRA r=16, batch 1, gradient
checkpointing) is run with k = 1, 2, 3 blocks, the peak of live tensor storages is followed by
`stackrlhf.memory.MemoryTracker` phase by phase, `peak = a + b k` is fitted by least squares and extrapolated to
the model's real depth, and both the measured and the extrapolated figures are compared with the planner's
`peak_allocated_bytes` for the same settings (at the same depth, from a config.json with `num_hidden_layers = k`,
and at full depth).

Phases (labelled by wrapping the trainer's methods from outside): PPO: `generation` (`PPOTrainer.generate`),
`rollout` (`batched_forward_pass` without gradients: log pi_old, log pi_ref, values), `training_forward` (with
gradients), `loss`, `backward` (`accelerator.backward`), `optimizer` (`optimizer.step`); SFT and reward: `forward`
(loss included), `backward`, `optimizer`. Each case runs `benchmarks/memory_single_gpu.py`'s `measure` in its own
subprocess (one step; PPO also generates once more afterwards, with the optimizer states allocated).

    python benchmarks/memory_depth_sweep.py [--models neox,7b,13b] [--quantizations 8bit,4bit]
        [--stages ppo,sft,reward] [--layers 1,2] [--model-dir DIR] [--reuse] [--quick]

Writes benchmarks/results/memory_depth_sweep.{json,md,png} (`--out` elsewhere). `--quick` runs a tiny GPT-NeoX
config in this process in a few seconds (the test does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_single_gpu as single  # noqa: E402  (a sibling script)

from stackrlhf.errors import ConfigError  # noqa: E402
from stackrlhf.planner import plan  # noqa: E402
from stackrlhf.planner.estimate import GIB, PERSISTENT_COMPONENTS  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NAME = "memory_depth_sweep"
MIB = 2**20
CASE_TIMEOUT_S = 1800
TOP_STORAGES = 6
"""Storages listed per case at its overall peak in the report."""
PLANNER_PHASES = {
    "ppo": {"generation": ("generation",), "rollout": ("rollout",),
            "training": ("training_forward", "loss", "backward", "optimizer")},
    "sft": {"training": ("forward", "backward", "optimizer")},
    "reward": {"training": ("forward", "backward", "optimizer")},
}  # fmt: skip
"""The planner's phases and the tracked phases each covers."""
NOTES = (
    "Notes:",
    "- The CPU runs some bitsandbytes code that CUDA does not: Python composite kernels (their temporaries are "
    "counted and marked; the peak without them is listed below), the 4-bit forward dequantizes each weight "
    "(`gemm_4bit`'s default kernel; CUDA may use a fused kernel up to 1536 tokens), and 8-bit layers in training "
    "mode dequantize their weight in the forward pass (`MatMul8bitFp`: the SFT and reward forward passes here; the "
    "PPO step runs its forward passes in eval mode, as on CUDA). The 8/4-bit backward pass dequantizes the weight "
    "on both devices.",
    "- Random weights make LLM.int8's outlier decomposition (threshold 6.0) handle thousands of input columns where "
    "a trained model has a few: a data-dependent transient (the outlier columns of the weight, dequantized) that "
    "also bends the fit. The `threshold 0` lines turn the decomposition off.",
    "- Not seen: memory outside tensor storages (kernel scratch space, allocator slack, the CUDA context).",
)
PHASE_ORDER = ("generation", "rollout", "training_forward", "loss", "forward", "backward", "optimizer")


@dataclass(frozen=True)
class SweepConfig:
    """One line of the sweep: a model at full width, its precision and stage, measured at `layers` depths.

    Attributes:
        model: bundled model name or local directory with a config.json.
        quantization: "8bit" or "4bit" (bitsandbytes; LoRA adapters in float32, non-quantized weights upcast).
        stage: "ppo", "sft" or "reward".
        query_length, response_length: tokens (PPO: prompt and generated; SFT/reward: sequence = their sum).
        layers: the depths (numbers of transformer blocks) measured.
        int8_threshold: 8bit: LLM.int8's outlier threshold (None: bitsandbytes' 6.0). With random weights many
            activations exceed 6.0, so the outlier decomposition handles thousands of columns (a real model has a
            few): 0 turns it off, closer to a trained model's memory.
        upcast_non_quantized: False keeps a quantized base's embeddings, lm_head and norms in bf16 (PPO recipe's
            `--upcast_non_quantized false`; activations and KV cache then 16-bit too).
    """

    model: str
    quantization: str
    stage: str
    query_length: int = 128
    response_length: int = 128
    layers: tuple[int, ...] = (1, 2)
    int8_threshold: float | None = None
    upcast_non_quantized: bool = True
    batch_size: int = 1

    @property
    def label(self) -> str:
        name = Path(self.model).name if Path(self.model).is_dir() else self.model.split("/")[-1]
        threshold = f" threshold {self.int8_threshold:g}" if self.int8_threshold is not None else ""
        threshold += "" if self.upcast_non_quantized else " 16-bit non-quantized"
        threshold += f" batch {self.batch_size}" if self.batch_size != 1 else ""
        return f"{name} {self.quantization}{threshold} {self.stage} {self.query_length}+{self.response_length}"

    def case(self, layers: int) -> single.Case:
        """The `memory_single_gpu.Case` at depth `layers`: batch 1, mini batch 1, LoRA r=16."""
        return single.Case(self.model, self.stage, self.quantization, batch_size=self.batch_size, mini_batch_size=1,
                           query_length=self.query_length, response_length=self.response_length, lora_r=16,
                           layers=layers, int8_threshold=self.int8_threshold,
                           upcast_non_quantized=self.upcast_non_quantized)  # fmt: skip

    def plan_settings(self) -> dict[str, Any]:
        """`stackrlhf.planner.plan` keywords (without the model) for the same settings, checkpointing on."""
        return {"stage": self.stage, "quantization": self.quantization, "batch_size": self.batch_size,
                "mini_batch_size": 1,
                "query_length": self.query_length, "response_length": self.response_length, "lora_r": 16,
                "gradient_checkpointing": True, "upcast_non_quantized": self.upcast_non_quantized}  # fmt: skip


NEOX, LLAMA_7B, LLAMA_13B = "EleutherAI/gpt-neox-20b", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf"
LLAMA_70B = "meta-llama/Llama-2-70b-hf"
STAGES = ("ppo", "sft", "reward")
SWEEP = (
    [SweepConfig(NEOX, "8bit", stage, layers=(1, 2, 3)) for stage in STAGES]
    + [SweepConfig(model, quantization, stage) for model in (LLAMA_7B, LLAMA_13B) for quantization in ("8bit", "4bit")
       for stage in STAGES]
    + [SweepConfig(LLAMA_13B, "4bit", "ppo", query_length=256, response_length=128)]
    + [SweepConfig(LLAMA_13B, "4bit", "ppo", query_length=511, response_length=128, batch_size=4)]
    + [SweepConfig(LLAMA_70B, "4bit", "ppo")]
)  # fmt: skip
"""The default sweep. Last lines: Llama-2-13B 4-bit PPO with 256-token prompts, and with StackLLaMA's rl_training
limits (prompts up to 511 tokens, 128-token responses, batches of 4 generated and trained one at a time: the
trl#688 case), and Llama-2-70B 4-bit PPO."""
MODEL_ALIASES = {"neox": NEOX, "20b": NEOX, "7b": LLAMA_7B, "13b": LLAMA_13B, "70b": LLAMA_70B}


# ---------------------------------------------------------------------------------------------------------------------
# Fit


def fit_line(xs: list[float], ys: list[float]) -> dict[str, Any]:
    """Least-squares `y = a + b x`.

    Returns:
        `a`, `b` (y units, per x unit; `b` is None with fewer than two distinct x) and `residuals` (`y - fit`, one
        per point, in y units).

    Raises:
        ValueError: no points, or xs and ys of different lengths.
    """
    if not xs or len(xs) != len(ys):
        raise ValueError(f"fit_line needs as many x as y, at least one: got {len(xs)} and {len(ys)}")
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return {"a": mean_y, "b": None, "residuals": [y - mean_y for y in ys]}
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    a = mean_y - b * mean_x
    return {"a": a, "b": b, "residuals": [y - (a + b * x) for x, y in zip(xs, ys, strict=True)]}


def extrapolate(fit: dict[str, Any], x: float) -> float | None:
    """`a + b x` of a `fit_line` result (None when the slope is unknown)."""
    return None if fit["b"] is None else fit["a"] + fit["b"] * x


def summarize_config(config: SweepConfig, cases: list[dict], planner: dict[int, dict], full_depth: int) -> dict:
    """Fits and comparisons of one configuration from its measured `cases` (those without an error).

    Fits the overall tracked peak and every phase's peak against the depth; the extrapolated full-depth peak is
    the largest extrapolated phase peak (a phase that is not the largest at small depth can be at full depth).

    Args:
        config: the configuration.
        cases: its case results (`layers`, `tracked`), any order.
        planner: depth -> planner summary (`peak_allocated_bytes`, ...), for the measured depths and `full_depth`.
        full_depth: the model's real number of transformer blocks.
    """
    measured = sorted((c for c in cases if "tracked" in c), key=lambda c: c["layers"])
    summary: dict[str, Any] = {"config": config.label, "settings": dataclasses.asdict(config),
                               "full_depth": full_depth, "layers": [c["layers"] for c in measured]}  # fmt: skip
    summary["errors"] = {c["layers"]: c["error"] for c in cases if "error" in c}
    if not measured:
        return summary
    xs = [c["layers"] for c in measured]
    peaks = [c["tracked"]["peak_bytes"] for c in measured]
    overall = fit_line(xs, peaks)
    phase_fits = {}
    for name in PHASE_ORDER:
        if all(name in c["tracked"]["phases"] for c in measured):
            ys = [c["tracked"]["phases"][name]["peak_bytes"] for c in measured]
            phase_fits[name] = {**fit_line(xs, ys), "full_depth": extrapolate(fit_line(xs, ys), full_depth)}
    extrapolated = {name: fit["full_depth"] for name, fit in phase_fits.items() if fit["full_depth"] is not None}
    dominant = max(extrapolated, key=extrapolated.get) if extrapolated else None
    full = planner[full_depth]
    summary.update({
        "fit": overall,
        "phase_fits": phase_fits,
        "extrapolated_peak_bytes": extrapolated[dominant] if dominant else None,
        "extrapolated_overall_fit_bytes": extrapolate(overall, full_depth),
        "extrapolated_dominant_phase": dominant,
        "planner_full_depth": full,
        "planner_full_over_extrapolated": full["peak_allocated_bytes"] / extrapolated[dominant] if dominant else None,
        "planner_full_minus_extrapolated_bytes": full["peak_allocated_bytes"] - extrapolated[dominant]
        if dominant else None,
        "planner_phases_vs_extrapolated": _phase_comparison(config.stage, extrapolated, full),
    })  # fmt: skip
    return summary


def _phase_comparison(stage: str, extrapolated: dict[str, float], planner: dict) -> dict[str, dict]:
    """Per planner phase: its `persistent + phase` bytes and the largest extrapolated tracked phase it covers."""
    result = {}
    for planner_phase, tracked_phases in PLANNER_PHASES[stage].items():
        covered = [extrapolated[name] for name in tracked_phases if name in extrapolated]
        if covered and planner_phase in planner["phases"]:
            planned = planner["persistent_bytes"] + planner["phases"][planner_phase]
            result[planner_phase] = {"planner": planned, "tracked": max(covered), "planner_minus_tracked":
                                     planned - max(covered)}  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Planner


def planner_summary(config: SweepConfig, layers: int, config_dir: Path) -> dict:
    """The planner at depth `layers`, reading a config.json written with `num_hidden_layers = layers`."""
    directory = config_dir / f"{config.model.strip('/').replace('/', '--')}--{layers}layers"
    if not (directory / "config.json").exists():
        single.model_config(config.model, layers).save_pretrained(directory)
    result = plan(model=str(directory), **config.plan_settings(), max_batch=False)
    persistent = sum(result.components[name] for name in PERSISTENT_COMPONENTS)
    return {"layers": layers, "peak_allocated_bytes": result.peak_allocated_bytes, "peak_phase": result.peak_phase,
            "phases": result.phases, "persistent_bytes": persistent, "components": result.components}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Cases


def run_case(config: SweepConfig, layers: int, model_dir: Path) -> dict:
    """Measure one case in this process: `measure(..., steps=0, track_memory=True)` on the CPU."""
    start = time.perf_counter()
    result = single.measure(config.case(layers), model_dir, 0, checkpointing=True, device="cpu", track_memory=True)
    tracked = result.pop("tracked")
    return {"config": config.label, "settings": dataclasses.asdict(config), "layers": layers,
            "seconds_per_step": result["seconds_per_step"], "generation_tokens_per_s":
            result["generation_tokens_per_s"], "tracked": tracked, "wall_s": time.perf_counter() - start}  # fmt: skip


def run_case_in_subprocess(config: SweepConfig, layers: int, model_dir: Path, timeout: float) -> dict:
    """`run_case` in a fresh Python process (clean memory, nothing leaks between cases); on failure the error's
    last lines, verbatim."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "case.json"
        spec = json.dumps({"config": dataclasses.asdict(config), "layers": layers})
        command = [sys.executable, __file__, "--run-case", spec, "--model-dir", str(model_dir),
                   "--case-output", str(output)]  # fmt: skip
        try:
            process = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"config": config.label, "settings": dataclasses.asdict(config), "layers": layers,
                    "error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - start}  # fmt: skip
        if process.returncode == 0 and output.exists():
            return json.loads(output.read_text())
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    error = next((line for line in reversed(lines) if "Error" in line or "error" in line), "") or "no message"
    return {"config": config.label, "settings": dataclasses.asdict(config), "layers": layers, "error": error,
            "stderr_tail": lines[-25:], "returncode": process.returncode,
            "wall_s": time.perf_counter() - start}  # fmt: skip


def _quick_config(model_dir: Path) -> SweepConfig:
    """A tiny GPT-NeoX (4 blocks, width 64) in `model_dir`, 8-bit PPO with 8 + 8 tokens at depths 1, 2, 3."""
    from transformers import GPTNeoXConfig

    path = model_dir / "tiny-gpt-neox"
    if not (path / "config.json").exists():
        GPTNeoXConfig(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, max_position_embeddings=64).save_pretrained(path)  # fmt: skip
    return SweepConfig(str(path), "8bit", "ppo", query_length=8, response_length=8, layers=(1, 2, 3))


def select(args: argparse.Namespace) -> list[SweepConfig]:
    """The configurations `--models`, `--quantizations`, `--stages`, `--layers`, `--query-length` and
    `--int8-threshold` (8bit configurations only, with that threshold) pick."""
    configs = list(SWEEP)
    if args.models:
        wanted = {MODEL_ALIASES.get(name.lower(), name) for name in args.models.split(",")}
        configs = [c for c in configs if c.model in wanted]
    if args.quantizations:
        configs = [c for c in configs if c.quantization in args.quantizations.split(",")]
    if args.stages:
        configs = [c for c in configs if c.stage in args.stages.split(",")]
    if args.query_length:
        configs = [c for c in configs if c.query_length == args.query_length]
    if args.layers:
        configs = [dataclasses.replace(c, layers=tuple(int(k) for k in args.layers.split(","))) for c in configs]
    if args.int8_threshold is not None:
        configs = [
            dataclasses.replace(c, int8_threshold=args.int8_threshold) for c in configs if c.quantization == "8bit"
        ]
    if args.no_upcast:
        configs = [dataclasses.replace(c, upcast_non_quantized=False) for c in configs if c.stage == "ppo"]
    return configs


# ---------------------------------------------------------------------------------------------------------------------
# Report


def environment() -> dict:
    """The machine (CPU model, cores, torch threads, AVX-512 BF16) and library versions."""
    from machine import cpu_name, has_avx512_bf16

    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "avx512_bf16": has_avx512_bf16(), "python": platform.python_version()}  # fmt: skip
    info.update({name: version(name) for name in single.LIBRARIES})
    git = ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    status = git[:3] + ["status", "--porcelain", "--", ":/stackrlhf"]
    dirty = bool(subprocess.run(status, capture_output=True, text=True).stdout.strip())
    info["stackrlhf_commit"] = (commit or "unknown") + (" + uncommitted changes in stackrlhf/" if dirty else "")
    return info


def _gib(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value / GIB:.{digits}f}"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:,.1f}"


def markdown(payload: dict) -> str:
    """The report: machine, settings, per-case table, fits and comparison, what dominates the peak, errors."""
    env, cases, configs = payload["environment"], payload["cases"], payload["configs"]
    largest = max((c["tracked"]["peak_bytes"] for c in cases if "tracked" in c), default=GIB)
    scale, unit = (GIB, "GiB") if largest >= GIB else (MIB, "MiB")

    def _gib(value: float | None, digits: int = 3) -> str:  # in `unit`
        return "n/a" if value is None else f"{value / scale:.{digits}f}"

    lines = ["# Peak memory by depth: tracked on the CPU, extrapolated to full depth, against `stackrlhf plan`", ""]
    lines += [f"- {key}: {value}" for key, value in env.items()]
    lines += [
        f"- last command: `{payload['command']}`; reproduce everything: `python benchmarks/memory_depth_sweep.py` "
        "(`--reuse` resumes an interrupted run; `--models`, `--stages`, ... select)",
        f"- wall time of the cases (each in its own process: load, steps under the tracker): "
        f"{payload['wall_s'] / 60:.1f} min",
        "",
        "Settings: LoRA r=16 (alpha 32, dropout 0.05, peft's default targets), batch 1, mini batch 1, gradient "
        "checkpointing on, bitsandbytes weights (non-quantized weights upcast to float32), random weights, one step "
        "(PPO: `PPOTrainer.step` with its 4 PPO epochs on random responses, then one generation in eval mode, which "
        "so sees the optimizer states). Figures are bytes of live tensor storages "
        f"(`stackrlhf.memory.MemoryTracker`), baseline (weights, adapters) included, in {unit}; the planner's figure "
        "is `peak_allocated_bytes` (what `torch.cuda.max_memory_allocated` should read), from a config with the same "
        "number of blocks, computed by the planner of the commit above when this report was written.",
        "",
        *NOTES,
        "",
        "## Cases",
        "",
    ]
    phases = [name for name in PHASE_ORDER if any(name in c.get("tracked", {}).get("phases", {}) for c in cases)]
    lines += ["| config | layers | baseline | " + " | ".join(phases) + " | peak | planner | planner / tracked | "
              "wall s |", "|---|---|---|" + "---|" * len(phases) + "---|---|---|---|"]  # fmt: skip
    for case in cases:
        planner = payload["planner"][case["config"]].get(str(case["layers"]), {})
        if "error" in case:
            lines.append(f"| {case['config']} | {case['layers']} | error: {case['error'][:150]} |" + " |" * (
                len(phases) + 4) + f" {case['wall_s']:.0f} |")  # fmt: skip
            continue
        tracked = case["tracked"]
        cells = [_gib(tracked["phases"][name]["peak_bytes"]) if name in tracked["phases"] else "" for name in phases]
        planned = planner.get("peak_allocated_bytes")
        ratio = f"{planned / tracked['peak_bytes']:.3f}" if planned else "n/a"
        lines.append(f"| {case['config']} | {case['layers']} | {_gib(tracked['baseline_bytes'])} | "
                     + " | ".join(cells) + f" | **{_gib(tracked['peak_bytes'])}** | {_gib(planned)} | {ratio} | "
                     f"{case['wall_s']:.0f} |")  # fmt: skip
    lines += ["", "## Fit `peak = a + b * layers` and full depth", ""]
    lines += [f"| config | layers | a {unit} | b {unit}/layer | residuals MiB | full depth | extrapolated peak "
              f"{unit} (phase) | planner {unit} (phase) | planner / extrapolated | planner - extrapolated {unit} |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for summary in configs:
        if "fit" not in summary:
            lines.append(f"| {summary['config']} | - | not measured | | | {summary['full_depth']} | | | | |")
            continue
        fit, full = summary["fit"], summary["planner_full_depth"]
        residuals = ", ".join(f"{r / MIB:+.2f}" for r in fit["residuals"])
        ratio = summary["planner_full_over_extrapolated"]
        lines.append(
            f"| {summary['config']} | {','.join(map(str, summary['layers']))} | {_gib(fit['a'])} | "
            f"{_gib(fit['b'], 4)} | {residuals} | {summary['full_depth']} | "
            f"{_gib(summary['extrapolated_peak_bytes'])} ({summary['extrapolated_dominant_phase']}) | "
            f"{_gib(full['peak_allocated_bytes'])} ({full['peak_phase']}) | "
            f"{'n/a' if ratio is None else f'{ratio:.3f}'} | "
            f"{_gib(summary['planner_full_minus_extrapolated_bytes'])} |"
        )
    lines += ["", f"### Phase by phase at full depth ({unit}): planner `persistent + phase` vs tracked, extrapolated"]
    lines += [""]
    lines += ["| config | phase | planner | tracked (extrapolated) | planner - tracked |", "|---|---|---|---|---|"]
    for summary in configs:
        for phase, row in summary.get("planner_phases_vs_extrapolated", {}).items():
            lines.append(f"| {summary['config']} | {phase} | {_gib(row['planner'])} | {_gib(row['tracked'])} | "
                         f"{_gib(row['planner_minus_tracked'])} |")  # fmt: skip
    lines += ["", "## What is alive at the peak (deepest measured case of each config)", ""]
    for summary in configs:
        deepest = [c for c in cases if c["config"] == summary["config"] and "tracked" in c]
        if not deepest:
            continue
        case = max(deepest, key=lambda c: c["layers"])
        overall = case["tracked"]["at_peak"]["overall"]
        lines.append(f"- **{summary['config']}, {case['layers']} layers** (peak {_gib(case['tracked']['peak_bytes'])}"
                     f" {unit}; without composite-kernel temporaries "
                     f"{_gib(case['tracked']['peak_without_composite_temporaries'])} {unit}): "
                     + "; ".join(f"{origin} {_mib(size)} MiB" for origin, size in
                                 list(overall["by_origin"].items())[:TOP_STORAGES]))  # fmt: skip
        for record in overall["top"]:
            if record["phase"] != "baseline":
                lines.append(f"  - {_mib(record['nbytes'])} MiB {record['dtype']} {tuple(record['shape'])} from "
                             f"{record['origin']} in {record['phase']}")  # fmt: skip
    errors = [c for c in cases if "error" in c]
    if errors:
        lines += ["", "## Errors (verbatim)", ""]
        for case in errors:
            lines += [f"- {case['config']}, {case['layers']} layers: `{case['error']}`"]
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    """Per configuration: tracked peaks by depth, the fitted line to full depth and the planner's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [s for s in payload["configs"] if "fit" in s]
    if not configs:
        return
    columns = min(3, len(configs))
    rows = -(-len(configs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for axis, summary in zip(axes.flat, configs, strict=False):
        planner = payload["planner"][summary["config"]]
        depths = sorted(int(k) for k in planner)
        full = summary["full_depth"]
        cases = [c for c in payload["cases"] if c["config"] == summary["config"] and "tracked" in c]
        axis.plot([c["layers"] for c in cases], [c["tracked"]["peak_bytes"] / GIB for c in cases], "o",
                  label="tracked peak (CPU)")  # fmt: skip
        fit = summary["fit"]
        if fit["b"] is not None:
            axis.plot([0, full], [fit["a"] / GIB, (fit["a"] + fit["b"] * full) / GIB], "-", label="fit a + b k")
        if summary["extrapolated_peak_bytes"] is not None:
            axis.plot([full], [summary["extrapolated_peak_bytes"] / GIB], "s", label="extrapolated (max phase)")
        axis.plot(depths, [planner[str(k)]["peak_allocated_bytes"] / GIB for k in depths], "--x",
                  label="planner peak_allocated")  # fmt: skip
        axis.axhline(24, color="grey", linewidth=0.7, linestyle=":")
        axis.set_title(summary["config"], fontsize=9)
        axis.set_xlabel("transformer blocks")
        axis.set_ylabel("GiB")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(configs) :]:
        axis.set_visible(False)
    figure.suptitle("Peak memory by depth: tracked (CPU) and fitted vs stackrlhf plan", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_figheight()))  # room for the title
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------------------------------
# Main


def _case_key(case: dict) -> tuple[str, int]:
    return case["config"], case["layers"]


def _with_reused_configs(configs: list[SweepConfig], cases: list[dict]) -> list[SweepConfig]:
    """`configs` followed by the configurations of reused cases that `configs` lacks (their measured depths)."""
    labels = {config.label for config in configs}
    extra: dict[str, SweepConfig] = {}
    for case in cases:
        if case["config"] not in labels and "settings" in case:
            settings = case["settings"]
            known = extra.get(case["config"])
            layers = tuple(sorted({*(known.layers if known else ()), case["layers"]}))
            extra[case["config"]] = SweepConfig(**{**settings, "layers": layers})
    order = [config.label for config in SWEEP]
    reused = sorted(extra.values(), key=lambda c: order.index(c.label) if c.label in order else len(order))
    return configs + reused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated: neox, 7b, 13b or bundled names (default: all)")
    parser.add_argument("--quantizations", help="comma-separated: 8bit, 4bit (default: both)")
    parser.add_argument("--stages", help="comma-separated: ppo, sft, reward (default: all)")
    parser.add_argument("--layers", help="comma-separated depths, replacing each configuration's own")
    parser.add_argument("--query-length", type=int, help="only configurations with this prompt length")
    parser.add_argument("--int8-threshold", type=float, help="8bit only, with this LLM.int8 outlier threshold")
    parser.add_argument(
        "--no-upcast", action="store_true", help="ppo only: keep the non-quantized weights in bf16 (no float32 upcast)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny GPT-NeoX config, in this process (seconds)")
    parser.add_argument("--in-process", action="store_true", help="run the cases in this process")
    parser.add_argument("--model-dir", type=Path, help="random-weight models saved here and kept (default: temp)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the .json, .md and .png go")
    parser.add_argument("--reuse", action="store_true", help="keep cases already in the output JSON, run the rest")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the output JSON's cases")
    parser.add_argument("--timeout", type=float, default=CASE_TIMEOUT_S, help="seconds per case (subprocess)")
    parser.add_argument("--run-case", help=argparse.SUPPRESS)
    parser.add_argument("--case-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_case:  # the subprocess of one case
        spec = json.loads(args.run_case)
        config = SweepConfig(**{**spec["config"], "layers": tuple(spec["config"]["layers"])})
        args.case_output.write_text(json.dumps(run_case(config, spec["layers"], args.model_dir)))
        return 0
    if not (args.report_only or args.quick or select(args)):
        parser.error("the selection (--models, --quantizations, --stages, ...) matches no configuration of the sweep")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or Path(scratch) / "models"
        model_dir.mkdir(parents=True, exist_ok=True)
        configs = [] if args.report_only else [_quick_config(model_dir)] if args.quick else select(args)
        args.reuse = args.reuse or args.report_only
        in_process = args.in_process or args.quick
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / f"{NAME}.json"
        previous = json.loads(json_path.read_text()) if args.reuse and json_path.exists() else {}
        done = {_case_key(c): c for c in previous.get("cases", []) if "tracked" in c}
        cases = list(previous.get("cases", [])) if args.reuse else []
        cases = [c for c in cases if "tracked" in c]  # failed cases are retried
        planner: dict[str, dict[str, dict]] = previous.get("planner", {}) if args.reuse else {}
        summaries = []
        todo = [(config, k) for config in configs for k in config.layers]
        for index, (config, layers) in enumerate(todo, 1):
            if (config.label, layers) in done:
                print(f"[{index}/{len(todo)}] {config.label}, {layers} layers: reused", flush=True)
                continue
            if in_process:
                try:
                    case = run_case(config, layers, model_dir)
                except Exception as err:  # a failing case is reported, the sweep goes on
                    case = {"config": config.label, "settings": dataclasses.asdict(config), "layers": layers,
                            "error": f"{type(err).__name__}: {err}", "wall_s": 0.0}  # fmt: skip
            else:
                case = run_case_in_subprocess(config, layers, model_dir, args.timeout)
            cases.append(case)
            if "tracked" in case:
                tracked = case["tracked"]
                phases = ", ".join(f"{name} {_gib(stats['peak_bytes'])}" for name, stats in tracked["phases"].items())
                print(f"[{index}/{len(todo)}] {config.label}, {layers} layers: peak {_gib(tracked['peak_bytes'])} "
                      f"GiB ({phases}) in {case['wall_s']:.0f} s", flush=True)  # fmt: skip
            else:
                print(f"[{index}/{len(todo)}] {config.label}, {layers} layers: ERROR {case['error']}", flush=True)
            _write_partial(json_path, cases)
        configs = _with_reused_configs(configs, cases)
        known_depths = {summary["config"]: summary["full_depth"] for summary in previous.get("configs", [])}
        for config in configs:
            try:
                full_depth = single.model_config(config.model).num_hidden_layers
                depths = sorted({*config.layers, full_depth})
                config_planner = {k: planner_summary(config, k, model_dir / "planner-configs") for k in depths}
            except ConfigError:  # a local model directory that is gone (--report-only of a --quick run)
                if config.label not in planner or config.label not in known_depths:
                    raise
                config_planner = {int(k): value for k, value in planner[config.label].items()}
                full_depth = known_depths[config.label]
            planner[config.label] = {str(k): value for k, value in config_planner.items()}
            own = [c for c in cases if c["config"] == config.label]
            summaries.append(summarize_config(config, own, config_planner, full_depth))
    labels = [config.label for config in configs]
    cases.sort(key=lambda c: (labels.index(c["config"]) if c["config"] in labels else len(labels), c["layers"]))
    command = "python benchmarks/memory_depth_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.report_only and previous.get("command"):
        command = previous["command"]
    payload = {"environment": environment(), "command": command.strip(),
               "wall_s": sum(case.get("wall_s", 0.0) for case in cases), "run_wall_s": time.perf_counter() - start,
               "cases": cases, "configs": summaries, "planner": planner}  # fmt: skip
    json_path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    report = markdown(payload)
    (args.out / f"{NAME}.md").write_text(report)
    plot(payload, args.out / f"{NAME}.png")
    print(report)
    return 0


def _write_partial(path: Path, cases: list[dict]) -> None:
    """The cases so far, so that an interrupted sweep can be resumed with `--reuse`."""
    path.write_text(json.dumps({"cases": cases, "partial": True}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
