"""Time `PPOTrainer.step` of stackrlhf against TRL 0.11.4 on the same tiny configuration.

TRL 0.11.4 needs its own environment (transformers 4.46, peft 0.13): this script runs itself there as a subprocess
(`--worker trl`) and here (`--worker stackrlhf`), each timing `--steps` calls of `step` after one warm-up call on the
same model shape, batch and sequence lengths (random weights: timing does not depend on them). It prints a table,
the ratio stackrlhf / TRL (the project's target: <= 1.0), and saves them under benchmarks/results/.

    python benchmarks/ppo_step_vs_trl.py --make-venv /tmp/trl0114            # first time: builds the TRL venv
    python benchmarks/ppo_step_vs_trl.py --trl-python /tmp/trl0114/bin/python
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TRL_REQUIREMENTS = [
    "torch==2.13.0",
    "trl==0.11.4",
    "transformers==4.46.3",
    "peft==0.13.2",
    "accelerate==1.0.1",
    "datasets==3.1.0",
    "numpy<2",
]
SHAPE = {"vocab_size": 512, "n_embd": 64, "n_layer": 4, "n_head": 4, "n_positions": 128}
PPO = {"batch_size": 16, "mini_batch_size": 4, "ppo_epochs": 4, "seed": 0}
QUERY_LEN, RESPONSE_LEN = 24, 32


def time_steps(library: str, steps: int) -> dict:
    """Build the tiny GPT-2 policy with `library`'s classes and time `steps` PPO steps (seconds per step)."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    if library == "trl":
        from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
    else:
        from stackrlhf import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(**SHAPE, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    vocab = {f"t{i}": i for i in range(SHAPE["vocab_size"])}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), pad_token="t0", eos_token="t1"
    )
    model = AutoModelForCausalLMWithValueHead.from_pretrained(base)
    trainer = PPOTrainer(PPOConfig(**PPO), model, None, tokenizer)
    generator = torch.Generator().manual_seed(1)
    queries = [torch.randint(2, SHAPE["vocab_size"], (QUERY_LEN,), generator=generator) for _ in range(16)]
    responses = [torch.randint(2, SHAPE["vocab_size"], (RESPONSE_LEN,), generator=generator) for _ in range(16)]
    scores = [torch.randn((), generator=generator) for _ in range(16)]

    trainer.step(queries, responses, scores)  # warm-up: allocator, lazy imports
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.step(queries, responses, scores)
        seconds.append(time.perf_counter() - start)
    import transformers

    return {
        "library": library,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "seconds_per_step": statistics.median(seconds),
        "all_seconds": seconds,
    }


def make_venv(directory: Path) -> Path:
    """Create a virtual environment with TRL 0.11.4 and its pinned stack; return its python."""
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True)
    python = directory / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_REQUIREMENTS], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-python", type=Path, help="python of an environment with trl==0.11.4 installed")
    parser.add_argument("--make-venv", type=Path, help="create that environment in this directory first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per library (median reported)")
    parser.add_argument("--worker", choices=["trl", "stackrlhf"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(time_steps(args.worker, args.steps)))
        return
    trl_python = make_venv(args.make_venv) if args.make_venv else args.trl_python
    if trl_python is None:
        parser.error("give --trl-python (an environment with trl==0.11.4) or --make-venv DIR")

    rows = []
    for library, python in (("trl", trl_python), ("stackrlhf", Path(sys.executable))):
        worker = [str(python), __file__, "--worker", library, "--steps", str(args.steps)]
        completed = subprocess.run(worker, check=True, capture_output=True, text=True)
        rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    trl_time, ours = rows[0]["seconds_per_step"], rows[1]["seconds_per_step"]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}, CPU threads: torch default",
        "shape": SHAPE,
        "ppo": PPO,
        "query_len": QUERY_LEN,
        "response_len": RESPONSE_LEN,
        "rows": rows,
        "ratio_stackrlhf_over_trl": ours / trl_time,
    }
    table = [
        "| library | torch | transformers | seconds per step (median) |",
        "|---|---|---|---|",
        *(
            f"| {row['library']} | {row['versions']['torch']} | {row['versions']['transformers']} | "
            f"{row['seconds_per_step']:.3f} |"
            for row in rows
        ),
        "",
        f"ratio stackrlhf / trl 0.11.4: **{result['ratio_stackrlhf_over_trl']:.2f}** (target <= 1.0)",
    ]
    print("\n".join(table))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ppo_step_vs_trl.json").write_text(json.dumps(result, indent=2) + "\n")
    header = (
        f"# PPOTrainer.step: stackrlhf vs TRL 0.11.4\n\nMachine: {result['machine']}. GPT-2 {SHAPE}, PPO {PPO}, "
        f"query {QUERY_LEN} + response {RESPONSE_LEN} tokens, {args.steps} timed steps after one warm-up.\n\n"
    )
    (RESULTS / "ppo_step_vs_trl.md").write_text(header + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
