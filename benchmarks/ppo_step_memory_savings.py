"""Peak memory of one `PPOTrainer.step`, this checkout against an older one: what the lean step saves.

The PPO step of this checkout runs gradient checkpointing in its training forward passes (eval-mode numerics kept)
and takes log-probs from the language-model head a chunk of tokens at a time (`stackrlhf.trainer.lean_forward`);
before, checkpointing never ran in the step and whole-sequence float32 logits and log-softmax were kept. Both sides
run the same step (LoRA r=16 policy on a bitsandbytes 8-bit base with gradient checkpointing requested, as the PPO
recipe loads it; batch 1, random prompt and response tokens) on full-width models truncated to 1 and 2 blocks,
under `stackrlhf.memory.MemoryTracker` (live tensor storages, CPU). The peak is fitted as a + b x layers and
extrapolated to the full depth. Generation is left out: it is the same code on both sides.

LLM.int8 runs with `llm_int8_threshold=0` (no outlier decomposition): on random weights most feature columns of
the MLP exceed bitsandbytes' default threshold of 6, and their float copies (hundreds of MiB per layer at 7B and
512-token prompts) would be measured, where trained checkpoints have a handful of outlier columns.

    git worktree add /tmp/stackrlhf-before d913cd6   # the last commit before the lean step
    python benchmarks/ppo_step_memory_savings.py --before /tmp/stackrlhf-before [--models 7b,13b]

`--models` measures some of the cases again and keeps the saved results of the others.

Each measurement runs in its own process (`--run`), with `PYTHONPATH` set to the checkout it measures; the tracker
module is loaded from this checkout by file path, so the older checkout needs no copy of it.
Writes benchmarks/results/ppo_step_memory_savings.{md,json}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))  # the sibling scripts memory_single_gpu and memory_depth_sweep

from machine import cpu_name  # noqa: E402

TRACKER = ROOT / "stackrlhf" / "memory" / "tracker.py"
GIB = 2**30
CASES = [
    # (model, query tokens, response tokens, full depth): the published settings. StackLLaMA's rl_training keeps
    # prompts under 512 tokens and samples 32-128 response tokens; the 20B write-up used short IMDB prompts.
    ("EleutherAI/gpt-neox-20b", 128, 128, 44),
    ("meta-llama/Llama-2-7b-hf", 511, 128, 32),
    ("meta-llama/Llama-2-13b-hf", 511, 128, 40),
]
LAYERS = (1, 2)


def _tracker_module():
    spec = importlib.util.spec_from_file_location("stackrlhf_memory_tracker", TRACKER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_one(model: str, layers: int, query_length: int, response_length: int, model_dir: Path) -> dict:
    """One tracked `step` of the stackrlhf importable here; returns peak and baseline bytes. The model, LoRA,
    bitsandbytes settings and tokenizer come from `memory_single_gpu`, whose imports both checkouts provide."""
    import memory_single_gpu as single
    import torch

    from stackrlhf import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    case = single.Case(model, "ppo", "8bit", 1, 1, query_length, response_length, layers=layers, int8_threshold=0.0)
    path = single._save_random_model(case.model, model_dir, case.layers)
    vocab = single.model_config(case.model).vocab_size
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(
        str(path),
        peft_config=single._lora_config(case, "CAUSAL_LM"),
        dtype=torch.bfloat16,
        quantization_config=single._quantization_config(case.quantization, case.int8_threshold),
    )
    trainer = PPOTrainer(
        PPOConfig(batch_size=1, mini_batch_size=1, seed=0, gradient_checkpointing=True),
        policy,
        None,
        single._tokenizer(vocab),
    )
    torch.manual_seed(0)
    queries = [torch.randint(2, vocab, (query_length,))]
    responses = [torch.randint(2, vocab, (response_length,))]
    tracker_module = _tracker_module()
    with tracker_module.MemoryTracker(roots={"model": trainer.model, "optimizer": trainer.optimizer}) as tracker:
        trainer.step(queries, responses, [torch.tensor(1.0)])
        trainer.step(queries, responses, [torch.tensor(1.0)])  # the second step holds the optimizer states
    return {"peak_bytes": tracker.peak_bytes, "baseline_bytes": tracker.baseline_bytes}


def measure_side(checkout: Path, model_dir: Path, models: set[str]) -> dict:
    results = {}
    for model, query_length, response_length, depth in CASES:
        if model not in models:
            continue
        points = {}
        for layers in LAYERS:
            env = {**os.environ, "PYTHONPATH": str(checkout)}
            argv = [sys.executable, __file__, "--run", json.dumps([model, layers, query_length, response_length])]
            argv += ["--model_dir", str(model_dir)]
            output = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if output.returncode != 0:
                raise RuntimeError(f"{checkout} {model} {layers} layers failed:\n{output.stderr[-3000:]}")
            points[layers] = json.loads(output.stdout.strip().splitlines()[-1])["peak_bytes"]
            print(f"{checkout.name}: {model} {layers} layers: {points[layers] / GIB:.3f} GiB", flush=True)
        from memory_depth_sweep import extrapolate, fit_line

        line = fit_line(list(points), list(points.values()))
        results[model] = {"points": points, "a": line["a"], "b": line["b"], "full_depth": depth,
                          "extrapolated": extrapolate(line, depth)}  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout (git worktree) of the older stackrlhf")
    parser.add_argument("--model_dir", type=Path, default=Path("/tmp/stackrlhf-depth-models"))
    parser.add_argument("--models", help="comma-separated: neox, 7b, 13b (default: all)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(*json.loads(args.run), args.model_dir)))
        return 0
    if args.before is None:
        parser.error("--before CHECKOUT is required")
    aliases = {"neox": CASES[0][0], "7b": CASES[1][0], "13b": CASES[2][0]}
    names = args.models.split(",") if args.models else list(aliases)
    unknown = sorted(set(names) - set(aliases))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(aliases)}")
    models = {aliases[name] for name in names}
    args.model_dir.mkdir(parents=True, exist_ok=True)
    saved = RESULTS / "ppo_step_memory_savings.json"
    previous = json.loads(saved.read_text()) if saved.exists() and args.models else {}
    before = {**previous.get("before_results", {}), **measure_side(args.before.resolve(), args.model_dir, models)}
    after = {**previous.get("after_results", {}), **measure_side(ROOT, args.model_dir, models)}
    machine = f"{cpu_name()}, {os.cpu_count()} CPUs, torch's default threads"
    lines = [
        "# One PPO step's peak memory (LoRA r=16 on an 8-bit base, batch 1): before and after the lean step",
        "",
        f"Tracked live tensor storage (`stackrlhf.memory.MemoryTracker`) on {machine}; full width, 1 and 2 blocks,",
        "extrapolated linearly to the full depth; the command is in benchmarks/ppo_step_memory_savings.py.",
        "",
        "| model | prompt + response | per block before | per block after | full depth before | full depth after "
        "| saved |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, query_length, response_length, depth in CASES:
        old, new = before[model], after[model]
        lines.append(
            f"| {model} ({depth} blocks) | {query_length} + {response_length} | {old['b'] / GIB:.3f} GiB | "
            f"{new['b'] / GIB:.3f} GiB | {old['extrapolated'] / GIB:.2f} GiB | {new['extrapolated'] / GIB:.2f} GiB | "
            f"{(old['extrapolated'] - new['extrapolated']) / GIB:.2f} GiB |"
        )
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ppo_step_memory_savings.md").write_text(report)
    payload = {"machine": machine, "before": str(args.before), "cases": CASES, "before_results": before,
               "after_results": after}  # fmt: skip
    (RESULTS / "ppo_step_memory_savings.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
