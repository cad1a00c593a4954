"""Two machines, simulated on this one: two `torchrun --nnodes 2 --nproc_per_node 1` launches (one per node rank,
rendezvous on 127.0.0.1, gloo on CPU) train one PPO run together into one output directory, as on a shared file
system: one stats.jsonl holding both ranks' rewards, identical weights on both ranks, and a resume from the run's
checkpoint that ends where the uninterrupted run does."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stackrlhf.models.bundled import TINY_MODEL
from stackrlhf.trainer.reporting import STATS_FILE, SUMMARY_FILE, read_stats

pytestmark = pytest.mark.subprocess

WORKER = Path(__file__).with_name("ppo_node_worker.py")
QUICK = [
    "--model_name_or_path", TINY_MODEL, "--steps", "8", "--batch_size", "2", "--mini_batch_size", "1",
    "--ppo_epochs", "1", "--output_min_length", "4", "--output_max_length", "8", "--max_prompt_length", "64",
    "--max_samples", "100", "--eval_samples", "20", "--num_sample_prompts", "1", "--sample_max_new_tokens", "4",
    "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--save_steps", "2",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_nodes(out: Path, weights: Path, reward_adapter: Path, *extra: str) -> list[str]:
    """Start both nodes' launches at once, wait for both; returns each node's stdout."""
    weights.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    args = [*QUICK, "--reward_adapter", str(reward_adapter), "--output_dir", str(out), *extra]
    nodes = []
    for node_rank in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
        command += ["--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", port]
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}  # each node's own environment
        command += [str(WORKER), str(weights), *args]
        nodes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for node in nodes:
            stdout, stderr = node.communicate(timeout=400)
            assert node.returncode == 0, stderr[-3000:]
            outputs.append(stdout)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    return outputs


def same_weights(weights: Path) -> dict[str, torch.Tensor]:
    rank0, rank1 = (load_file(weights / f"rank{rank}.safetensors") for rank in (0, 1))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank1[name], rank0[name], rtol=0, atol=0)
    return rank0


def comparable(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds" and not k.startswith("time/")} for r in read_stats(path)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, reward_dirs):
    root = tmp_path_factory.mktemp("two-nodes")
    outputs = run_two_nodes(root / "out", root / "weights", reward_dirs["adapter"])
    return root, outputs


def test_two_nodes_train_one_run(full_run):
    root, (node0, node1) = full_run
    out = root / "out"
    assert node0.count("PPO done") == 1 and "PPO done" not in node1  # one run, reported by rank 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["processes"] == 2 and summary["steps"] == 8 // 2
    assert [r["samples"] for r in read_stats(out / STATS_FILE)] == [4] * 4  # both ranks' 2 rewards per step
    assert sorted(path.name for path in out.glob("**/" + STATS_FILE)) == [STATS_FILE]
    checkpoint = out / "checkpoint-2"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
    assert (checkpoint / "rng_state_0.json").is_file() and (checkpoint / "rng_state_1.json").is_file()
    weights = same_weights(root / "weights")  # gradients all-reduced across the nodes
    saved = load_file(out / "adapter_model.safetensors")
    trained = [name for name in weights if "lora_B" in name]
    assert trained and all(weights[name].abs().sum() > 0 for name in trained)
    assert len(saved) == len(trained) * 2  # lora_A and lora_B of each module, as rank 0 saved them


def test_two_nodes_resume_from_the_runs_checkpoint(full_run, reward_dirs, tmp_path):
    """Keep what a run killed after step 2's checkpoint would have left, resume on both nodes, compare the ends."""
    root, _ = full_run
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(root / "out" / "checkpoint-2", cut / "checkpoint-2")
    shutil.copy(root / "out" / "samples.json", cut / "samples.json")
    (cut / STATS_FILE).write_text("".join(json.dumps(r) + "\n" for r in read_stats(root / "out" / STATS_FILE)[:2]))
    run_two_nodes(cut, tmp_path / "weights", reward_dirs["adapter"], "--resume_from_checkpoint", "latest")
    assert comparable(cut / STATS_FILE) == comparable(root / "out" / STATS_FILE)
    resumed, expected = same_weights(tmp_path / "weights"), load_file(root / "weights" / "rank0.safetensors")
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0)
