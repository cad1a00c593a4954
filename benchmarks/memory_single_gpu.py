"""Measure GPU memory and speed of real SFT, reward and PPO steps, and compare them with `stackrlhf plan`.

For each case (model from the planner's bundled configs with random weights: memory does not depend on the values;
precision; stage) it runs one warm-up and `--steps` timed steps on one GPU with peft LoRA, records
`torch.cuda.max_memory_allocated` / `max_memory_reserved`, seconds per step and tokens per second (generation and
training), and the planner's `peak_allocated_bytes` for the same settings. PPO uses the classic API:
`AutoModelForCausalLMWithValueHead`, `PPOTrainer.generate` and `PPOTrainer.step(queries, responses, scores)`.

Without CUDA it says so, runs the CPU-side parts (meta-device parameter counts of every bundled config, the
planner's table for each case and for the headline cases) and writes every measured column as "not measured".
`measure(case, ..., device="cpu")` runs the same steps on the CPU (the tests do); `track_memory=True` adds the
peak of live tensor storages followed by `stackrlhf.memory.MemoryTracker` (any device; per phase: generation,
rollout, training forward, loss, backward, optimizer), which is how `benchmarks/memory_depth_sweep.py` measures
memory without a GPU. `Case.layers` truncates the model to its first layers (full width, reduced depth).

    python benchmarks/memory_single_gpu.py [--steps 3] [--cases small|all]

Writes benchmarks/results/memory_single_gpu.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from stackrlhf.planner import bundled_models, plan
from stackrlhf.planner.configs import load_model_config
from stackrlhf.planner.counting import meta_model
from stackrlhf.planner.estimate import GIB

RESULTS = Path(__file__).parent / "results"
NOT_MEASURED = "not measured"
LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "stackrlhf")


@dataclass(frozen=True)
class Case:
    """One measured configuration; `settings` are `stackrlhf.planner.plan` keywords."""

    model: str
    stage: str
    quantization: str
    batch_size: int = 4
    mini_batch_size: int = 2
    query_length: int = 64
    response_length: int = 64
    lora_r: int = 16
    layers: int | None = None
    """Keep only this many transformer blocks (`num_hidden_layers`); None: the model's own depth."""
    int8_threshold: float | None = None
    """8bit: LLM.int8's outlier threshold (None: bitsandbytes' 6.0; 0 turns the fp16 outlier decomposition off)."""
    upcast_non_quantized: bool = True
    """ppo, 8/4-bit: False keeps the embeddings, lm_head and norms in bf16 (the PPO recipe's
    `--upcast_non_quantized false`, the 20B write-up's setting) instead of peft's float32 upcast."""

    @property
    def settings(self) -> dict:
        return {
            "model": self.model,
            "stage": self.stage,
            "quantization": self.quantization,
            "batch_size": self.batch_size,
            "mini_batch_size": self.mini_batch_size,
            "query_length": self.query_length,
            "response_length": self.response_length,
            "lora_r": self.lora_r,
            "upcast_non_quantized": self.upcast_non_quantized,
        }

    @property
    def label(self) -> str:
        depth = f" {self.layers}L" if self.layers is not None else ""
        threshold = f" threshold {self.int8_threshold:g}" if self.int8_threshold is not None else ""
        upcast = "" if self.upcast_non_quantized else " 16-bit non-quantized"
        return f"{self.model}{depth} {self.quantization}{threshold}{upcast} {self.stage}"


SMALL_MODELS = ("gpt2", "gpt2-large", "facebook/opt-1.3b")
MEASURED_CASES = [
    Case(model, stage, quantization)
    for model in SMALL_MODELS
    for quantization in ("bf16", "8bit", "4bit")
    for stage in ("sft", "reward", "ppo")
]
LARGE_CASES = [Case("meta-llama/Llama-2-7b-hf", stage, "8bit", 4, 1, 128, 128) for stage in ("sft", "reward", "ppo")]
HEADLINE = [
    ("meta-llama/Llama-2-7b-hf", "8bit", False),
    ("meta-llama/Llama-2-13b-hf", "4bit", False),
    ("EleutherAI/gpt-neox-20b", "8bit", False),
    ("huggyllama/llama-30b", "4bit", True),
]
HEADLINE_SETTINGS = {"stage": "ppo", "lora_r": 16, "batch_size": 1, "mini_batch_size": 1, "query_length": 128,
                     "response_length": 128, "gpu_memory_gb": 24}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# GPU measurements


def _quantization_config(quantization: str, int8_threshold: float | None = None):
    """bitsandbytes settings of `quantization`; `int8_threshold`: LLM.int8's outlier threshold (None: 6.0)."""
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        threshold = {} if int8_threshold is None else {"llm_int8_threshold": int8_threshold}
        return BitsAndBytesConfig(load_in_8bit=True, **threshold)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return None


def _dtype(quantization: str) -> torch.dtype:
    return torch.float32 if quantization == "none" else torch.bfloat16


def model_config(model: str, layers: int | None = None):
    """`model`'s config (bundled name or local directory), with `num_hidden_layers` set to `layers` when given."""
    config = load_model_config(model)
    if layers is not None:
        config.num_hidden_layers = layers
    return config


def _save_random_model(model: str, directory: Path, layers: int | None = None) -> Path:
    """Random weights for `model`'s bundled config (truncated to `layers` blocks), saved once (bf16) so that
    bitsandbytes can load and quantize. The directory's config.json is also what the planner reads for it."""
    name = model.strip("/").replace("/", "--") + (f"--{layers}layers" if layers is not None else "")
    path = directory / name
    if not (path / "config.json").exists():
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        config = model_config(model, layers)
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(path)
    return path


def _lora_config(case: Case, task_type: str):
    from peft import LoraConfig

    return LoraConfig(r=case.lora_r, lora_alpha=32, lora_dropout=0.05, task_type=task_type)


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="t0", eos_token="t1")


def _load(case: Case, path: Path, head: str, checkpointing: bool, device: str):
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto_class = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    # Batched sequence classification needs a pad token id (gpt2 and Llama configs have none): the tokenizer's "t0".
    kwargs = {"num_labels": 1, "pad_token_id": 0} if head != "causal_lm" else {}
    model = auto_class.from_pretrained(
        path, dtype=_dtype(case.quantization), device_map={"": device},
        quantization_config=_quantization_config(case.quantization, case.int8_threshold), **kwargs,
    )  # fmt: skip
    if case.quantization in ("8bit", "4bit"):
        # Reentrant checkpoints, as the SFT and reward recipes use on a quantized base (transformers 5's default,
        # non-reentrant, keeps the layer inputs that bitsandbytes' matmul stashes on its autograd context).
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs={"use_reentrant": True}
        )
    elif checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return get_peft_model(model, _lora_config(case, "CAUSAL_LM" if head == "causal_lm" else "SEQ_CLS"))


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, steps: int, device: str) -> float:
    """Seconds per call of `fn` over `steps` calls after one warm-up call; `steps=0`: the one call, timed."""
    if steps == 0:
        start = time.perf_counter()
        fn()
        _synchronize(device)
        return time.perf_counter() - start
    fn()  # warm-up
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) / steps


TRACKED_TOP_STORAGES = 12
"""Largest storages listed per phase (and overall) at its peak in `measure(..., track_memory=True)`."""


def _tracked(tracker, elapsed: float) -> dict:
    """JSON-ready figures of a finished `MemoryTracker`: peaks (bytes), per-phase statistics and, per phase and
    overall, the largest storages alive at the peak and the live bytes grouped by creating operator."""
    from stackrlhf.memory import StorageRecord

    def describe(record: StorageRecord) -> dict:
        return {"nbytes": record.nbytes, "origin": record.origin, "phase": record.phase, "shape": list(record.shape),
                "dtype": str(record.dtype).removeprefix("torch."), "inside": record.inside}  # fmt: skip

    at_peak = {None: tracker.live_at_peak(), **{name: tracker.live_at_peak(name) for name in tracker.phases}}
    result = tracker.summary()
    result["seconds"] = elapsed
    result["peak_without_composite_temporaries"] = tracker.peak_without(lambda record: record.inside is not None)
    result["at_peak"] = {}
    for phase, records in at_peak.items():
        grouped: dict[str, int] = {}
        for record in records:
            key = record.origin if record.phase != "baseline" else "weights and states (baseline)"
            grouped[key] = grouped.get(key, 0) + record.nbytes
        result["at_peak"][phase or "overall"] = {
            "top": [describe(record) for record in records[:TRACKED_TOP_STORAGES]],
            "by_origin": dict(sorted(grouped.items(), key=lambda item: -item[1])),
        }
    return result


def _ppo_phase_wraps(tracker, trainer) -> None:
    """Label the PPO step's phases by wrapping the trainer's methods from outside (restored when `tracker` exits)."""
    tracker.wrap(trainer, "generate", "generation")
    tracker.wrap(trainer, "batched_forward_pass", lambda: "training_forward" if torch.is_grad_enabled() else "rollout")
    tracker.wrap(trainer, "loss", "loss")
    tracker.wrap(trainer.accelerator, "backward", "backward")
    tracker.wrap(trainer.optimizer, "step", "optimizer")


def measure(
    case: Case, model_dir: Path, steps: int, checkpointing: bool, device: str = "cuda", track_memory: bool = False
) -> dict:
    """Run `case` on `device` ("cuda": GPU 0, or "cpu"): one warm-up and `steps` timed steps (`steps=0`: one step,
    timed). PPO generates for every step first, then runs the PPO steps (tracked: the other way round).

    Returns peak allocated/reserved bytes (CUDA only, None on the CPU), seconds per step, tokens per second and,
    with `track_memory`, `tracked`: the `stackrlhf.memory.MemoryTracker` figures (bytes) of all the steps together
    (`peak_bytes`, `baseline_bytes`: the loaded model and its empty optimizer, `phases`, `at_peak`); a tracked PPO
    run makes its steps on random responses first and then generates (in eval mode), so that the generation sees
    the optimizer states. Tracking makes the steps slower (every operator passes through Python).
    """
    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    path = _save_random_model(case.model, model_dir, case.layers)
    vocab = model_config(case.model).vocab_size
    length = case.query_length + case.response_length
    generation_tokens_per_s = None
    tracker = None

    def tracking(roots: dict) -> AbstractContextManager:
        """A `MemoryTracker` whose baseline is `roots` (the loaded models and optimizer), or nothing."""
        nonlocal tracker
        if not track_memory:
            return nullcontext()
        from stackrlhf.memory import MemoryTracker

        tracker = MemoryTracker(roots=roots, device=device)
        return tracker

    def phase(name: str) -> AbstractContextManager:
        return tracker.phase(name) if tracker is not None else nullcontext()

    if case.stage == "ppo":
        from stackrlhf import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

        model = AutoModelForCausalLMWithValueHead.from_pretrained(
            str(path), peft_config=_lora_config(case, "CAUSAL_LM"), dtype=_dtype(case.quantization),
            quantization_config=_quantization_config(case.quantization, case.int8_threshold), device_map={"": device},
            use_gradient_checkpointing=checkpointing, upcast_non_quantized=case.upcast_non_quantized,
        )  # fmt: skip
        # `use_gradient_checkpointing` above only reaches quantized models: the config turns it on for any.
        config = PPOConfig(batch_size=case.batch_size, mini_batch_size=case.mini_batch_size, seed=0,
                           gradient_checkpointing=checkpointing)  # fmt: skip
        trainer = PPOTrainer(config, model, None, _tokenizer(vocab))
        queries = [torch.randint(2, vocab, (case.query_length,), device=device) for _ in range(case.batch_size)]
        generation = {"min_new_tokens": case.response_length, "max_new_tokens": case.response_length,
                      "do_sample": True, "top_k": 0, "top_p": 1.0, "pad_token_id": 0, "eos_token_id": -1}  # fmt: skip
        responses = []

        def generate():
            responses[:] = trainer.generate(queries, return_prompt=False, batch_size=case.batch_size, **generation)

        scores = [torch.tensor(1.0, device=device) for _ in range(case.batch_size)]
        with tracking({"model": trainer.model, "optimizer": trainer.optimizer, "reference": trainer.ref_model}):
            start = time.perf_counter()
            if tracker is None:
                generation_s = _timed(generate, steps, device)
                seconds = _timed(lambda: trainer.step(queries, list(responses), scores), steps, device)
            else:
                _ppo_phase_wraps(tracker, trainer)
                # Memory does not depend on the tokens: the step runs on random responses first, so that the
                # generation after it sees the optimizer states, as from the second PPO iteration on. It runs in
                # eval mode (the fresh model's mode): on the CPU, bitsandbytes' 8-bit layers in training mode
                # dequantize their whole weight in every forward pass (MatMul8bitFp), which CUDA's path does not.
                responses[:] = [torch.randint(2, vocab, (case.response_length,), device=device) for _ in queries]
                seconds = _timed(lambda: trainer.step(queries, list(responses), scores), steps, device)
                trainer.model.eval()
                generation_s = _timed(generate, steps, device)
            generation_tokens_per_s = case.batch_size * case.response_length / generation_s
        tokens = case.batch_size * length
    else:
        head = "causal_lm" if case.stage == "sft" else "sequence_classification"
        model = _load(case, path, head, checkpointing, device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        rows = case.batch_size * (2 if case.stage == "reward" else 1)
        input_ids = torch.randint(2, vocab, (rows, length), device=device)

        def train_step():
            model.train()  # transformers recomputes activations (gradient checkpointing) only in training mode
            with phase("forward"):
                if case.stage == "sft":
                    loss = model(input_ids=input_ids, labels=input_ids).loss
                else:
                    scores = model(input_ids=input_ids).logits.squeeze(-1)
                    chosen, rejected = scores[: case.batch_size], scores[case.batch_size :]
                    loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
            with phase("backward"):
                loss.backward()
            with phase("optimizer"):
                optimizer.step()
                optimizer.zero_grad()

        with tracking({"model": model, "optimizer": optimizer}):
            start = time.perf_counter()
            seconds = _timed(train_step, steps, device)
        tokens = rows * length
    result = {
        "max_memory_allocated": torch.cuda.max_memory_allocated() if cuda else None,
        "max_memory_reserved": torch.cuda.max_memory_reserved() if cuda else None,
        "seconds_per_step": seconds,
        "train_tokens_per_s": tokens / seconds,
        "generation_tokens_per_s": generation_tokens_per_s,
    }
    if tracker is not None:
        result["tracked"] = _tracked(tracker, time.perf_counter() - start)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Report


def environment() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cuda": torch.cuda.is_available()}
    info.update({name: version(name) for name in LIBRARIES})
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
        info["cuda_runtime"] = torch.version.cuda
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        info["driver"] = subprocess.run(query, capture_output=True, text=True).stdout.strip() or "unknown"
    else:
        info["gpu"] = info["driver"] = "none (no CUDA device)"
    return info


def _gib(value) -> str:
    return f"{value / GIB:.2f}" if isinstance(value, (int, float)) else str(value)


def _rate(value) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


def markdown(env: dict, counts: list[dict], rows: list[dict], headline: list[dict]) -> str:
    lines = ["# Memory on one GPU: measured against `stackrlhf plan`", ""]
    lines += [f"- {key}: {value}" for key, value in env.items()]
    lines += ["", "## Headline cases: PPO, LoRA r=16, batch 1, 128 + 128 tokens, 24 GB card (planner)", ""]
    lines += ["| model | weights | planned peak GiB | fits 24 GB | largest batch | measured peak GiB |"]
    lines += ["|---|---|---|---|---|---|"]
    lines += [
        f"| {h['model']} | {h['weights']} | {_gib(h['peak_bytes'])} | {'yes' if h['fits'] else 'no'} | "
        f"{h['max_batch_size']} | {h['measured']} |"
        for h in headline
    ]
    lines += ["", "## Measured steps (LoRA r=16, batch 4, mini batch 2, 64 + 64 tokens)", ""]
    lines += [
        "| case | planned allocated GiB | max allocated GiB | max reserved GiB | planned / measured | s/step "
        "| train tok/s | gen tok/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        measured = row["max_memory_allocated"]
        ratio = f"{row['planned_allocated'] / measured:.2f}" if isinstance(measured, int) else NOT_MEASURED
        seconds = row["seconds_per_step"]
        lines.append(
            f"| {row['case']} | {_gib(row['planned_allocated'])} | {_gib(measured)} | "
            f"{_gib(row['max_memory_reserved'])} | {ratio} | "
            f"{f'{seconds:.3f}' if isinstance(seconds, float) else seconds} | {_rate(row['train_tokens_per_s'])} | "
            f"{_rate(row['generation_tokens_per_s'])} |"
        )
    lines += [
        "",
        "## Parameter counts of the bundled configs (meta device)",
        "",
        "| model | parameters |",
        "|---|---|",
    ]
    lines += [f"| {c['model']} | {c['params']:,} |" for c in counts]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], headline: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["case"] for row in rows] + [f"{h['model']} {h['weights']} ppo (24 GB)" for h in headline]
    planned = [row["planned_allocated"] / GIB for row in rows] + [h["peak_bytes"] / GIB for h in headline]
    measured = [
        row["max_memory_allocated"] / GIB if isinstance(row["max_memory_allocated"], int) else 0 for row in rows
    ] + [0] * len(headline)
    figure, axes = plt.subplots(figsize=(10, 0.28 * len(labels) + 1.5))
    positions = range(len(labels))
    axes.barh([p + 0.2 for p in positions], planned, height=0.4, label="planned")
    axes.barh([p - 0.2 for p in positions], measured, height=0.4, label="measured (0 = not measured)")
    axes.set_yticks(list(positions), labels, fontsize=7)
    axes.invert_yaxis()
    axes.axvline(24, color="grey", linestyle="--", linewidth=0.8)
    axes.set_xlabel("GiB")
    axes.set_title("Peak GPU memory: stackrlhf plan vs torch.cuda.max_memory_allocated")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case after one warm-up")
    parser.add_argument("--cases", choices=["small", "all"], default="small", help="all: also Llama-2-7B 8-bit")
    args = parser.parse_args()

    env = environment()
    cuda = torch.cuda.is_available()
    if not cuda:
        print("No CUDA device: GPU steps are not run; writing the planner's numbers with 'not measured' measurements.")
    counts = [
        {"model": name, "params": sum(p.numel() for p in meta_model(load_model_config(name)).parameters())}
        for name in bundled_models()
    ]
    cases = MEASURED_CASES + (LARGE_CASES if args.cases == "all" else [])
    rows = []
    with tempfile.TemporaryDirectory() as model_dir:
        for case in cases:
            planned = plan(**case.settings, max_batch=False)
            row = {"case": case.label, "settings": case.settings, "planned_allocated": planned.peak_allocated_bytes}
            row["planned_gradient_checkpointing"] = planned.gradient_checkpointing
            if cuda:
                row.update(measure(case, Path(model_dir), args.steps, planned.gradient_checkpointing))
            else:
                keys = ("max_memory_allocated", "max_memory_reserved", "seconds_per_step", "train_tokens_per_s")
                row.update({key: NOT_MEASURED for key in (*keys, "generation_tokens_per_s")})
            rows.append(row)
            print(f"{case.label:<40} planned {_gib(row['planned_allocated']):>6} GiB  measured "
                  f"{_gib(row['max_memory_allocated']):>12}")  # fmt: skip
    headline = []
    for model, weights, double_quant in HEADLINE:
        result = plan(model=model, quantization=weights, double_quant=double_quant, **HEADLINE_SETTINGS)
        headline.append({
            "model": model, "weights": weights + (" + double quant" if double_quant else ""),
            "params": result.params_total, "peak_bytes": result.peak_bytes, "fits": result.fits,
            "max_batch_size": result.max_batch_size, "components": result.components, "measured": NOT_MEASURED,
        })  # fmt: skip

    RESULTS.mkdir(exist_ok=True)
    report = markdown(env, counts, rows, headline)
    (RESULTS / "memory_single_gpu.md").write_text(report)
    payload = {"environment": env, "param_counts": counts, "cases": rows, "headline": headline}
    (RESULTS / "memory_single_gpu.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(rows, headline, RESULTS / "memory_single_gpu.png")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
