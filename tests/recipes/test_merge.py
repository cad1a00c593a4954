import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
from trl import ModelConfig

from stackrlhf.errors import ConfigError
from stackrlhf.models.loading import load_model
from stackrlhf.recipes import merge, sft
from stackrlhf.recipes.runner import parse_args


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("sft")
    argv = ["--max_steps", "3", "--max_samples", "48", "--eval_samples", "8", "--max_length", "64"]
    sft.main(*parse_args(sft.make_parser(), [*argv, "--output_dir", str(output_dir)]))
    return output_dir


def test_merged_model_computes_what_base_plus_adapter_computes(sft_adapter, tmp_path):
    output_dir = merge.merge_adapter(
        merge.MergeArguments(adapter_path=str(sft_adapter), output_dir=str(tmp_path / "m"))
    )
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".staging-*"))  # no staging directory left behind

    base = load_model(ModelConfig(model_name_or_path="stackrlhf/stories260K"))
    with_adapter = PeftModel.from_pretrained(base, str(sft_adapter)).eval()
    merged = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    input_ids = torch.tensor([[1, 400, 401, 402, 403]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids).logits, with_adapter(input_ids).logits, atol=1e-4, rtol=1e-4)


def test_merge_refuses_to_overwrite_and_to_merge_a_non_adapter(sft_adapter, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        merge.merge_adapter(merge.MergeArguments(adapter_path=str(sft_adapter), output_dir=str(tmp_path / "taken")))
    with pytest.raises(ConfigError, match="not a PEFT adapter"):
        merge.merge_adapter(merge.MergeArguments(adapter_path=str(tmp_path), output_dir=str(tmp_path / "out")))
