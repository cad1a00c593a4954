"""Write value-head checkpoints with TRL 0.11.4 itself, and its forward outputs on them, for
`tests/models/test_modeling_value_head.py` to check that `stackrlhf` loads 0.11.4 checkpoints exactly.

A seeded random tiny GPT-2 (vocab 100, 2 layers, width 32: about 30K parameters) is wrapped in 0.11.4's
`AutoModelForCausalLMWithValueHead` and saved with 0.11.4's `save_pretrained`, in every layout its users have:

    fixtures/trl_checkpoint_base/          the bare GPT-2 (transformers' own save), base of the LoRA checkpoint
    fixtures/trl_checkpoint_plain/         full model + value head: `model.safetensors`, with the value head under
                                           `v_head.summary.weight` / `v_head.summary.bias` in the same file
    fixtures/trl_checkpoint_plain_bin/     the same, `safe_serialization=False`: one `pytorch_model.bin`
    fixtures/trl_checkpoint_plain_sharded/ the same, sharded: `model-0000k-of-0000n.safetensors` + index (Hub-style)
    fixtures/trl_checkpoint_peft/          a LoRA policy: `adapter_config.json` + `adapter_model.safetensors` (adapter
                                           only) + `pytorch_model.bin` (ONLY the value head, a pickled state dict)
    fixtures/trl_checkpoint_outputs.json   0.11.4's `(logits, value)` for the plain and the LoRA model on fixed input
                                           ids, and the base model's logits (the LoRA model with its adapter disabled)

The LoRA adapter's `base_model_name_or_path` is `trl_checkpoint_base`, relative to `fixtures/`: load the LoRA
checkpoint with `fixtures/` as the working directory. Every checkpoint is reloaded with 0.11.4 and checked to give the
recorded outputs before the JSON is written (0.11.4 cannot load a LOCAL sharded checkpoint: it looks for the shards
on the Hub; that layout is only written here).

It must run against the REFERENCE stack, not this project's, in a virtualenv with exactly:

    python -m venv /tmp/trl0114
    /tmp/trl0114/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /tmp/trl0114/bin/pip install trl==0.11.4 transformers==4.46.3 peft==0.13.2 accelerate==1.0.1 datasets==3.1.0

and then, from the repository root:

    /tmp/trl0114/bin/python tests/golden/make_trl_checkpoint.py

It replaces the `fixtures/trl_checkpoint_*` paths it writes (about 500 KB in all) and nothing else. The output is
deterministic for a given torch version; regenerate only when the reference changes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import peft
import torch
import transformers
import trl
from peft import LoraConfig
from transformers import GPT2Config, GPT2LMHeadModel
from trl import AutoModelForCausalLMWithValueHead

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OUTPUTS = FIXTURES / "trl_checkpoint_outputs.json"
BASE, PLAIN, PLAIN_BIN, PLAIN_SHARDED, PEFT = (
    "trl_checkpoint_base",
    "trl_checkpoint_plain",
    "trl_checkpoint_plain_bin",
    "trl_checkpoint_plain_sharded",
    "trl_checkpoint_peft",
)
SEED = 0
# Row 2 is right-padded: its last two positions are masked.
INPUT_IDS = [[5, 17, 42, 8, 99, 3], [61, 2, 30, 77, 0, 0]]
ATTENTION_MASK = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
VALUE_HEAD_BIAS = 0.25  # non-zero, so that loading the bias is checked too
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True, "lora_dropout": 0.0}


def tiny_gpt2() -> GPT2LMHeadModel:
    """A seeded random GPT-2 small enough to commit."""
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(config).eval()


def forward(model: AutoModelForCausalLMWithValueHead) -> dict[str, list]:
    """0.11.4's `(logits, value)` on the fixed inputs, as nested lists."""
    model.eval()
    with torch.no_grad():
        logits, _, value = model(input_ids=torch.tensor(INPUT_IDS), attention_mask=torch.tensor(ATTENTION_MASK))
    return {"logits": logits.tolist(), "value": value.tolist()}


def close(actual: dict[str, list], expected: dict[str, list]) -> bool:
    return all(torch.allclose(torch.tensor(actual[k]), torch.tensor(expected[k]), atol=1e-6) for k in expected)


def main() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    os.chdir(FIXTURES)  # the LoRA adapter records its base by this relative name
    for name in (BASE, PLAIN, PLAIN_BIN, PLAIN_SHARDED, PEFT):
        shutil.rmtree(name, ignore_errors=True)

    tiny_gpt2().save_pretrained(BASE)

    torch.manual_seed(SEED + 1)
    plain = AutoModelForCausalLMWithValueHead.from_pretrained(
        BASE, v_head_init_strategy="normal", v_head_initializer_range=0.5
    )
    plain.v_head.summary.bias.data.fill_(VALUE_HEAD_BIAS)
    plain.save_pretrained(PLAIN)
    plain.save_pretrained(PLAIN_BIN, safe_serialization=False)
    plain.save_pretrained(PLAIN_SHARDED, max_shard_size="60KB")
    plain_outputs = forward(plain)

    torch.manual_seed(SEED + 2)
    # init_lora_weights=False: random A and B, so the adapter changes the logits and loading it is checked.
    lora_config = LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **LORA)
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(
        BASE, peft_config=lora_config, v_head_init_strategy="normal", v_head_initializer_range=0.5
    )
    policy.v_head.summary.bias.data.fill_(-VALUE_HEAD_BIAS)
    Path(PEFT).mkdir()  # 0.11.4 writes the value head's pytorch_model.bin before the adapter creates the directory
    policy.save_pretrained(PEFT)
    peft_outputs = forward(policy)
    with policy.pretrained_model.disable_adapter():
        base_logits = forward(policy)["logits"]

    for name in (PLAIN, PLAIN_BIN):
        reloaded = forward(AutoModelForCausalLMWithValueHead.from_pretrained(name))
        assert close(reloaded, plain_outputs), f"0.11.4 does not reload {name} to the same outputs"
    reloaded = forward(AutoModelForCausalLMWithValueHead.from_pretrained(PEFT))
    assert close(reloaded, peft_outputs), f"0.11.4 does not reload {PEFT} to the same outputs"

    record = {
        "reference": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "torch": torch.__version__,
        },
        "lora": LORA,
        "input_ids": INPUT_IDS,
        "attention_mask": ATTENTION_MASK,
        "plain": plain_outputs,
        "peft": peft_outputs,
        "base_logits": base_logits,
    }
    OUTPUTS.write_text(json.dumps(record) + "\n")
    for path in sorted(FIXTURES.glob("trl_checkpoint_*")):
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        print(f"{path.name}: " + ", ".join(f"{f.name} ({f.stat().st_size} B)" for f in files), file=sys.stderr)


if __name__ == "__main__":
    main()
