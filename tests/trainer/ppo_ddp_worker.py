"""Worker for tests/trainer/test_ppo_distributed.py: two PPO steps of the tiny model under `torchrun` (gloo on CPU).

Each rank writes its final statistics and value-head weights to `<output_dir>/rank<N>.json`.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from stackrlhf import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from stackrlhf.models.bundled import TINY_MODEL, resolve_model_name_or_path


def main(output_dir: Path) -> None:
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name_or_path(TINY_MODEL))
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=1, ppo_epochs=2), model, None, tokenizer)
    rank = trainer.accelerator.process_index
    texts = ["Once upon a time" + " there" * rank, "Lily"]  # ranks hold different lengths: padding across processes
    queries = [tokenizer.encode(text, return_tensors="pt")[0] for text in texts]
    greedy = {"do_sample": False, "max_new_tokens": 4 + rank, "pad_token_id": tokenizer.pad_token_id}
    responses = trainer.generate(queries, return_prompt=False, **greedy)
    for _ in range(2):
        stats = trainer.step(queries, responses, [torch.tensor(1.0 + rank), torch.tensor(-1.0)])
    v_head = trainer.accelerator.unwrap_model(trainer.model).v_head.summary.weight
    result = {
        "world_size": trainer.accelerator.num_processes,
        "mean_scores": float(stats["ppo/mean_scores"]),
        "kl": float(stats["objective/kl"]),
        "v_head": v_head.detach().flatten().tolist(),
    }
    (output_dir / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
