"""Cost of chatllama's design (separate actor, critic and reward model) against stackrlhf's shared quantized base
(one base carrying the policy LoRA adapter, the value head, the reference = adapter disabled, and a reward adapter).

Both designs run on the same SFT model, reward checkpoint, prompts, batch size, completion length and number of PPO
steps. A step is one rollout of `--batch_size` prompts followed by one update on them, timed in three phases:

- generate: the policy's `generate`;
- score: chatllama = the second actor + critic forward (log-probs, values) and the reward model's forward;
  shared base = `compute_reward_score` (its log-probs, reference log-probs and values are computed inside `step`);
- optimise: chatllama = `learn()` (one epoch, batches of 1 in faithful mode, of `--batch_size` in fixed mode);
  shared base = `PPOTrainer.step` with `ppo_epochs` 1 and the same mini-batch size.

Each design runs in its own process, so its peak memory is its own: on CUDA the allocator's max allocated and
reserved bytes; on CPU the parameter and optimizer-state bytes per role and the process's peak RSS. Without
`--sft_path` / `--reward_path` it uses the PPO demo's cached SFT and reward stages for the tiny model, and otherwise
trains a small SFT adapter (merged into the base) and a reward adapter on that merged base with stackrlhf's recipes;
either way both designs score with the same reward function.

    python benchmarks/compare_chatllama.py --mode faithful --steps 5 --batch_size 4
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module machine

RESULTS = Path(__file__).parent / "results"
PHASES = ("generate", "score", "optimise")


@dataclass
class BenchmarkArguments:
    mode: str = field(
        default="faithful", metadata={"help": "chatllama mode: faithful or fixed.", "choices": ["faithful", "fixed"]}
    )
    model: str = field(default="stackrlhf/stories260K", metadata={"help": "Base model of the SFT and reward stages."})
    steps: int = field(default=5, metadata={"help": "PPO steps per design; the first is a warm-up, not timed."})
    batch_size: int = field(default=4, metadata={"help": "Prompts per rollout (and PPO batch)."})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available), cpu or cuda."})
    sft_path: str | None = field(default=None, metadata={"help": "SFT adapter or merged model; default: train one."})
    reward_path: str | None = field(
        default=None, metadata={"help": "Reward LoRA adapter (on the SFT model as base); default: train one."}
    )
    max_new_tokens: int = field(default=24, metadata={"help": "Most new tokens per completion."})
    max_prompt_tokens: int = field(default=64, metadata={"help": "Only prompts up to this many tokens are used."})
    head_hidden_size: int = field(default=2048, metadata={"help": "chatllama's reward/critic head width."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Actor (policy) learning rate of both designs."})
    critic_lr: float = field(default=1e-4, metadata={"help": "chatllama's critic learning rate."})
    actor_lora: bool = field(
        default=False, metadata={"help": "chatllama: LoRA on the actor (r 8, alpha 32); its default is off."}
    )
    shared_fp32_row: bool = field(
        default=True, metadata={"help": "Also run the shared base unquantized (bitsandbytes int8 is slow on CPU)."}
    )
    prep_steps: int = field(default=20, metadata={"help": "Training steps of the SFT and reward stages it runs."})
    work_dir: str | None = field(default=None, metadata={"help": "Where checkpoints go; default: a temporary dir."})
    output_dir: str = field(default=str(RESULTS), metadata={"help": "Where compare_chatllama.{md,json,png} go."})
    seed: int = field(default=0, metadata={"help": "Seed of both designs."})
    worker: str | None = field(default=None, metadata={"help": "Internal: run one design from a spec file."})


# ----------------------------------------------------------------------------------------------- preparation


def prepare_checkpoints(args: BenchmarkArguments, work_dir: Path) -> tuple[str, str]:
    """(merged SFT model directory, reward adapter directory). Not given: for the tiny model, the PPO demo's own cached
    stages (`stackrlhf stages`), so the comparison uses the pipeline's checkpoints; for other models, quick ones."""
    from stackrlhf.models.bundled import TINY_MODEL
    from stackrlhf.models.loading import read_adapter
    from stackrlhf.recipes.stages import offline_stages

    if args.model == TINY_MODEL and args.sft_path is None and args.reward_path is None:
        stages = offline_stages()
        return str(stages.sft_merged), str(stages.reward_adapter)
    from stackrlhf.recipes import reward, sft
    from stackrlhf.recipes.merge import MergeArguments, merge_adapter
    from stackrlhf.recipes.runner import parse_args

    quick = [
        "--max_steps",
        str(args.prep_steps),
        "--max_samples",
        "400",
        "--eval_samples",
        "16",
        "--logging_steps",
        "1000",
    ]
    sft_path = args.sft_path
    if sft_path is None:
        sft_path = str(work_dir / "sft")
        sft.train_sft(
            *parse_args(sft.make_parser(), [*quick, "--model_name_or_path", args.model, "--output_dir", sft_path])[:3]
        )
    if read_adapter(sft_path) is not None:
        merged = work_dir / "sft_merged"
        sft_path = str(merge_adapter(MergeArguments(adapter_path=sft_path, output_dir=str(merged), overwrite=True)))
    reward_path = args.reward_path
    if reward_path is None:
        reward_path = str(work_dir / "reward")
        reward.train_reward_model(
            *parse_args(reward.make_parser(), [*quick, "--model_name_or_path", sft_path, "--output_dir", reward_path])[
                :3
            ]
        )
    return sft_path, reward_path


def select_prompts(args: BenchmarkArguments, model_path: str) -> list[str]:
    """`steps x batch_size` bundled-data prompts of at most `max_prompt_tokens` tokens, the same for both designs."""
    from trl import ModelConfig

    from stackrlhf.chatllama.prompts import load_prompts
    from stackrlhf.data import DataArguments, prompts_within
    from stackrlhf.models.loading import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=model_path))
    prompts = prompts_within(load_prompts(DataArguments(eval_samples=16)), tokenizer, args.max_prompt_tokens)
    needed = args.steps * args.batch_size
    if len(prompts) < needed:
        raise SystemExit(f"only {len(prompts)} prompts of <= {args.max_prompt_tokens} tokens; {needed} needed")
    return prompts[:needed]


# --------------------------------------------------------------------------------------------------- workers


def run_chatllama(spec: dict) -> dict:
    """chatllama-style trainer: rollout + learn() per step."""
    import torch

    from stackrlhf.chatllama import ChatLlamaConfig, ChatLlamaTrainer
    from stackrlhf.chatllama.models import cut_after_eos

    args, batch = spec["args"], spec["args"]["batch_size"]
    config = ChatLlamaConfig.from_dict(
        {
            "trainer_config": {
                "mode": args["mode"],
                "actor_lr": args["learning_rate"],
                "critic_lr": args["critic_lr"],
                "num_episodes": args["steps"],
                "max_timesteps": 1,
                "update_timesteps": 1,
                "num_examples": batch,
                "batch_size": 1 if args["mode"] == "faithful" else batch,
                "device": args["device"],
                "seed": args["seed"],
            },
            "actor_config": {
                "model": spec["sft_path"],
                "max_sequence_length": spec["context_length"],
                "max_tokens": args["max_new_tokens"],
                "min_tokens": 1,
                "temperature": 1.0,
                "peft_enable": args["actor_lora"],
            },
            "reward_config": {
                "model": spec["reward_path"],
                "model_head_hidden_size": args["head_hidden_size"],
                "max_sequence_length": spec["context_length"],
            },
            "critic_config": {
                "model_head_hidden_size": args["head_hidden_size"],
                "max_sequence_length": spec["context_length"],
            },
        }
    )
    memory_before = reset_peak_memory()
    trainer = ChatLlamaTrainer(config, spec["prompts"])
    eos_id = trainer.tokenizer.eos_token_id
    steps = []
    for prompts in chunks(spec["prompts"], batch):
        memories = trainer.make_experience(prompts)
        trainer.learn(memories)
        lengths = [len(cut_after_eos(m.actions, eos_id)) for m in memories]
        rewards = [float(m.rewards[n - 1]) for m, n in zip(memories, lengths, strict=True)]
        steps.append({**trainer.timer.take(), "tokens": sum(lengths), "mean_reward": statistics.mean(rewards)})
    actorcritic = trainer.actorcritic
    roles = {
        "actor": tensor_bytes(actorcritic.actor.parameters()),
        "critic": tensor_bytes(actorcritic.critic.parameters()),
        "reward": tensor_bytes(trainer.reward.parameters()),
        "actor optimizer": optimizer_bytes(trainer.actor_optimizer),
        "critic optimizer": optimizer_bytes(trainer.critic_optimizer),
    }
    precision = f"fp32 x3{' + LoRA actor' if args['actor_lora'] else ''}"
    return finish("chatllama", precision, steps, roles, memory_before, torch)


def run_shared_base(spec: dict) -> dict:
    """stackrlhf's classic API: one base, policy LoRA + value head, reference = adapter off, reward adapter."""
    import torch
    from peft import LoraConfig
    from trl import ModelConfig

    from stackrlhf import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
    from stackrlhf.models.loading import load_tokenizer

    args, batch = spec["args"], spec["args"]["batch_size"]
    memory_before = reset_peak_memory()
    torch.manual_seed(args["seed"])
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=spec["sft_path"]))
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        spec["sft_path"],
        peft_config=LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.1),
        reward_adapter=spec["reward_path"],
        load_in_8bit=spec["shared_8bit"],
    )
    device = torch.device("cuda" if args["device"] in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if not spec["shared_8bit"]:
        model.to(device)
    mini_batch = 1 if args["mode"] == "faithful" else batch
    config = PPOConfig(
        batch_size=batch,
        mini_batch_size=mini_batch,
        ppo_epochs=1,
        learning_rate=args["learning_rate"],
        seed=args["seed"],
    )
    ppo = PPOTrainer(config, model, None, tokenizer)
    decoding = (
        {"do_sample": False, "no_repeat_ngram_size": 3}
        if args["mode"] == "faithful"
        else {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    )
    generation = {"max_new_tokens": args["max_new_tokens"], "pad_token_id": tokenizer.pad_token_id, **decoding}
    timer = phase_timer()
    steps = []
    for prompts in chunks(spec["prompts"], batch):
        queries = [tokenizer(p, return_tensors="pt")["input_ids"][0].to(ppo.accelerator.device) for p in prompts]
        with timer("generate"):
            responses = ppo.generate(queries, return_prompt=False, batch_size=batch, **generation)
        with timer("score"):
            texts = [torch.cat([q, r]) for q, r in zip(queries, responses, strict=True)]
            inputs = tokenizer.pad({"input_ids": texts}, padding=True, return_tensors="pt").to(ppo.accelerator.device)
            last = inputs["attention_mask"].sum(-1) - 1
            scores = model.compute_reward_score(**inputs)[torch.arange(len(texts)), last, 0]
        with timer("optimise"):
            ppo.step(queries, list(responses), list(scores.float()))
        steps.append({**timer.take(), "tokens": sum(len(r) for r in responses), "mean_reward": scores.mean().item()})
    params = dict(model.named_parameters())
    roles = {
        "base (policy + reference + reward)": tensor_bytes(
            p for n, p in params.items() if "lora_" not in n and "v_head" not in n
        ),
        "policy adapter": tensor_bytes(p for n, p in params.items() if "lora_" in n and ".default" in n),
        "reward adapter + score": tensor_bytes(p for n, p in params.items() if "lora_" in n and ".default" not in n)
        + tensor_bytes(model.score.parameters()),
        "value head": tensor_bytes(model.v_head.parameters()),
        "optimizer": optimizer_bytes(ppo.optimizer),
    }
    precision = f"{'int8' if spec['shared_8bit'] else 'fp32'} base + LoRA"
    return finish("shared_base", precision, steps, roles, memory_before, torch)


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def phase_timer():
    from stackrlhf.chatllama.timing import PhaseTimer

    return PhaseTimer()


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_bytes(optimizer) -> int:
    import torch

    return sum(
        v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )


def process_memory(field_name: str = "VmRSS") -> int:
    """A /proc/self/status memory field in bytes: VmRSS (resident now) or VmHWM (peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_memory() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) so it excludes the imports; return the RSS now, in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return process_memory()


def finish(design: str, precision: str, steps: list[dict], roles: dict, memory_before: int, torch) -> dict:
    """Per-step phase seconds averaged over the timed steps (all but the first), memory and rewards."""
    timed = steps[1:] or steps
    seconds = {phase: statistics.mean(s[phase] for s in timed) for phase in PHASES}
    total = sum(seconds.values())
    memory = {"roles_bytes": roles, "model_and_optimizer_bytes": sum(roles.values())}
    memory["peak_rss_bytes"] = process_memory("VmHWM")
    memory["rss_before_models_bytes"] = memory_before
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        memory["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        memory["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return {
        "design": design,
        "precision": precision,
        "seconds_per_step": {**seconds, "total": total},
        "tokens_per_second": statistics.mean(s["tokens"] for s in timed) / total,
        "mean_reward_per_step": [s["mean_reward"] for s in steps],
        "memory": memory,
        "steps": steps,
    }


# ---------------------------------------------------------------------------------------------------- report


def machine(load_at_start: tuple[float, float, float]) -> dict:
    """The machine, library versions and the load averages (1, 5, 15 min) at the start and end of the run."""
    import bitsandbytes
    import peft
    import torch
    import transformers
    import trl
    from machine import cpu_name

    info = {
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "load_average_start": list(load_at_start),
        "load_average_end": list(os.getloadavg()),
    }
    for module in (torch, transformers, trl, peft, bitsandbytes):
        info[module.__name__] = module.__version__
    return info


def _load(machine_info: dict, when: str) -> str:
    return " / ".join(f"{x:.2f}" for x in machine_info.get(f"load_average_{when}", [])) or "not recorded"


def mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def write_report(result: dict, output_dir: Path) -> str:
    rows = result["rows"]
    on_gpu = any("cuda_max_allocated_bytes" in r["memory"] for r in rows)
    memory_cols = (
        "CUDA max allocated / reserved MiB"
        if on_gpu
        else "params + optimizer MiB | peak RSS MiB (+ above pre-model RSS)"
    )
    lines = [
        f"| design | precision | generate s | score s | optimise s | total s/step | tokens/s | {memory_cols} | "
        "mean reward (first -> last step) |",
    ]
    lines.append("|" + "---|" * (lines[0].count("|") - 1))
    for r in rows:
        s, m = r["seconds_per_step"], r["memory"]
        memory = (
            f"{mib(m['cuda_max_allocated_bytes'])} / {mib(m['cuda_max_reserved_bytes'])}"
            if on_gpu
            else f"{mib(m['model_and_optimizer_bytes'])} | {mib(m['peak_rss_bytes'])} "
            f"(+{mib(m['peak_rss_bytes'] - m['rss_before_models_bytes'])})"
        )
        rewards = r["mean_reward_per_step"]
        lines.append(
            f"| {r['design']} | {r['precision']} | {s['generate']:.3f} | {s['score']:.3f} | {s['optimise']:.3f} | "
            f"{s['total']:.3f} | {r['tokens_per_second']:.1f} | {memory} | {rewards[0]:.3f} -> {rewards[-1]:.3f} |"
        )
    table = "\n".join(lines)
    roles = "\n".join(
        f"- {r['design']}: " + ", ".join(f"{k} {mib(v)} MiB" for k, v in r["memory"]["roles_bytes"].items())
        for r in rows
    )
    m, a = result["machine"], result["args"]
    header = (
        f"# chatllama-style actor/critic vs stackrlhf shared base\n\n"
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores ({m['torch_threads']} torch threads), GPU: {m['gpu']}; "
        f"torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, peft {m['peft']}, "
        f"bitsandbytes {m['bitsandbytes']}. Load average (1/5/15 min) {_load(m, 'start')} at the start, "
        f"{_load(m, 'end')} at the end: other jobs sharing the cores lengthen every phase.\n\n"
        f"Model {a['model']} (SFT merged), mode {a['mode']}, {a['steps']} steps of {a['batch_size']} prompts "
        f"(<= {a['max_prompt_tokens']} tokens), <= {a['max_new_tokens']} new tokens; seconds are means over steps "
        f"2..{a['steps']}; tokens/s = generated tokens / total seconds per step.\n\n"
    )
    notes = (
        "\n\nBytes per role:\n" + roles + "\n\n"
        "chatllama holds three models (actor, critic = reward-model copy, reward), each with its own weights, and two "
        "Adam optimizers; the shared base holds one base for policy, reference and reward, with two small adapters "
        "and a value head. Peak RSS is measured after the imports (VmHWM reset) and includes the Python/torch runtime "
        "(RSS before loading models: "
        + ", ".join(f"{r['design']} {mib(r['memory']['rss_before_models_bytes'])} MiB" for r in rows)
        + "). Each step uses different prompts, so the reward curve mostly shows the prompts, not learning; the first "
        "step's prompts and (in faithful mode, greedy) completions are the same for every design.\n"
    )
    text = header + table + notes
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "compare_chatllama.md").write_text(text)
    (output_dir / "compare_chatllama.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, output_dir / "compare_chatllama.png")
    return table


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [f"{r['design']}\n{r['precision']}" for r in rows]
    fig, (time_ax, memory_ax, reward_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    bottom = [0.0] * len(rows)
    for phase in PHASES:
        values = [r["seconds_per_step"][phase] for r in rows]
        time_ax.bar(names, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    time_ax.set(title="seconds per PPO step", ylabel="s")
    time_ax.legend()
    on_gpu = all("cuda_max_allocated_bytes" in r["memory"] for r in rows)
    key = "cuda_max_allocated_bytes" if on_gpu else "model_and_optimizer_bytes"
    memory_ax.bar(names, [r["memory"][key] / 2**20 for r in rows])
    memory_ax.set(title="CUDA max allocated" if on_gpu else "parameters + optimizer state", ylabel="MiB")
    for r in rows:
        reward_ax.plot(
            range(1, len(r["mean_reward_per_step"]) + 1), r["mean_reward_per_step"], marker="o", label=r["design"]
        )
    reward_ax.set(title="mean reward per step", xlabel="step")
    reward_ax.legend()
    fig.suptitle(f"chatllama ({result['args']['mode']}) vs shared base, {result['args']['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict | None:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        runner = run_chatllama if spec["design"] == "chatllama" else run_shared_base
        Path(spec["result_path"]).write_text(json.dumps(runner(spec)))
        return None

    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        work_dir = Path(args.work_dir or scratch)
        sft_path, reward_path = prepare_checkpoints(args, work_dir)
        from transformers import AutoConfig

        context = AutoConfig.from_pretrained(sft_path).max_position_embeddings
        prompts = select_prompts(args, sft_path)
        runs = [("chatllama", False), ("shared_base", True)] + (
            [("shared_base", False)] if args.shared_fp32_row else []
        )
        rows = []
        for index, (design, shared_8bit) in enumerate(runs):
            spec_path, result_path = work_dir / f"{index}.spec.json", work_dir / f"{index}.result.json"
            spec = {
                "design": design,
                "shared_8bit": shared_8bit,
                "args": asdict(args),
                "sft_path": sft_path,
                "reward_path": reward_path,
                "context_length": context,
                "prompts": prompts,
                "result_path": str(result_path),
            }
            spec_path.write_text(json.dumps(spec))
            subprocess.run([sys.executable, __file__, "--worker", str(spec_path)], check=True)
            rows.append(json.loads(result_path.read_text()))
    result = {"machine": machine(load_at_start), "args": asdict(args), "rows": rows}
    table = write_report(result, Path(args.output_dir))
    print(table)
    return result


if __name__ == "__main__":
    main()
