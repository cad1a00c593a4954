"""The recipes' start-up verdict: fits, or will not fit and what to lower; never stops training."""

import logging
import re

import pytest
import torch

from stackrlhf.planner import plan
from stackrlhf.planner.estimate import GIB
from stackrlhf.planner.recipe_config import settings_from_arguments
from stackrlhf.planner.verdict import plan_verdict, report_memory_plan

NEOX = ["--model_name_or_path", "EleutherAI/gpt-neox-20b", "--load_in_8bit", "--dtype", "float16"]
NEOX += ["--upcast_non_quantized", "false", "--lora_target_modules", "query_key_value"]
NEOX += ["--batch_size", "64", "--mini_batch_size", "16", "--generation_batch_size", "16"]
NEOX += ["--output_min_length", "4", "--output_max_length", "64", "--max_prompt_length", "64"]


def _arguments(recipe, argv):
    """The recipe's parsed dataclasses, without the recipes' validation (the verdict must cope with runs it would
    refuse, e.g. a model path that does not exist)."""
    from stackrlhf.recipes import ppo, sft

    module = {"ppo": ppo, "sft": sft}[recipe]
    parser = module.make_parser()
    arguments = parser.parse_args_and_config([*argv, *(["--bf16", "false"] if recipe == "sft" else [])])
    return arguments[1:5] if recipe == "ppo" else arguments[1:3]  # what the recipes pass: no data or run options


@pytest.fixture(scope="module")
def neox_ppo():
    return _arguments("ppo", NEOX)


def test_fits(neox_ppo):
    line = plan_verdict("ppo", *neox_ppo, device_bytes=80 * GIB)
    assert re.fullmatch(r"memory plan: fits \(planned peak \d+\.\d\d GiB of 80\.00 GiB\)", line)


def test_will_not_fit_names_what_to_lower_and_each_suggestion_fits(neox_ppo):
    settings = settings_from_arguments("ppo", *neox_ppo).settings
    card_gb = plan(settings, max_batch=False).peak_bytes / GIB - 0.5  # half a GiB short
    line = plan_verdict("ppo", *neox_ppo, device_bytes=int(card_gb * GIB))
    assert line.startswith("memory plan: will not fit (planned peak ") and f"of {card_gb:.2f} GiB): lower " in line
    suggested = {name: int(value) for name, value in re.findall(r"(\w+) to (\d+)", line)}
    assert suggested and set(suggested) <= {"mini_batch_size", "generation_batch_size", "output_max_length"}
    as_setting = {"output_max_length": ("response_length", -1)}  # the plan counts output_max_length - 1 tokens
    for name, value in suggested.items():
        field, offset = as_setting.get(name, (name, 0))
        if name == "mini_batch_size":
            assert 64 % value == 0  # PPOConfig: batch_size a multiple of mini_batch_size
        assert plan(settings, gpu_memory_gb=card_gb, max_batch=False, **{field: value + offset}).fits, name
        bigger = value * 2 if name == "mini_batch_size" else value + 1
        assert not plan(settings, gpu_memory_gb=card_gb, max_batch=False, **{field: bigger + offset}).fits, name


def test_will_not_fit_suggests_switches_and_combines_them_when_nothing_alone_helps():
    llama = ["--model_name_or_path", "meta-llama/Llama-2-7b-hf", "--dtype", "bfloat16"]
    arguments = _arguments("sft", [*llama, "--gradient_checkpointing", "true"])
    line = plan_verdict("sft", *arguments, device_bytes=12 * GIB)
    assert line.startswith("memory plan: will not fit") and line.endswith("): use load_in_8bit")  # 12.6 GiB weights
    arguments = _arguments("sft", llama)  # the recipe's defaults: batch 8 of 256 tokens, no checkpointing
    line = plan_verdict("sft", *arguments, device_bytes=16 * GIB)
    assert "lower per_device_train_batch_size to 1 or max_length to " in line
    assert line.endswith(", or set gradient_checkpointing true")
    line = plan_verdict("sft", *arguments, device_bytes=12 * GIB)
    assert re.search(r"\): use load_in_8bit and lower per_device_train_batch_size to \d+ or max_length to \d+$", line)


def test_report_memory_plan_only_on_cuda(capsys, neox_ppo):
    assert report_memory_plan("ppo", *neox_ppo) is None or torch.cuda.is_available()
    line = report_memory_plan("ppo", *neox_ppo, device_bytes=80 * GIB)
    assert line.startswith("memory plan: fits") and capsys.readouterr().out == line + "\n"


def test_report_memory_plan_only_on_the_first_process_of_a_node(monkeypatch, neox_ppo):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert report_memory_plan("ppo", *neox_ppo, device_bytes=80 * GIB) is None


def test_a_planner_failure_never_stops_training(caplog, capsys):
    arguments = _arguments("sft", ["--model_name_or_path", "/no/such/model"])
    with caplog.at_level(logging.WARNING):
        assert report_memory_plan("sft", *arguments, device_bytes=GIB) is None
    assert "memory plan: skipped" in caplog.text and "/no/such/model" in caplog.text
    assert capsys.readouterr().out == ""
