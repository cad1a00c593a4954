"""Experiment trackers of the PPO recipes (`--log_with`): every tracker accelerate supports is listed in `--help`,
tensorboard logs under `<output_dir>/runs` without further options, and a tracker whose package is missing (or an
unknown one) is one line before anything loads."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stackrlhf.models.bundled import TINY_MODEL
from stackrlhf.recipes import ppo, sentiment
from stackrlhf.recipes.runner import parse_args, run_recipe
from stackrlhf.trainer import ppo_config
from stackrlhf.trainer.ppo_config import TRACKERS, PPOConfig, set_default_logging_dir
from stackrlhf.trainer.reporting import STATS_FILE, read_stats
from stackrlhf.trainer.rl_loop import RLLoopArguments

QUICK = [
    "--model_name_or_path", TINY_MODEL, "--steps", "6", "--batch_size", "2", "--mini_batch_size", "1",
    "--ppo_epochs", "1", "--output_min_length", "4", "--output_max_length", "8", "--max_prompt_length", "64",
    "--max_samples", "100", "--eval_samples", "20", "--num_sample_prompts", "1", "--sample_max_new_tokens", "4",
    "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
]  # fmt: skip


@pytest.mark.parametrize("recipe", [ppo, sentiment])
def test_help_lists_every_tracker_accelerate_supports(recipe):
    assert set(TRACKERS) >= {"tensorboard", "wandb", "mlflow", "comet_ml", "aim"}
    help_text = " ".join(recipe.make_parser().format_help().split())
    assert "--log_with {" + ",".join(TRACKERS) + "}" in help_text
    assert "one of " + ", ".join(TRACKERS) in help_text and "<output_dir>/runs" in help_text


def test_tensorboard_logs_every_step_under_output_dir(tmp_path, reward_dirs, capsys):
    out = tmp_path / "run"
    argv = [*QUICK, "--reward_adapter", str(reward_dirs["adapter"]), "--output_dir", str(out), "--log_with"]
    assert run_recipe(ppo.make_parser(), ppo.main, [*argv, "tensorboard"]) == 0
    assert "PPO done" in capsys.readouterr().out
    (run_dir,) = (out / "runs").iterdir()  # <output_dir>/runs/<tracker_project_name>
    assert run_dir.name == "trl"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    rewards = [(event.step, event.value) for event in events.Scalars("env/reward_mean")]
    stats = read_stats(out / STATS_FILE)
    assert [step for step, _ in rewards] == [1, 2, 3]
    assert [value for _, value in rewards] == pytest.approx([record["reward_mean"] for record in stats], abs=1e-6)
    assert {"objective/kl", "ppo/loss/total"} <= set(events.Tags()["scalars"])


@pytest.mark.parametrize("tracker", ["wandb", "tensorboard"])
def test_a_tracker_without_its_package_is_one_line(tracker, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ppo_config, "get_available_trackers", list)  # none installed
    out = tmp_path / "run"
    assert run_recipe(ppo.make_parser(), ppo.main, ["--output_dir", str(out), "--log_with", tracker]) == 2
    line = f"error: log_with='{tracker}' needs the {tracker} package: pip install {tracker}.\n"
    assert capsys.readouterr().err == line
    assert not out.exists()


def test_an_unknown_tracker_is_one_line(capsys):
    assert run_recipe(ppo.make_parser(), ppo.main, ["--log_with", "tensorbored"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'tensorbored'" in err and "tensorboard" in err
    with pytest.raises(ValueError, match="^log_with='neptune' is not one of aim, "):
        PPOConfig(log_with="neptune")  # set in code or a config file, past argparse's choices


def test_default_logging_dir_is_under_output_dir_unless_one_is_given(tmp_path):
    parser = ppo.make_parser()
    _, config, *_, loop = parse_args(parser, ["--log_with", "tensorboard", "--output_dir", str(tmp_path / "a")])
    assert config.project_kwargs == {"logging_dir": str(tmp_path / "a" / "runs")}
    for given in ({"logging_dir": "/logs"}, {"project_dir": "/project"}):
        config = PPOConfig(log_with="tensorboard", project_kwargs=given)
        set_default_logging_dir([config, RLLoopArguments(output_dir=str(tmp_path))])
        assert config.project_kwargs == given
    config = PPOConfig()  # no tracker: nothing to point anywhere
    set_default_logging_dir([config, RLLoopArguments(output_dir=str(tmp_path))])
    assert config.project_kwargs == {}
