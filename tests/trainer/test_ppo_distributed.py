import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess


def test_two_process_ppo_keeps_ranks_in_sync(tiny_model_dir, tmp_path):
    """Two CPU processes (torchrun, gloo): gradients and statistics are averaged over ranks."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("ppo_ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port
    command += [str(worker), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["v_head"] == rank1["v_head"]  # DDP averaged the gradients: identical weights
    assert rank0["mean_scores"] == rank1["mean_scores"] == pytest.approx(0.25)  # ((1 - 1) / 2 + (2 - 1) / 2) / 2
    assert rank0["kl"] == rank1["kl"]
