import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from stackrlhf.configs import CONFIG_DIR

CONFIGS = CONFIG_DIR / "accelerate"
ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("name", "distributed_type"),
    [
        ("single_gpu", DistributedType.NO),
        ("multi_gpu", DistributedType.MULTI_GPU),
        ("deepspeed_zero2", DistributedType.DEEPSPEED),
        ("deepspeed_zero3", DistributedType.DEEPSPEED),
    ],
)
def test_accelerate_reads_each_config(name, distributed_type):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == distributed_type
    if name.startswith("deepspeed_zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
        assert config.mixed_precision == "no"  # as the recipes' offline defaults train


@pytest.mark.subprocess
def test_recipe_launches_with_the_single_gpu_config(tmp_path):
    """`accelerate launch --config_file ...` runs a recipe (here on the CPU, with --dry_run)."""
    launcher = Path(sys.executable).with_name("accelerate")
    command = [str(launcher), "launch", "--config_file", str(CONFIGS / "single_gpu.yaml"), "--cpu"]
    command += ["recipes/sft_stackllama.py", "--dry_run", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model_name_or_path: stackrlhf/stories260K" in result.stdout
