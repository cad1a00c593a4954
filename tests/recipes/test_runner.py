"""The recipe parser's machine-dependent defaults and old option names (`stackrlhf.recipes.runner`)."""

import warnings

import pytest
import torch
import yaml

from stackrlhf import cli
from stackrlhf.recipes import reward, sft
from stackrlhf.recipes.runner import parse_args, run_recipe


def parsed(args, recipe=sft):
    """The recipe's TRL training arguments, parsed from `args`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers warns when the old name reaches it
        arguments = parse_args(recipe.make_parser(), args)
    return next(each for each in arguments if hasattr(each, "activation_checkpointing"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], False),  # tiny/sft says gradient_checkpointing: false (the old name, in a shipped config)
        (["--gradient_checkpointing", "true"], True),
        (["--gradient_checkpointing"], True),
        (["--activation_checkpointing", "true"], True),
        (["--config", "llama-2-7b/sft", "--bf16", "false"], True),  # the 7B config's old-name key
        (["--config", "llama-2-7b/sft", "--bf16", "false", "--no_gradient_checkpointing"], False),
    ],
)
def test_the_old_checkpointing_name_sets_the_new_one_without_a_warning(args, expected):
    training_args = parsed(args)
    assert training_args.activation_checkpointing is expected
    assert training_args.gradient_checkpointing is expected  # transformers mirrors the old name


def test_an_old_name_in_a_users_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("gradient_checkpointing: true\ngradient_checkpointing_kwargs: {use_reentrant: false}\n")
    training_args = parsed(["--config", str(config)], recipe=reward)
    assert training_args.activation_checkpointing is True
    assert training_args.activation_checkpointing_kwargs == {"use_reentrant": False}


def test_no_pinned_memory_without_a_gpu():
    assert parsed([]).dataloader_pin_memory is False


def test_gloo_for_deepspeed_processes_on_a_cpu(monkeypatch):
    assert parsed([]).ddp_backend is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("WORLD_SIZE", "2")
    parser = sft.make_parser()  # built under the launch's environment, as a launched recipe builds it
    monkeypatch.delenv("WORLD_SIZE")  # parsed without a process group
    assert {action.dest: action.default for action in parser._actions}["ddp_backend"] == "gloo"


@pytest.mark.parametrize(("command", "config"), [("sft", "llama-2-7b/sft"), ("reward", "llama-2-7b/reward"),
                                                 ("dpo", "llama-2-7b/dpo")])  # fmt: skip
def test_dry_run_of_a_bf16_config_works_without_a_gpu(command, config, capsys):
    assert cli.main([command, "--dry_run", "--config", config]) == 0
    training = next(section for name, section in yaml.safe_load(capsys.readouterr().out).items() if "bf16" in section)
    assert training["bf16"] is True  # printed as the config says; the real run checks it where it runs


def test_a_run_sets_the_torch_threads_before_the_recipe_starts(tmp_path):
    seen = []
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        argv = ["--torch_threads", "1", "--output_dir", str(tmp_path)]
        assert run_recipe(sft.make_parser(), lambda *args: seen.append(torch.get_num_threads()), argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert seen == [1]
