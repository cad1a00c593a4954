"""The dpo and grpo plans against what TRL 1.16's own trainers keep alive: two `DPOTrainer` / `GRPOTrainer` steps on a
narrow Llama under `stackrlhf.memory.MemoryTracker`, planned with the same settings.

The plan is for a GPU. On the CPU, TRL's fused LM head folds each logits tile with torch operators instead of a
Triton kernel, which makes a few `(tokens, V)` temporaries more (left out of the tracked peak here: `_gpu_peak`), and
scores every position rather than only the labelled ones (GRPO: a prompt of 2 tokens keeps that difference small).
"""

import pytest
import torch

from stackrlhf.memory import MemoryTracker
from stackrlhf.planner import plan

VOCAB = 512
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}
PLANNED = {"quantization": "none", "lora_r": 8, "lora_target_modules": ["all-linear"], "gradient_checkpointing": True,
           "max_batch": False}  # fmt: skip
"""The plan's side of `LORA` and `TRAINING`: float32 weights, LoRA r=8 on every linear layer, checkpointing."""
TRAINING = {"max_steps": 2, "gradient_checkpointing": True, "bf16": False, "use_cpu": True, "report_to": "none",
            "save_strategy": "no", "logging_steps": 100, "learning_rate": 1e-4}  # fmt: skip


@pytest.fixture(scope="module")
def narrow_llama(tmp_path_factory):
    """A Llama of width 384 (6 heads, feed-forward 1024), 2 blocks and 512 words, random weights, and a word-level
    tokenizer for it: `(model directory, tokenizer, text maker)`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("narrow-llama")
    config = LlamaConfig(hidden_size=384, intermediate_size=1024, num_attention_heads=6, num_key_value_heads=6,
                         num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=2048, pad_token_id=0,
                         eos_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    words = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")
    generator = torch.Generator().manual_seed(0)

    def text(words: int) -> str:
        return " ".join(f"w{int(i)}" for i in torch.randint(2, VOCAB, (words,), generator=generator))

    return directory, tokenizer, text


def _gpu_peak(tracker: MemoryTracker) -> int:
    """The tracked peak without the CPU fallback's `(tokens, V)` temporaries of TRL's fused head."""
    return tracker.peak_without(
        lambda r: r.phase != "baseline" and len(r.shape or ()) == 2 and r.shape[1] == VOCAB and r.shape[0] > 16
    )


def _compare(tracker: MemoryTracker, planned) -> None:
    """Within 10% of the tracked peak; the transient part (peak above the loaded model) within 25%."""
    peak = _gpu_peak(tracker)
    assert planned.peak_allocated_bytes == pytest.approx(peak, rel=0.10)
    assert max(planned.phases.values()) == pytest.approx(peak - tracker.baseline_bytes, rel=0.25)


def test_dpo_plan_is_within_ten_percent_of_a_tracked_dpo_trainer(narrow_llama, tmp_path):
    """2 pairs of 64 tokens per step: 4 sequences through the policy (kept for backward) and the reference."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    directory, tokenizer, text = narrow_llama
    rows = [{"prompt": text(32), "chosen": text(64), "rejected": text(64)} for _ in range(4)]
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32),
        args=DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_length=64, **TRAINING),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )
    with MemoryTracker(roots={"model": trainer.model}) as tracker:
        trainer.train()
    planned = plan(model=str(directory), stage="dpo", batch_size=2, query_length=64, response_length=0, **PLANNED)
    _compare(tracker, planned)


def test_grpo_plan_is_within_ten_percent_of_a_tracked_grpo_trainer(narrow_llama, tmp_path):
    """4 completions of 30 tokens per step (2 prompts of 2 tokens x 2 generations), the reference log-probs at
    beta 0.05. The reward is a Python function here; the plan's reward adapter pass over 4 texts is smaller than its
    reference pass, and its frozen reward adapter (0.5 MB) is the plan's only extra."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    directory, tokenizer, text = narrow_llama
    sizes = {"per_device_train_batch_size": 4, "num_generations": 2, "max_completion_length": 30}
    args = GRPOConfig(
        output_dir=str(tmp_path), generation_kwargs={"min_new_tokens": 30}, beta=0.05, **sizes, **TRAINING
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32),
        reward_funcs=lambda completions, **kwargs: [float(len(completion)) for completion in completions],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": text(2)} for _ in range(8)]),
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )
    with MemoryTracker(roots={"model": trainer.model}) as tracker:
        trainer.train()
    planned = plan(model=str(directory), stage="grpo", batch_size=4, num_generations=2, reward_batch_size=4,
                   query_length=2, response_length=30, **PLANNED)  # fmt: skip
    _compare(tracker, planned)
