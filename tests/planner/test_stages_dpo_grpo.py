"""The planner's dpo, grpo and rloo stages: what each holds, how it scales, its limits, its configs and its errors."""

import dataclasses
import json
import re

import pytest
import torch

from stackrlhf.planner import PlanSettings, plan
from stackrlhf.planner.cli import run
from stackrlhf.planner.configs import load_model_config
from stackrlhf.planner.counting import meta_model
from stackrlhf.planner.estimate import GIB, LIMITS, limit_settings
from stackrlhf.planner.recipe_config import load_config_file, map_options, read_recipe_config, settings_from_arguments
from stackrlhf.planner.verdict import plan_verdict

LLAMA = "meta-llama/Llama-2-7b-hf"
DPO = PlanSettings(model=LLAMA, stage="dpo", quantization="4bit", upcast_non_quantized=False, lora_r=8,
                   lora_target_modules=["q_proj", "v_proj", "k_proj"], batch_size=4, query_length=1024,
                   response_length=0, gpu_memory_gb=16)  # fmt: skip
"""llama-2-7b/dpo (StackLLaMA 2's DPO) on Llama-2-7B: float16 weights, 4-bit, batches of 4 pairs of 1024 tokens."""
GRPO = PlanSettings(model=LLAMA, stage="grpo", quantization="4bit", batch_size=8, num_generations=8,
                    query_length=256, response_length=256, gpu_memory_gb=16)  # fmt: skip


def _plan_json(capsys, argv):
    assert run([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------------------------- what each holds
def test_dpo_holds_no_value_head_and_no_second_copy_with_lora():
    result = plan(DPO, max_batch=False)
    assert result.components["value_head"] == 0 and result.components["other_models"] == 0
    assert "reference_forward" in result.components and "kv_cache" not in result.components
    assert list(result.phases) == ["training"]
    # without LoRA, TRL's DPOTrainer copies the model for its reference: one more set of the same weights
    full = plan(DPO, quantization="bf16", lora_r=0, max_batch=False)
    weights = full.components["unquantized_weights"]
    assert full.components["other_models"] == weights and full.trainable_params == full.params_total


def test_dpo_runs_chosen_and_rejected_through_the_policy():
    """A batch of n pairs is 2n sequences: its kept activations are those of an SFT batch of 2n sequences."""
    dpo = plan(DPO, max_batch=False)
    sft = plan(DPO, stage="sft", batch_size=2 * DPO.batch_size, gradient_checkpointing=True, max_batch=False)
    assert dpo.components["activations"] == sft.components["activations"]
    assert dpo.components["block_backward"] == sft.components["block_backward"] - _dropout_copies(sft)


def _dropout_copies(sft_plan):
    """SFT's LoRA dropout copies in one block's backward (DPO turns dropout off: TRL's disable_dropout)."""
    from stackrlhf.planner.estimate import _inventory, lora_targets

    settings = sft_plan.settings
    inventory = _inventory(settings.model, "causal_lm")
    copies = sum(layer.in_features for layer in lora_targets(inventory, settings)) // inventory.dims.layers
    act_bytes = 4 if sft_plan.activation_precision == "float32" else 2
    return copies * settings.batch_size * settings.sequence_length * act_bytes


@pytest.mark.parametrize(
    ("settings", "rows"), [(DPO, 2 * 4 * 1024), (dataclasses.replace(GRPO, batch_size=16), 16 * 256)]
)
def test_dpo_and_grpo_score_with_the_fused_head_not_full_logits(settings, rows):
    """TRL 1.16 computes their log-probs tile by tile (at most 4096 tokens x 32768 columns at once): twice the scored
    tokens add only per-token hidden states (kept ones, float32 gradients, 8 float32 statistics), no vocabulary term.
    GRPO scores the completion tokens only; DPO every token (the worst case: all answer tokens)."""
    act_bytes = 4 if plan(settings, max_batch=False).activation_precision == "float32" else 2
    longer = {"query_length": 2 * settings.query_length} if settings.stage == "dpo" else {"response_length": 512}
    added = (
        plan(settings, max_batch=False, **longer).components["logits"]
        - plan(settings, max_batch=False).components["logits"]
    )
    assert added == rows * (4096 * act_bytes + 4096 * 4 + 8 * 4)  # h = 4096; the tile already has its 4096 rows
    assert added < rows * load_model_config(LLAMA).vocab_size * act_bytes  # less than the logits it would add


def test_grpo_holds_the_reward_adapter_and_no_value_head():
    result = plan(GRPO, max_batch=False)
    policy_only = plan(GRPO, stage="dpo", max_batch=False).components["lora_weights"]
    assert result.components["lora_weights"] == 2 * policy_only  # the frozen reward adapter, the policy's shapes
    assert result.components["value_head"] == 4096 * 4  # the reward adapter's score head, float32, not trained
    assert result.trainable_params == 2 * 16 * 4096 * 2 * 32  # q_proj and v_proj LoRA only: no value head
    assert result.components["other_models"] == 0
    assert set(result.phases) == {"training", "rollout", "generation"}


def test_grpo_with_a_separate_reward_model_counts_its_weights_in_float32():
    shared = plan(GRPO, max_batch=False)
    separate = plan(GRPO, reward_model="gpt2", max_batch=False)
    gpt2_classifier = 124_439_808 + 768  # GPT-2 with its tied LM head swapped for a (1, 768) score head
    assert separate.components["other_models"] == pytest.approx(gpt2_classifier * 4, rel=0.01)
    assert separate.components["lora_weights"] * 2 == shared.components["lora_weights"]
    assert separate.components["value_head"] == 0


def test_rloo_plans_as_grpo():
    grpo, rloo = plan(GRPO), plan(GRPO, stage="rloo")
    assert (rloo.components, rloo.phases, rloo.limits) == (grpo.components, grpo.phases, grpo.limits)


# ------------------------------------------------------------------------------------------------- how it scales
def test_grpo_generation_scales_with_the_generation_batch_and_training_with_the_batch():
    base = plan(GRPO, max_batch=False)
    twice = plan(GRPO, generation_batch_size=16, max_batch=False)  # steps_per_generation 2: two prompts' groups
    assert twice.components["kv_cache"] == 2 * base.components["kv_cache"]
    assert twice.phases["training"] == base.phases["training"]
    bigger = plan(GRPO, batch_size=16, generation_batch_size=16, max_batch=False)
    assert bigger.phases["training"] > base.phases["training"]
    assert bigger.components["rollout"] > base.components["rollout"]  # reference chunks of batch_size sequences


@pytest.mark.parametrize("stage", ["dpo", "grpo", "rloo"])
@pytest.mark.parametrize("quantization", ["none", "bf16", "8bit", "4bit"])
def test_bigger_batches_and_lengths_never_need_less(stage, quantization):
    base = dict(model="gpt2", stage=stage, quantization=quantization, lora_r=8, num_generations=2)
    batches = [plan(**base, batch_size=b, max_batch=False).peak_bytes for b in (2, 4, 8, 16)]
    lengths = [plan(**base, batch_size=2, response_length=n, max_batch=False).peak_bytes for n in (1, 32, 128, 512)]
    assert batches == sorted(batches) and batches[0] < batches[-1]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]


# ------------------------------------------------------------------------------------------------- limits
def test_grpo_limits_keep_steps_per_generation_and_prompts():
    settings = dataclasses.replace(GRPO, batch_size=8, generation_batch_size=16, num_generations=4)  # 2 steps
    batch = limit_settings(settings, "batch_size", 6)
    assert (batch.batch_size, batch.generation_batch_size, batch.num_generations) == (6, 12, 4)
    groups = limit_settings(settings, "num_generations", 6)
    assert (groups.num_generations, groups.generation_batch_size, groups.batch_size) == (6, 24, 12)
    length = limit_settings(settings, "response_length", 300)
    assert (length.response_length, length.batch_size, length.generation_batch_size) == (300, 8, 16)


def test_grpo_verdict_suggests_batches_trl_accepts_and_each_fits():
    settings = dataclasses.replace(GRPO, batch_size=16, generation_batch_size=32, num_generations=8)
    card_gb = plan(settings, max_batch=False).peak_bytes / GIB - 1
    from stackrlhf.planner.recipe_config import RecipeRun
    from stackrlhf.planner.verdict import verdict_line

    options = {"gradient_accumulation_steps": 2, "dtype": "float32"}
    line = verdict_line(RecipeRun("grpo", settings, options=options), int(card_gb * GIB))
    assert line.startswith("memory plan: will not fit") and "lower per_device_train_batch_size to " in line
    batch = int(line.split("per_device_train_batch_size to ")[1].split()[0].rstrip(","))
    assert batch * 2 % 8 == 0  # a generation batch of whole groups (steps_per_generation 2)
    smaller = dataclasses.replace(settings, batch_size=batch, generation_batch_size=2 * batch, gpu_memory_gb=card_gb)
    assert plan(smaller, max_batch=False).fits
    groups, with_batch = (int(value) for value in line.split("num_generations to ")[1].split(")")[0].split(" (with "
                          "per_device_train_batch_size "))  # fmt: skip
    fewer = dataclasses.replace(settings, num_generations=groups, batch_size=with_batch,
                                generation_batch_size=2 * with_batch, gpu_memory_gb=card_gb)  # fmt: skip
    fewer.check()
    assert groups >= 2 and plan(fewer, max_batch=False).fits


# ------------------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    ("argv", "components"),
    [
        (["--stage", "dpo", "--batch_size", "2", "--query_length", "512", "--response_length", "0"],
         {"reference_forward"}),
        (["--stage", "grpo", "--batch_size", "8", "--num_generations", "4"], {"rollout", "kv_cache"}),
        (["--stage", "rloo", "--batch_size", "4", "--num_generations", "2", "--generation_batch_size", "8"],
         {"rollout", "kv_cache"}),
    ],
)  # fmt: skip
def test_the_new_stages_from_the_command_line(capsys, argv, components):
    values = _plan_json(capsys, ["--model", LLAMA, "--quantization", "4bit", *argv])
    assert values["settings"]["stage"] == argv[1] and components <= set(values["components"])
    assert set(values["limits"]) == set(LIMITS[argv[1]]) and values["activation_precision"] == "float32"
    assert run(["--model", LLAMA, "--quantization", "4bit", *argv]) == 0
    out = capsys.readouterr().out
    verdict = out.split("\nverdict for ")[1].splitlines()
    assert verdict[0].endswith("; 4bit weights, float32 activations:") and verdict[1].startswith("fits: 16 GB ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stage", "grpo", "--num_generations", "1"], "num_generations must be at least 2 for grpo"),
        (["--stage", "rloo", "--batch_size", "4", "--num_generations", "3"],
         "num_generations 3 must divide the generation batch 4"),
        (["--stage", "grpo", "--batch_size", "4", "--num_generations", "2", "--generation_batch_size", "6"],
         "generation_batch_size 6 must be a multiple of batch_size 4"),
        (["--stage", "grpo", "--response_length", "0"], "response_length must be at least 1 for grpo"),
        (["--stage", "grpo", "--quantization", "bf16", "--lora_r", "0"], "needs a separate reward_model"),
        (["--stage", "grpo", "--reward_model", "no-such/reward-xyz"], "model 'no-such/reward-xyz'"),
        (["--stage", "grpo", "--reward_batch_size", "0"], "reward_batch_size must be at least 1, got 0"),
        (["--stage", "dpo", "--batch_size", "0"], "batch_size must be at least 1, got 0"),
        (["--stage", "ppo2"], "argument --stage: invalid choice: 'ppo2'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_code_2(capsys, argv, message):
    assert run(["--model", "gpt2", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


# ------------------------------------------------------------------------------------------------- recipe configs
def _parsed(recipe, argv):
    from stackrlhf.recipes import dpo, grpo
    from stackrlhf.recipes.runner import parse_args

    return parse_args({"dpo": dpo, "grpo": grpo}[recipe].make_parser(), [*argv, "--bf16", "false"])


@pytest.mark.parametrize(("config", "recipe", "stage"), [("tiny/dpo", "dpo", "dpo"), ("tiny/grpo", "grpo", "grpo")])
def test_the_offline_configs_plan_the_run_their_recipe_would_do(config, recipe, stage):
    run_ = read_recipe_config(config)
    assert (run_.recipe, run_.stage, run_.settings.model) == (recipe, stage, "stackrlhf/stories260K")
    values = load_config_file(config)
    settings = run_.settings
    assert settings.batch_size == values["per_device_train_batch_size"] and settings.lora_r == values["lora_r"]
    if recipe == "dpo":
        assert (settings.query_length, settings.response_length) == (values["max_length"], 0)
    else:
        assert settings.num_generations == values["num_generations"]
        assert settings.generation_batch_size == values["per_device_train_batch_size"]  # steps_per_generation 1
        assert (settings.query_length, settings.response_length) == (
            values["max_prompt_length"],
            values["max_completion_length"],
        )
    assert settings_from_arguments(recipe, *_parsed(recipe, ["--config", config])).settings == settings


def test_the_grpo_config_serves_rloo(capsys):
    assert read_recipe_config("tiny/grpo", "rloo").stage == "rloo"
    result = _plan_json(capsys, ["--config", "tiny/grpo", "--stage", "rloo"])
    assert result["settings"]["stage"] == "rloo" and result["config"]["recipe"] == "grpo"
    assert set(result["recipe_limits"]) == {"per_device_train_batch_size", "num_generations", "max_completion_length"}
    parsed = _parsed("grpo", ["--config", "tiny/grpo", "--algorithm", "rloo"])
    assert settings_from_arguments("grpo", *parsed).settings == read_recipe_config("tiny/grpo", "rloo").settings


def test_the_generation_batch_is_trls(tmp_path):
    config = tmp_path / "mine.yaml"
    base = "model_name_or_path: gpt2\nnum_generations: 4\nper_device_train_batch_size: 4\nmax_completion_length: 64\n"
    for extra, generation in [("", 4), ("gradient_accumulation_steps: 3\n", 12), ("steps_per_generation: 2\n", 8),
                              ("generation_batch_size: 16\n", 16)]:  # fmt: skip
        config.write_text(base + extra)
        settings = read_recipe_config(config).settings
        assert settings.generation_batch_size == generation, extra
        parsed = _parsed("grpo", ["--config", str(config), "--reward_model", "gpt2"])
        expected = settings_from_arguments("grpo", *parsed).settings
        assert dataclasses.replace(expected, reward_model=None) == dataclasses.replace(settings, reward_model=None)
    assert settings.query_length == 96  # the offline config's max_prompt_length, the recipe's default
    config.write_text(base + "max_prompt_length: null\n")
    assert read_recipe_config(config).settings.query_length == 1024 - 64  # gpt2's context less the completions


def test_a_separate_reward_model_in_a_config(tmp_path):
    config = tmp_path / "grpo_separate.yaml"
    config.write_text("model_name_or_path: gpt2\nnum_generations: 2\nreward_model: gpt2-medium\n")
    assert read_recipe_config(config).settings.reward_model == "gpt2-medium"
    config.write_text("model_name_or_path: gpt2\nnum_generations: 2\nreward_model: lvwerra/distilbert-imdb\n")
    run_ = read_recipe_config(config)
    assert run_.settings.reward_model is None
    assert run_.not_planned == [
        "reward_model=lvwerra/distilbert-imdb (a separate reward model whose config cannot be read here: its weights "
        "and forward pass are not counted)"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("num_generations: 3\nper_device_train_batch_size: 4\n",
         "must divide the generation batch 4 (per_device_train_batch_size 4 x steps_per_generation 1)"),
        ("num_generations: 1\n", "num_generations must be at least 2 for grpo"),
        ("num_generations: 2\nalgorithm: ppo\n", "algorithm 'ppo' is not one of grpo, rloo"),
        ("num_generations: 2\nper_device_train_batch_size: 4\ngeneration_batch_size: 6\n",
         "generation_batch_size 6 must be a positive multiple of per_device_train_batch_size 4"),
        ("num_generations: 2\nmax_completion_length: 1024\nmax_prompt_length: null\n",
         "max_completion_length 1024 leaves no room for a prompt in gpt2's 1024-token context"),
        ("num_generations: 2\nmax_prompt_length: 1000\nmax_completion_length: 64\n",
         "max_prompt_length 1000 + max_completion_length 64 exceed gpt2's 1024-token context"),
        ("beta: 0.1\nmax_length: 0\n", "max_length must be at least 1, got 0"),
    ],
)  # fmt: skip
def test_bad_grpo_and_dpo_configs_are_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text("model_name_or_path: gpt2\n" + text)
    assert run(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {config}: ") and message in err[0], err


def test_a_grpo_config_on_a_model_yet_to_be_built_points_to_the_model_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "grpo.yaml"
    config.write_text("model_name_or_path: outputs/merged\nnum_generations: 2\nmax_prompt_length: 64\n")
    assert run(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plan its base instead, e.g. --model meta-llama/Llama-2-7b-hf" in err[0]
    assert run(["--config", str(config), "--model", "gpt2"]) == 0


def test_dpo_and_grpo_keys_tell_the_recipe(tmp_path):
    from stackrlhf.planner.recipe_config import detect_recipe

    for values, recipe in [({"beta": 0.1, "max_length": 512}, "dpo"), ({"precompute_ref_log_probs": True}, "dpo"),
                           ({"beta": 0.1, "num_generations": 4}, "grpo"), ({"max_completion_length": 64}, "grpo"),
                           ({"algorithm": "rloo", "max_prompt_length": 64}, "grpo"),  # max_prompt_length: PPO's too
                           ({"per_device_train_batch_size": 2}, "grpo")]:  # fmt: skip
        assert detect_recipe(values, path=tmp_path / "rloo" / "config.yaml") == recipe, values
    config = tmp_path / "mine.yaml"
    config.write_text(
        "model_name_or_path: gpt2\nalgorithm: rloo\nper_device_train_batch_size: 2\nnum_generations: 2\n"
    )
    assert read_recipe_config(config).stage == "rloo"


# ------------------------------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize(("config", "recipe"), [("tiny/dpo", "dpo"), ("tiny/grpo", "grpo")])
def test_planned_trainable_parameters_are_the_recipes_real_adapter(config, recipe, tiny_model_dir):
    """The recipe's own LoRA config (`build_peft_config`) on the real bundled tiny model: its trainable parameters
    are what the plan of the same config counts."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from stackrlhf.models.loading import build_peft_config

    model_args = next(arg for arg in _parsed(recipe, ["--config", config]) if type(arg).__name__ == "ModelConfig")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, build_peft_config(model_args, model))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    planned = plan(read_recipe_config(config).settings, model=str(tiny_model_dir), max_batch=False)
    assert planned.trainable_params == trainable
    assert planned.components["lora_weights"] == trainable * 4 * (2 if recipe == "grpo" else 1)  # + reward adapter


def test_stackllama2_dpo_adapter_on_the_real_llama_2_7b_architecture():
    """llama-2-7b/dpo's LoRA (r 8 on q, k and v projections) applied by peft to Llama-2-7B on the meta device."""
    from peft import get_peft_model

    from stackrlhf.models.loading import build_peft_config

    model_args = next(arg for arg in _parsed("dpo", ["--config", "llama-2-7b/dpo", "--model_name_or_path", LLAMA])
                      if type(arg).__name__ == "ModelConfig")  # fmt: skip
    model = meta_model(load_model_config(LLAMA))
    peft_model = get_peft_model(model, build_peft_config(model_args, model))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    values = load_config_file("llama-2-7b/dpo") | {"model_name_or_path": LLAMA}
    assert plan(map_options("dpo", values).settings, max_batch=False).trainable_params == trainable == 6_291_456


def test_the_plan_uses_trls_own_fused_head_tile():
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    from stackrlhf.planner.activations import FUSED_HEAD_COLUMNS, FUSED_HEAD_TOKENS

    assert (FUSED_HEAD_TOKENS, FUSED_HEAD_COLUMNS) == (TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE)


def test_the_verdict_plans_the_dpo_and_grpo_recipes_parsed_arguments():
    dpo = _parsed("dpo", ["--config", "llama-2-7b/dpo", "--model_name_or_path", LLAMA])
    peak = plan(DPO, max_batch=False).peak_bytes / GIB
    assert (
        plan_verdict("dpo", *dpo[1:], device_bytes=16 * GIB)
        == f"memory plan: fits (planned peak {peak:.2f} GiB of 16.00 GiB)"
    )
    grpo = _parsed("grpo", ["--config", "tiny/grpo"])  # 16 completions: 4 prompts x 4 generations, 96 + 32 tokens
    settings = read_recipe_config("tiny/grpo").settings
    card_gb = plan(settings, max_batch=False).peak_bytes / GIB - 0.05
    line = plan_verdict("grpo", *grpo[1:], device_bytes=int(card_gb * GIB))
    assert line.startswith("memory plan: will not fit") and "lower per_device_train_batch_size to " in line
    batch = int(re.search(r"lower per_device_train_batch_size to (\d+)", line)[1])
    groups, groups_batch = (
        int(value) for value in re.search(r"num_generations to (\d+) \(with \w+ (\d+)\)", line).groups()
    )
    fewer_groups = {"num_generations": groups, "batch_size": groups_batch, "generation_batch_size": groups_batch}
    for changed in ({"batch_size": batch, "generation_batch_size": batch}, fewer_groups):
        smaller = dataclasses.replace(settings, gpu_memory_gb=card_gb, **changed)
        smaller.check()  # TRL accepts it: whole groups
        assert plan(smaller, max_batch=False).fits, changed
    assert groups_batch == 4 * groups  # the prompts per generation stay 4
