"""The planner against what really stays alive: `benchmarks/memory_single_gpu.measure(..., track_memory=True)` runs
the project's own steps under `stackrlhf.memory.MemoryTracker`; the plan for the same settings must land within 10%
of the tracked peak, and its transient part (peak above the loaded weights) within 25%.

Narrow models of each MLP kind keep this fast; `benchmarks/memory_depth_sweep.py` does the same at full width."""

from pathlib import Path

import pytest

from stackrlhf.planner import plan
from stackrlhf.planner.configs import load_model_config
from tests.benchmarks.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("memory_single_gpu")


def _narrow(bundled: str, directory: Path, intermediate: int) -> str:
    """`bundled`'s architecture at width 384 (6 heads), 2 blocks and a 2048-token vocabulary."""
    config = load_model_config(bundled)
    for key in ("hidden_size", "n_embd", "word_embed_proj_dim"):
        if hasattr(config, key):
            setattr(config, key, 384)
    for key in ("intermediate_size", "ffn_dim", "n_inner"):
        if hasattr(config, key):
            setattr(config, key, intermediate)
    for key in ("num_attention_heads", "num_key_value_heads", "n_head"):
        if hasattr(config, key):
            setattr(config, key, 6)
    config.num_hidden_layers, config.vocab_size = 2, 2048
    path = directory / bundled.replace("/", "--")
    config.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    ("bundled", "intermediate", "stage", "quantization"),
    [
        ("meta-llama/Llama-2-7b-hf", 1024, "ppo", "8bit"),  # gated SiLU MLP
        ("EleutherAI/gpt-neox-20b", 1536, "ppo", "4bit"),  # gelu_fast written as separate operators
        ("facebook/opt-1.3b", 1536, "ppo", "8bit"),  # fused ReLU
        ("meta-llama/Llama-2-7b-hf", 1024, "sft", "8bit"),
    ],
)
def test_plan_is_within_ten_percent_of_the_tracked_peak(bench, tmp_path, bundled, intermediate, stage, quantization):
    model = _narrow(bundled, tmp_path, intermediate)
    case = bench.Case(model, stage, quantization, batch_size=1, mini_batch_size=1, query_length=48, response_length=16)
    tracked = bench.measure(case, tmp_path / "weights", 0, True, device="cpu", track_memory=True)["tracked"]
    planned = plan(**case.settings, gradient_checkpointing=True, max_batch=False)

    assert planned.peak_allocated_bytes == pytest.approx(tracked["peak_bytes"], rel=0.10)
    transient = tracked["peak_bytes"] - tracked["baseline_bytes"]
    assert max(planned.phases.values()) == pytest.approx(transient, rel=0.25)
