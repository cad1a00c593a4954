"""What a finished run leaves behind is safe and portable: no pickle, adapters whose base plain peft loads offline,
files readable as the umask says (safetensors writes owner-only files by itself)."""

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from safetensors import safe_open

from stackrlhf.recipes import ppo, sft
from stackrlhf.recipes.runner import run_recipe
from tests.recipes.test_ppo import QUICK as PPO_QUICK
from tests.recipes.test_sft import QUICK as SFT_QUICK


def is_pickle(path: Path) -> bool:
    """A raw pickle (protocol 2-5: 0x80 then the protocol) or torch's zip format, which holds one (`data.pkl`).
    A safetensors file is read as one (its header length may start with the same byte)."""
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt") as f:
            f.keys()  # raises on anything but safetensors
        return False
    with path.open("rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" and head[1:] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    if head == b"PK" and zipfile.is_zipfile(path):
        return any(name.endswith(".pkl") for name in zipfile.ZipFile(path).namelist())
    return False


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def assert_portable(directory: Path, skip: str | None = None) -> None:
    """No pickle and no owner-only file under `directory`, leaving out the directories named `skip*`."""
    files = [
        path
        for path in directory.rglob("*")
        if path.is_file() and not (skip and any(part.startswith(skip) for part in path.relative_to(directory).parts))
    ]
    assert files
    assert not [path for path in files if is_pickle(path)]
    private = [path for path in files if path.stat().st_mode & 0o044 != 0o044]
    assert not private, f"not readable by group and others under umask 022: {private}"


def test_ppo_outputs_and_checkpoints_hold_no_pickle_and_load_with_plain_peft(tmp_path, reward_dirs, umask_022):
    out = tmp_path / "ppo"
    args = [*PPO_QUICK, "--steps", "8", "--save_steps", "1", "--reward_adapter", str(reward_dirs["adapter"])]
    assert run_recipe(ppo.make_parser(), ppo.main, [*args, "--output_dir", str(out)]) == 0
    assert (out / "checkpoint-1").is_dir()
    assert_portable(out)  # checkpoints included: the RL loop writes safetensors and JSON only

    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_dir()  # the bundled model's converted directory, not a Hub name
    policy = AutoPeftModelForCausalLM.from_pretrained(out)  # HF_HUB_OFFLINE=1 (conftest): nothing from the Hub
    ids = torch.tensor([[1, 346, 306]])
    assert policy(input_ids=ids).logits.shape == (1, 3, policy.config.vocab_size)


def test_sft_final_outputs_hold_no_pickle(tmp_path, umask_022):
    out = tmp_path / "sft"
    args = [*SFT_QUICK, "--save_strategy", "steps", "--save_steps", "2", "--output_dir", str(out)]
    assert run_recipe(sft.make_parser(), sft.main, args) == 0
    assert json.loads((out / "training_args.json").read_text())["max_steps"] == 4
    assert not (out / "training_args.bin").exists()
    # transformers' own checkpoints (optimizer.pt, rng_state.pth, ...) keep the format its resume reads
    assert_portable(out, skip="checkpoint-")
