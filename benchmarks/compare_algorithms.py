"""PPO, GRPO, RLOO and DPO from the same SFT start, judged by the same reward model on the same held-out prompts.

Each algorithm runs its shipped offline defaults (`stackrlhf ppo`, `stackrlhf grpo [--algorithm rloo]`,
`stackrlhf dpo`: tiny/<recipe>/config_offline.yaml) once per seed, each in its own process and output directory
under `--work_dir`, all with `--threads` torch threads. All four start from the cached offline SFT stage (the merged
SFT model) and hold out the same 200 rows of the bundled HH-RLHF sample (the SFT and reward stages' held-out rows).
PPO, GRPO and RLOO train against the cached reward adapter; DPO trains on the preference pairs alone. Every trained
policy is then scored by `stackrlhf evaluate` with that same reward adapter: sampled responses to the held-out
prompts from the policy and from its reference (the SFT model: the adapter disabled), with the same seeds, prompts
and length budget for all. Per run it reports

* training seconds (the recipe's own clock around its training steps: PPO's and GRPO's `stats.jsonl`, DPO's
  `trainer.train`) and the process's wall clock (loading, tokenizing, saving and sample generations too);
* held-out mean reward of policy and reference, the policy's win rate (ties count half) and the reward gained per
  training second, (policy mean - reference mean) / training seconds;
* distinct-2 of those responses (a response's distinct word bigrams over its bigrams, averaged over responses; the
  reference's alongside): a reward model can be pleased by a repeated phrase, and this shows it;
* KL to the reference, measured alike for all four: the exact per-token KL(policy || reference) over the vocabulary
  at every token of the policy's evaluation responses, averaged over those tokens;
* the budget it trained on (optimizer steps, prompts, sampled responses or preference pairs) and its training
  reward curve (PPO, GRPO, RLOO: the mean reward of each step's own samples);

and, from `stackrlhf plan --stage <algorithm> --json`, the planner's peak memory of each algorithm at 7B and 20B.
Results are aggregated over seeds (mean ± sample std) into benchmarks/results/compare_algorithms.{json,md,png}.

    python benchmarks/compare_algorithms.py [--seeds 3] [--algorithms ppo grpo rloo dpo] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module machine

from machine import cpu_name, has_avx512_bf16  # noqa: E402

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
ALGORITHMS = ("ppo", "grpo", "rloo", "dpo")
COLORS = {"ppo": "tab:blue", "grpo": "tab:orange", "rloo": "tab:green", "dpo": "tab:red"}
HELD_OUT = 200
"""Rows every run holds out: the SFT and reward stages' held-out rows, and `stackrlhf evaluate`'s prompts."""
QUICK_STEPS = 4
PLAN_MODELS = {
    "7B": ["--model", "meta-llama/Llama-2-7b-hf", "--quantization", "8bit"],
    "20B": ["--model", "EleutherAI/gpt-neox-20b", "--quantization", "8bit", "--upcast_non_quantized", "false"],
}
"""The planner's settings per size (its defaults otherwise): StackLLaMA's 8-bit 7B and the 20B write-up's 8-bit
base with 16-bit embeddings and norms."""
METRICS = {
    "train_seconds": "training s",
    "process_seconds": "process s",
    "policy_reward": "policy mean reward",
    "reward_gain": "reward gain",
    "gain_per_second": "reward gain / training s",
    "win_rate": "win rate",
    "kl_per_token": "KL / token (nats)",
    "distinct_2": "distinct-2",
}
"""Per-run numbers aggregated over seeds -> their column titles."""
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate")


# ------------------------------------------------------------------------------------------------------------ runs


def recipe_command(algorithm: str, seed: int, output_dir: Path, threads: int, quick: bool) -> list[str]:
    """The `stackrlhf` command line of one training run: the recipe's offline defaults, `seed`, the common held-out
    rows and thread count; `quick`: `QUICK_STEPS` optimizer steps."""
    from stackrlhf.configs import offline_config, read_config

    command = [sys.executable, "-m", "stackrlhf.cli", "grpo" if algorithm == "rloo" else algorithm]
    command += ["--output_dir", str(output_dir), "--overwrite_output_dir", "true", "--seed", str(seed)]
    command += ["--eval_samples", str(HELD_OUT)]
    if algorithm == "rloo":
        command += ["--algorithm", "rloo"]
    command += ["--torch_threads", str(threads)]
    if quick:
        if algorithm == "ppo":  # PPO counts prompts, not steps
            command += ["--steps", str(QUICK_STEPS * read_config(offline_config("ppo"))["batch_size"])]
        else:
            command += ["--max_steps", str(QUICK_STEPS)]
    return command


def run_process(command: Sequence[str], threads: int, log_path: Path) -> float:
    """Run `command` with `threads` OpenMP/MKL threads, its output into `log_path`; return its wall-clock seconds.

    Raises:
        SystemExit: the command failed; the message names it and ends with its output's last lines.
    """
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    with log_path.open("w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    seconds = time.perf_counter() - start
    if code:
        tail = "\n".join(log_path.read_text().splitlines()[-15:])
        raise SystemExit(f"{' '.join(command[2:])} failed (exit {code}); end of {log_path}:\n{tail}")
    return seconds


def training_record(algorithm: str, output_dir: Path) -> dict[str, Any]:
    """What a finished run's outputs say about its training: seconds, budget, reward curve.

    PPO, GRPO and RLOO: from `stats.jsonl` (one line per step: `samples` sampled responses, their `reward_mean`,
    the step's `seconds`); DPO: from `stackrlhf_summary.json` (`steps`, `pairs_seen`, `train_seconds`, held-out
    implicit-reward accuracy and margin).
    """
    summary = json.loads((output_dir / "stackrlhf_summary.json").read_text())
    if algorithm == "dpo":
        return {
            "train_seconds": summary["train_seconds"],
            "steps": summary["steps"],
            "pairs": summary["pairs_seen"],
            "curve": [],
            "dpo_accuracy": summary["eval_reward_accuracy"],
            "dpo_margin": summary["eval_reward_margin"],
        }
    records = [json.loads(line) for line in (output_dir / "stats.jsonl").read_text().splitlines() if line.strip()]
    elapsed, curve = 0.0, []
    for record in records:
        elapsed += record["seconds"]
        curve.append((elapsed, record["reward_mean"]))
    responses = sum(record["samples"] for record in records)
    return {
        "train_seconds": elapsed,
        "steps": len(records),
        "responses": responses,
        "prompts": responses // summary.get("num_generations", 1),
        "curve": curve,
    }


def evaluate(policy_dir: Path, reward_adapter: str, threads: int, num_prompts: int) -> tuple[dict[str, Any], float]:
    """`stackrlhf evaluate` of one policy (seed 0, the evaluate recipe's prompt and length settings): its report
    and the process's wall-clock seconds."""
    report_path = policy_dir / "evaluation.json"
    command = [sys.executable, "-m", "stackrlhf.cli", "evaluate", "--policy_path", str(policy_dir)]
    command += ["--reward_adapter", reward_adapter, "--num_prompts", str(num_prompts), "--eval_samples", str(HELD_OUT)]
    command += ["--seed", "0", "--output_file", str(report_path)]
    seconds = run_process(command, threads, policy_dir / "evaluate.log")
    return json.loads(report_path.read_text()), seconds


def token_kl(policy_dir: Path, samples: Sequence[dict[str, str]]) -> dict[str, float]:
    """Mean per-token KL(policy || reference) over the policy's responses in `samples` (`query`, `policy` texts).

    The policy is `policy_dir`'s LoRA adapter on its base, the reference that base with the adapter disabled. At
    every response token t the exact KL between the two next-token distributions given the query and the
    response's tokens before t is summed over the vocabulary (nats); the result averages it over all response
    tokens. A response's tokens are those of `query + response` after the longest common prefix with `query`'s.

    Returns:
        `kl_per_token` (nats) and `tokens`, the response tokens averaged over.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import ModelConfig

    from stackrlhf.models.loading import load_tokenizer, read_adapter

    adapter = read_adapter(policy_dir)
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=adapter.tokenizer_source))
    base = AutoModelForCausalLM.from_pretrained(adapter.base_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(policy_dir)).eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for sample in samples:
            query = tokenizer(sample["query"])["input_ids"]
            full = tokenizer(sample["query"] + sample["policy"])["input_ids"]
            start = next((i for i, (a, b) in enumerate(zip(query, full, strict=False)) if a != b), len(query))
            if start >= len(full):
                continue
            ids = torch.tensor([full])
            policy = torch.log_softmax(model(ids).logits[0, start - 1 : -1].float(), dim=-1)
            with model.disable_adapter():
                reference = torch.log_softmax(model(ids).logits[0, start - 1 : -1].float(), dim=-1)
            total += float((policy.exp() * (policy - reference)).sum())
            tokens += len(full) - start
    return {"kl_per_token": total / tokens if tokens else float("nan"), "tokens": tokens}


def distinct_2(texts: Sequence[str]) -> float:
    """Mean over `texts` of the share of distinct word bigrams among a text's bigrams (texts under two words skipped;
    nan when none is left): 1 when no bigram repeats, low for a response that loops on one phrase."""
    shares = []
    for text in texts:
        words = text.split()
        bigrams = list(zip(words, words[1:], strict=False))
        if bigrams:
            shares.append(len(set(bigrams)) / len(bigrams))
    return statistics.fmean(shares) if shares else float("nan")


def run_one(algorithm: str, seed: int, work_dir: Path, args: argparse.Namespace, reward_adapter: str) -> dict:
    """Train and evaluate one (algorithm, seed) run in `work_dir/<algorithm>_s<seed>` (two processes)."""
    output_dir = work_dir / f"{algorithm}_s{seed}"
    output_dir.mkdir(parents=True, exist_ok=True)
    command = recipe_command(algorithm, seed, output_dir, args.threads, args.quick)
    print(f"[compare_algorithms] {algorithm} seed {seed}: {' '.join(command[2:])}", flush=True)
    load_before = os.getloadavg()[0]
    process_seconds = run_process(command, args.threads, output_dir.parent / f"{output_dir.name}.log")
    load_after = os.getloadavg()[0]
    record = training_record(algorithm, output_dir)
    report, evaluate_seconds = evaluate(output_dir, reward_adapter, args.threads, args.eval_prompts)
    gain = report["policy_mean_reward"] - report["reference_mean_reward"]
    return {
        "algorithm": algorithm,
        "seed": seed,
        "output_dir": str(output_dir),
        **record,
        "process_seconds": process_seconds,
        "evaluate_seconds": evaluate_seconds,
        "load_average": [load_before, load_after],
        "num_prompts": report["num_prompts"],
        "num_comparisons": len(report["samples"]),
        "eval_settings": {
            key: report["settings"].get(key, 1)
            for key in ("max_prompt_length", "max_new_tokens", "samples_per_prompt", "seed")
        },
        "policy_reward": report["policy_mean_reward"],
        "reference_reward": report["reference_mean_reward"],
        "reward_gain": gain,
        "gain_per_second": gain / record["train_seconds"],
        "win_rate": report["win_rate"],
        "distinct_2": distinct_2([sample["policy"] for sample in report["samples"]]),
        "reference_distinct_2": distinct_2([sample["reference"] for sample in report["samples"]]),
    }


# ---------------------------------------------------------------------------------------------------- planner


def planner_peaks(algorithms: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """`stackrlhf plan --stage <algorithm> --json` at each `PLAN_MODELS` size: {algorithm: {size: {peak_bytes,
    peak_allocated_bytes, peak_phase, fits_24GB}}}, or {error: its message} where the planner refuses the stage."""
    peaks: dict[str, dict[str, dict[str, Any]]] = {}
    for algorithm in algorithms:
        peaks[algorithm] = {}
        for size, options in PLAN_MODELS.items():
            command = [sys.executable, "-m", "stackrlhf.cli", "plan", "--stage", algorithm, *options, "--json"]
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if done.returncode:
                lines = (done.stderr or done.stdout).strip().splitlines()
                peaks[algorithm][size] = {"error": lines[-1] if lines else f"exit {done.returncode}"}
                continue
            plan = json.loads(done.stdout)
            peaks[algorithm][size] = {
                "peak_bytes": plan["peak_bytes"],
                "peak_allocated_bytes": plan["peak_allocated_bytes"],
                "peak_phase": plan["peak_phase"],
                "fits_24GB": plan["verdicts"]["24GB"],
                "settings": plan["settings"],
            }
    return peaks


# ------------------------------------------------------------------------------------------------ aggregation


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value) of `values`."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per algorithm (in `ALGORITHMS` order): mean ± std over its runs of every `METRICS` number, and its budget
    (steps, prompts, sampled responses, preference pairs) when every run had the same."""
    table: dict[str, dict[str, Any]] = {}
    for algorithm in ALGORITHMS:
        mine = [run for run in runs if run["algorithm"] == algorithm]
        if not mine:
            continue
        row: dict[str, Any] = {"seeds": [run["seed"] for run in mine]}
        for metric in METRICS:
            row[metric] = mean_std([run[metric] for run in mine])
        for key in ("steps", "prompts", "responses", "pairs", "num_prompts"):
            values = {run[key] for run in mine if key in run}
            if len(values) == 1:
                row[key] = values.pop()
        if algorithm == "dpo":
            row["dpo_accuracy"] = mean_std([run["dpo_accuracy"] for run in mine])
            row["dpo_margin"] = mean_std([run["dpo_margin"] for run in mine])
        table[algorithm] = row
    return table


def findings(table: dict[str, dict[str, Any]]) -> list[str]:
    """One line per headline metric: which algorithm is best on it, by how much over the runner-up, and whether the
    seeds' spreads (mean ± std) overlap."""
    lines = []
    for metric, better in (
        ("policy_reward", max),
        ("win_rate", max),
        ("gain_per_second", max),
        ("train_seconds", min),
        ("kl_per_token", min),
        ("distinct_2", max),
    ):
        ranked = sorted(table, key=lambda name: table[name][metric]["mean"], reverse=better is max)
        if len(ranked) < 2:
            break
        first, second = (table[name][metric] for name in ranked[:2])
        if min(first["n"], second["n"]) < 2:
            spread = "one seed: no spread to compare"
        elif abs(first["mean"] - second["mean"]) > first["std"] + second["std"]:
            spread = "apart by more than their summed std"
        else:
            spread = "within their summed std"
        lines.append(
            f"{'highest' if better is max else 'lowest'} {METRICS[metric]}: {ranked[0].upper()} "
            f"{first['mean']:.4g} ± {first['std']:.2g}, then {ranked[1].upper()} {second['mean']:.4g} ± "
            f"{second['std']:.2g} ({spread})"
        )
    return lines


# ---------------------------------------------------------------------------------------------------- report


def machine_info(threads: int, jobs: int) -> dict[str, Any]:
    """CPU, cores, torch threads per run, runs at a time, library versions and the git revision of the code."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO)
    revision = head.stdout.strip() or "unknown"
    return {
        "cpu": cpu_name(),
        "avx512_bf16": has_avx512_bf16(),
        "cpu_cores": os.cpu_count(),
        "torch_threads_per_run": threads,
        "runs_at_a_time": jobs,
        "python": platform.python_version(),
        "git": revision + (" with uncommitted changes" if dirty.stdout.strip() else ""),
        **{library: version(library) for library in LIBRARIES},
    }


def cell(stat: dict[str, float], digits: int = 3) -> str:
    """`mean ± std` of `stat`."""
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def results_table(table: dict[str, dict[str, Any]], peaks: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The markdown table printed and saved: one row per algorithm, mean ± std over seeds."""
    sizes = list(PLAN_MODELS)
    header = ["algorithm", "seeds", *METRICS.values(), *(f"planner peak {size} GiB" for size in sizes)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for algorithm, row in table.items():
        cells = [algorithm.upper(), str(len(row["seeds"]))]
        cells += [
            cell(row[metric], 1 if "seconds" in metric else 4 if metric == "gain_per_second" else 3)
            for metric in METRICS
        ]
        for size in sizes:
            plan = peaks.get(algorithm, {}).get(size, {})
            cells.append(
                f"{gib(plan['peak_bytes'])} ({plan['peak_phase']})" if "peak_bytes" in plan else "not planned"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_lines(table: dict[str, dict[str, Any]]) -> list[str]:
    """What each algorithm trained on, per seed."""
    lines = []
    for algorithm, row in table.items():
        if algorithm == "dpo":
            what = f"{row.get('pairs', '?')} preference pairs (2 fixed answers each, nothing sampled)"
        else:
            what = f"{row.get('prompts', '?')} prompts, {row.get('responses', '?')} sampled responses"
        lines.append(f"- {algorithm.upper()}: {row.get('steps', '?')} steps, {what}")
    return lines


def write_report(result: dict[str, Any], output_dir: Path) -> str:
    """Write compare_algorithms.{json,md,png} into `output_dir`; return the results table."""
    table, peaks, m = result["aggregate"], result["planner"], result["machine"]
    text = results_table(table, peaks)
    runs = result["runs"]
    references = sorted({round(run["reference_reward"], 6) for run in runs})
    same = "one value: every evaluation saw the same reference responses" if len(references) == 1 else "differing"
    reference_distinct = statistics.fmean(run["reference_distinct_2"] for run in runs)
    load = [value for run in runs for value in run["load_average"]]
    per_run = [
        "| algorithm | seed | training s | policy reward | win rate | KL / token | distinct-2 | steps |",
        "|" + "---|" * 8,
    ]
    per_run += [
        f"| {run['algorithm'].upper()} | {run['seed']} | {run['train_seconds']:.1f} | {run['policy_reward']:.4f} | "
        f"{run['win_rate']:.3f} | {run['kl_per_token']:.4f} | {run['distinct_2']:.3f} | {run['steps']} |"
        for run in runs
    ]
    plan_notes = [
        f"- {size}: `stackrlhf plan --stage <algorithm> {' '.join(options)} --json` (the planner's defaults "
        "otherwise); a cell is the peak in GiB (allocated + CUDA context and allocator slack) and its phase."
        for size, options in PLAN_MODELS.items()
    ]
    plan_notes += [
        f"- {algorithm.upper()} {size}: {plan['error']}"
        for algorithm, sizes in peaks.items()
        for size, plan in sizes.items()
        if "error" in plan
    ]
    settings = runs[0]["eval_settings"]
    dpo = table.get("dpo")
    dpo_note = (
        f"\nDPO's own held-out check (implicit-reward accuracy of chosen over rejected, {HELD_OUT} held-out rows, "
        f"those that fit its max_length): accuracy {cell(dpo['dpo_accuracy'])}, margin {cell(dpo['dpo_margin'])}.\n"
        if dpo
        else ""
    )
    md = "\n".join(
        [
            "# PPO, GRPO, RLOO and DPO on the same offline pipeline",
            "",
            f"Machine: {m['cpu']} ({m['cpu_cores']} cores, AVX512-BF16: {m['avx512_bf16']}), no GPU; "
            f"{m['torch_threads_per_run']} torch thread(s) per run, {m['runs_at_a_time']} run(s) at a time; 1-minute "
            "load average "
            f"{min(load):.1f}-{max(load):.1f} around the training runs (other jobs shared the cores). "
            f"torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, peft {m['peft']}, accelerate "
            f"{m['accelerate']}; code {m['git']}.",
            "",
            f"Reproduce: `{result['command']}`",
            "",
            "Mean ± sample std over seeds. Reward, win rate and KL are measured on the policy's responses to the "
            f"held-out prompts ({runs[0]['num_prompts']} prompts of at most {settings['max_prompt_length']} tokens "
            f"among the {HELD_OUT} held-out rows, {settings['samples_per_prompt']} sampled responses each: "
            f"{runs[0]['num_comparisons']} comparisons; at most {settings['max_new_tokens']} new tokens, sampling "
            f"seeds from {settings['seed']}), scored by the offline reward adapter; win rate against the SFT "
            "reference's response to the same prompt with the same sampling seed (ties half). Reward gain = policy "
            "mean - reference mean; per training second of the run's own training clock.",
            "",
            text,
            "",
            f"Reference (SFT model, adapter disabled) mean reward on those prompts: {', '.join(map(str, references))} "
            f"({same}); its distinct-2: {reference_distinct:.3f}.",
            dpo_note,
            "## What each run trained on (per seed)",
            "",
            "All start from the same merged SFT model and hold out the same 200 rows; each uses its recipe's shipped "
            "offline defaults (tiny/<recipe>/config_offline.yaml) apart from the seed, the held-out rows and the "
            "thread count.",
            "",
            *budget_lines(table),
            "",
            "PPO makes several optimizer updates per batch (its `ppo_epochs` x mini-batches); GRPO and RLOO one per "
            "step; DPO one per step on pairs it does not sample. PPO, GRPO and RLOO are scored during training by "
            "the same reward adapter the evaluation uses; DPO never sees it.",
            "",
            "## Findings (computed from the runs)",
            "",
            *(f"- {line}" for line in findings(table)),
            "",
            "## Planner",
            "",
            *plan_notes,
            "",
            "## Every run",
            "",
            *per_run,
            "",
        ]
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "compare_algorithms.md").write_text(md)
    (output_dir / "compare_algorithms.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, output_dir / "compare_algorithms.png")
    return text


def plot(result: dict[str, Any], path: Path) -> None:
    """Three panels: training reward vs training seconds (each run's own samples, 5-step running mean) with the
    held-out mean reward at the mean training time (± std, all four); win rate; KL per token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, runs = result["aggregate"], result["runs"]
    names = list(table)
    figure, (curve_ax, win_ax, kl_ax) = plt.subplots(1, 3, figsize=(16, 4.5), width_ratios=(2, 1, 1))
    for algorithm in names:
        color = COLORS[algorithm]
        for run in (run for run in runs if run["algorithm"] == algorithm and run["curve"]):
            seconds, rewards = zip(*run["curve"], strict=True)
            window = min(5, len(rewards))
            smooth = [statistics.fmean(rewards[max(0, i - window + 1) : i + 1]) for i in range(len(rewards))]
            curve_ax.plot(seconds, smooth, color=color, alpha=0.5, linewidth=1)
        row = table[algorithm]
        curve_ax.errorbar(
            row["train_seconds"]["mean"],
            row["policy_reward"]["mean"],
            xerr=row["train_seconds"]["std"],
            yerr=row["policy_reward"]["std"],
            fmt="o",
            color=color,
            markersize=8,
            capsize=3,
            label=f"{algorithm.upper()} held out",
        )
    reference = statistics.fmean(run["reference_reward"] for run in runs)
    curve_ax.axhline(reference, color="grey", linestyle="--", label="SFT reference, held out")
    curve_ax.set(
        title="reward vs training wall clock\n(lines: training samples, 5-step mean; points: held-out evaluation)",
        xlabel="training seconds",
        ylabel="mean reward",
    )
    curve_ax.legend(fontsize=8)
    curve_ax.grid(alpha=0.3)
    labels = [name.upper() for name in names]
    colors = [COLORS[name] for name in names]
    for axis, metric, title in ((win_ax, "win_rate", "win rate vs SFT reference"), (kl_ax, "kl_per_token", "")):
        axis.bar(
            labels,
            [table[name][metric]["mean"] for name in names],
            yerr=[table[name][metric]["std"] for name in names],
            color=colors,
            capsize=4,
        )
        axis.set_title(title or "KL(policy || reference) per token, nats")
        axis.grid(alpha=0.3, axis="y")
    win_ax.axhline(0.5, color="grey", linestyle=":")
    figure.suptitle(f"mean ± std over seeds {sorted({run['seed'] for run in runs})}; {result['machine']['cpu']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------------- main


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare PPO, GRPO, RLOO and DPO from the same SFT start on the offline pipeline: reward gained "
        "per training second, held-out reward and win rate against the SFT reference, KL to it, and the planner's "
        "peak memory at 7B and 20B; several seeds each.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--seeds", type=int, default=3, help="Runs per algorithm, with seeds 0 .. SEEDS-1.")
    parser.add_argument(
        "--quick", action="store_true", help=f"Smoke size: {QUICK_STEPS} steps per run, --eval_prompts 16."
    )
    parser.add_argument("--eval_prompts", type=int, default=None, help="Held-out prompts (default 100; quick 16).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (OMP_NUM_THREADS).")
    parser.add_argument(
        "--jobs", type=int, default=1, help="Runs at a time (each with --threads threads); 1 times them alone."
    )
    parser.add_argument("--work_dir", default=None, help="Where the runs go (default: a temporary directory).")
    parser.add_argument("--output_dir", default=str(RESULTS), help="Where compare_algorithms.{json,md,png} go.")
    args = parser.parse_args(argv)
    if min(args.seeds, args.threads, args.jobs) < 1:
        parser.error("--seeds, --threads and --jobs must be at least 1")
    if args.eval_prompts is None:
        args.eval_prompts = 16 if args.quick else 100
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    import torch

    from stackrlhf.recipes.stages import offline_stages

    torch.set_num_threads(args.threads)  # the KL pass, in this process
    reward_adapter = str(offline_stages().reward_adapter)  # built here once, so no run times the stages
    algorithms = [name for name in ALGORITHMS if name in args.algorithms]
    with tempfile.TemporaryDirectory() as scratch:
        work_dir = Path(args.work_dir or scratch)
        jobs = [(algorithm, seed) for seed in range(args.seeds) for algorithm in algorithms]
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(lambda job: run_one(*job, work_dir, args, reward_adapter), jobs))
        for run in runs:  # in this process, one run at a time
            output_dir = Path(run["output_dir"])
            run |= token_kl(output_dir, json.loads((output_dir / "evaluation.json").read_text())["samples"])
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "command": f"python benchmarks/compare_algorithms.py {argv_text}".strip(),
        "machine": machine_info(args.threads, args.jobs),
        "args": vars(args),
        "reward_adapter": reward_adapter,
        "runs": runs,
        "aggregate": aggregate(runs),
        "planner": planner_peaks(algorithms),
    }
    text = write_report(result, Path(args.output_dir))
    print(text)
    return result


if __name__ == "__main__":
    main()
