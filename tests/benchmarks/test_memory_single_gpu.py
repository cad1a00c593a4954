"""benchmarks/memory_single_gpu.py's measuring code, run on the CPU with a tiny GPT-2: the GPU path's model loading
(LoRA, bitsandbytes 8-bit / 4-bit), SFT and reward steps, and the PPO step through `stackrlhf.PPOTrainer`, all with
gradient checkpointing on (as the planner asks for most cases)."""

import pytest
import torch

from tests.benchmarks.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("memory_single_gpu")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny GPT-2 config (no pad token id, as gpt2's) in a local directory, which `Case.model` accepts."""
    from transformers import GPT2Config

    path = tmp_path_factory.mktemp("tiny") / "gpt2-tiny"
    GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("quantization", ["none", "bf16", "8bit", "4bit"])
@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_measure_runs_a_step_on_cpu(bench, tiny_model, tmp_path_factory, monkeypatch, stage, quantization):
    import bitsandbytes as bnb

    import stackrlhf

    models = []
    load = bench._load
    monkeypatch.setattr(bench, "_load", lambda *args: models.append(load(*args)) or models[-1])

    class RecordingPPOTrainer(stackrlhf.PPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            models.append(self.model)

    monkeypatch.setattr(stackrlhf, "PPOTrainer", RecordingPPOTrainer)
    case = bench.Case(tiny_model, stage, quantization, batch_size=2, mini_batch_size=1, query_length=8,
                      response_length=8, lora_r=4)  # fmt: skip
    result = bench.measure(case, tmp_path_factory.getbasetemp() / "models", 1, checkpointing=True, device="cpu")

    assert result["max_memory_allocated"] is None and result["max_memory_reserved"] is None
    assert result["seconds_per_step"] > 0 and result["train_tokens_per_s"] > 0
    if stage == "ppo":
        assert result["generation_tokens_per_s"] > 0
    else:
        assert result["generation_tokens_per_s"] is None
    (model,) = models
    assert model.is_gradient_checkpointing
    quantized = {type(m) for m in model.modules() if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))}
    assert quantized == {"8bit": {bnb.nn.Linear8bitLt}, "4bit": {bnb.nn.Linear4bit}}.get(quantization, set())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and sum(p.numel() for p in trainable) < sum(p.numel() for p in model.parameters())
    assert all(p.device == torch.device("cpu") for p in model.parameters())
