"""Is the offline demo's learning robust? `make demo`'s two commands for several seeds and thread counts.

For each seed and thread count: `accelerate launch --num_processes 1 --num_cpu_threads_per_process T
recipes/ppo_stackllama.py --seed S --output_dir DIR`, then `recipes/evaluate_policy.py --policy_path DIR` with T
threads. Each run's row: mean reward of the first and last 20% of PPO steps and their difference, the last step's KL
to the reference, evaluate_policy's mean rewards and policy win rate, the PPO and evaluation wall clock, the number
of "average ratio ... exceeds threshold" skips, and the load average when the run ended. With `--sentiment`, the
sentiment quick start (`recipes/ppo_sentiment.py`) runs for the same seeds and thread counts too.

    python benchmarks/demo_robustness.py                       # 3 seeds x {1, 2} threads
    python benchmarks/demo_robustness.py --seeds 0 --threads 1 --isa AVX2 --sentiment

`--isa AVX2` runs as on a CPU without AVX-512 (so without AVX512-BF16): torch's own kernels
(ATEN_CPU_CAPABILITY), MKL's matrix products (MKL_ENABLE_INSTRUCTIONS) and oneDNN (ONEDNN_MAX_CPU_ISA) all keep to
AVX2. The stages before PPO (SFT, merge, reward) come from the cache; the first run builds them.
Writes benchmarks/results/demo_robustness.{json,md} (or `--results` elsewhere) after every run; with `--append` the
rows already there stay, except those this invocation runs again (several invocations may append at once).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stackrlhf.trainer.reporting import STATS_FILE, read_stats, summarize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
RATIO_SKIP = "exceeds threshold"
"""What PPOTrainer's warning says when it skips a mini-batch whose mean ratio is too large."""


ISA_ENVIRONMENT = {
    "AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
}
"""The environment that keeps torch, MKL and oneDNN to an instruction set (`--isa`)."""


def run_command(command: list[str], threads: int, isa: str | None, log: Path) -> float:
    """Run `command` in the repository with `threads` OpenMP/torch threads (and the kernels limited to `isa`, a key
    of `ISA_ENVIRONMENT`), output to `log`; returns the wall seconds.

    Raises:
        RuntimeError: the command failed (its log's last lines in the message).
    """
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env |= ISA_ENVIRONMENT.get(isa, {})
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{shlex.join(command)} exited {code}:\n" + "\n".join(tail))
    return seconds


def run_summary(output_dir: Path, log: Path) -> dict[str, Any]:
    """A finished run's figures: first/last 20% mean reward, their gain, the last KL, steps and ratio skips."""
    summary = summarize(read_stats(output_dir / STATS_FILE))
    return {
        "steps": summary["steps"],
        "reward_first": summary["reward_first"],
        "reward_last": summary["reward_last"],
        "reward_gain": summary["reward_last"] - summary["reward_first"],
        "kl_last": summary["kl_last"],
        "ratio_skips": log.read_text(errors="replace").count(RATIO_SKIP),
    }


def evaluation_summary(output_dir: Path) -> dict[str, Any]:
    """evaluate_policy's report (`evaluation.json`): prompts, samples, mean rewards and win rate."""
    report = json.loads((output_dir / "evaluation.json").read_text())
    keys = ("num_prompts", "num_comparisons", "policy_mean_reward", "reference_mean_reward", "win_rate")
    return {key: report.get(key) for key in keys}


def demo_run(
    seed: int, threads: int, work: Path, isa: str | None, ppo_args: list[str], eval_args: list[str]
) -> dict[str, Any]:
    """`make demo`'s two commands for one seed and thread count; returns the run's row."""
    output_dir = work / f"ppo-seed{seed}-threads{threads}{'-' + isa if isa else ''}"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_processes", "1"]
    ppo = [*launch, "--num_cpu_threads_per_process", str(threads), "recipes/ppo_stackllama.py"]
    ppo += ["--output_dir", str(output_dir), "--overwrite_output_dir", "--seed", str(seed), *ppo_args]
    ppo += ["--torch_threads", str(threads)]  # the tiny config's own default is 1
    ppo_log = output_dir.with_suffix(".ppo.log")
    ppo_seconds = run_command(ppo, threads, isa, ppo_log)
    evaluate = [sys.executable, "recipes/evaluate_policy.py", "--policy_path", str(output_dir), *eval_args]
    eval_seconds = run_command(evaluate, threads, isa, output_dir.with_suffix(".eval.log"))
    return {
        "recipe": "ppo_stackllama",
        "seed": seed,
        "threads": threads,
        "isa": isa or "native",
        **run_summary(output_dir, ppo_log),
        **evaluation_summary(output_dir),
        "ppo_seconds": ppo_seconds,
        "eval_seconds": eval_seconds,
        "load_average_1min": os.getloadavg()[0],
    }


def sentiment_run(seed: int, threads: int, work: Path, isa: str | None, args: list[str]) -> dict[str, Any]:
    """The sentiment quick start for one seed and thread count; returns its row."""
    output_dir = work / f"sentiment-seed{seed}-threads{threads}{'-' + isa if isa else ''}"
    command = [sys.executable, "recipes/ppo_sentiment.py", "--output_dir", str(output_dir), "--overwrite_output_dir"]
    command += ["--seed", str(seed), "--torch_threads", str(threads), *args]
    log = output_dir.with_suffix(".log")
    seconds = run_command(command, threads, isa, log)
    return {
        "recipe": "ppo_sentiment",
        "seed": seed,
        "threads": threads,
        "isa": isa or "native",
        **run_summary(output_dir, log),
        "ppo_seconds": seconds,
        "load_average_1min": os.getloadavg()[0],
    }


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    """The report: machine, command(s), one table per recipe, and the worst case of each criterion."""
    lines = [
        "# Offline demo robustness (`make demo`'s two commands per seed and thread count)",
        "",
        f"Machine: {machine['cpu']}, {machine['cpu_count']} CPUs, AVX512-BF16 {machine['avx512_bf16']}, Python "
        f"{machine['python']}. Command: `{command}`. The load column is the 1-minute load average when the run "
        "ended (other jobs shared the cores when it is above the thread count).",
        "",
    ]
    demo = [row for row in rows if row["recipe"] == "ppo_stackllama"]
    if demo:
        lines += [
            "| seed | threads | kernels | reward first 20% | last 20% | gain | KL last step | eval policy / "
            "reference reward | win rate (comparisons) | ratio skips | PPO s | eval s | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['seed']} | {r['threads']} | {r['isa']} | {_number(r['reward_first'])} | "
            f"{_number(r['reward_last'])} | {_number(r['reward_gain'], 3)} | {_number(r['kl_last'], 1)} | "
            f"{_number(r['policy_mean_reward'])} / {_number(r['reference_mean_reward'])} | "
            f"{_number(r['win_rate'])} ({r.get('num_comparisons') or r['num_prompts']}) | {r['ratio_skips']} | "
            f"{r['ppo_seconds']:.0f} | {r['eval_seconds']:.0f} | {r['load_average_1min']:.1f} |"
            for r in demo
        ]
        lines += [
            "",
            f"Smallest reward gain {min(r['reward_gain'] for r in demo):.3f}, smallest win rate "
            f"{min(r['win_rate'] for r in demo):.3f}, ratio skips {sum(r['ratio_skips'] for r in demo)}.",
            "",
        ]
    sentiment = [row for row in rows if row["recipe"] == "ppo_sentiment"]
    if sentiment:
        lines += [
            "Sentiment quick start (`recipes/ppo_sentiment.py`, VADER reward):",
            "",
            "| seed | threads | kernels | reward first 20% | last 20% | gain | KL last step | ratio skips | s "
            "| load |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['seed']} | {r['threads']} | {r['isa']} | {_number(r['reward_first'])} | "
            f"{_number(r['reward_last'])} | {_number(r['reward_gain'])} | {_number(r['kl_last'], 1)} | "
            f"{r['ratio_skips']} | {r['ppo_seconds']:.0f} | {r['load_average_1min']:.1f} |"
            for r in sentiment
        ]
        lines.append("")
    return "\n".join(lines)


def row_key(row: dict[str, Any]) -> tuple:
    """What identifies a run: recipe, seed, threads and oneDNN ISA."""
    return (row["recipe"], row["seed"], row["threads"], row["isa"])


def save(results: Path, row: dict[str, Any], machine: dict[str, Any], command: str) -> list[dict[str, Any]]:
    """Add `row` to the report at `results` (.json and .md), replacing a row of the same run, under a lock so that
    invocations running side by side keep each other's rows; returns all rows."""
    results.parent.mkdir(parents=True, exist_ok=True)
    with (Path(tempfile.gettempdir()) / f"{results.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = results.with_suffix(".json")
        report = json.loads(path.read_text()) if path.is_file() else {"rows": []}
        commands = [c for c in report.get("commands", []) if c != command] + [command]
        rows = [old for old in report["rows"] if row_key(old) != row_key(row)] + [row]
        rows.sort(key=lambda r: (r["recipe"], r["isa"], r["seed"], r["threads"]))
        path.write_text(json.dumps({"machine": machine, "commands": commands, "rows": rows}, indent=2) + "\n")
        results.with_suffix(".md").write_text(markdown(rows, machine, " ; ".join(commands)))
    return rows


def machine_description() -> dict[str, Any]:
    """CPU model, cores, AVX512-BF16 and Python version (benchmarks/machine.py, importable when run as a script)."""
    from machine import cpu_name, has_avx512_bf16

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "avx512_bf16": has_avx512_bf16(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="PPO seeds (--seed).")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="Thread counts per run.")
    parser.add_argument("--isa", choices=list(ISA_ENVIRONMENT), help="Kernels of an older CPU (default: this one's).")
    parser.add_argument("--sentiment", action="store_true", help="Also run the sentiment quick start.")
    parser.add_argument("--ppo_args", default="", help="Extra options of the PPO recipe (one quoted string).")
    parser.add_argument("--eval_args", default="", help="Extra options of evaluate_policy (one quoted string).")
    parser.add_argument("--sentiment_args", default="", help="Extra options of the sentiment recipe.")
    parser.add_argument("--work_dir", help="Where the runs write (default: a temporary directory).")
    parser.add_argument("--results", default=str(RESULTS / "demo_robustness"), help="Report path without suffix.")
    parser.add_argument("--append", action="store_true", help="Keep the report's rows of other runs.")
    args = parser.parse_args(argv)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="demo_robustness-"))
    work.mkdir(parents=True, exist_ok=True)
    results, machine = Path(args.results), machine_description()
    command = shlex.join(["python", "benchmarks/demo_robustness.py", *(argv if argv is not None else sys.argv[1:])])
    if not args.append:
        results.with_suffix(".json").unlink(missing_ok=True)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for threads in args.threads:
            row = demo_run(seed, threads, work, args.isa, shlex.split(args.ppo_args), shlex.split(args.eval_args))
            rows = save(results, row, machine, command)
            print(
                f"demo seed {seed} threads {threads}: reward {row['reward_first']:.3f} -> {row['reward_last']:.3f}, "
                f"win rate {row['win_rate']:.3f}, {row['ppo_seconds']:.0f} s + {row['eval_seconds']:.0f} s",
                flush=True,
            )
            if args.sentiment:
                row = sentiment_run(seed, threads, work, args.isa, shlex.split(args.sentiment_args))
                rows = save(results, row, machine, command)
                print(
                    f"sentiment seed {seed} threads {threads}: reward {row['reward_first']:.3f} -> "
                    f"{row['reward_last']:.3f}, {row['ratio_skips']} ratio skips, {row['ppo_seconds']:.0f} s",
                    flush=True,
                )
    print(markdown(rows, machine, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
