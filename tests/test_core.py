"""`stackrlhf.core` against TRL 0.11.4's `trl.core` / `trl.trainer.utils`, via `golden/fixtures/core.json`.

The fixture holds the inputs and the reference outputs (see `golden/generate_core_fixtures.py`); numbers must
match to 1e-6, integers and strings exactly.
"""

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stackrlhf import core
from stackrlhf.core import (
    AdaptiveKLController,
    FixedKLController,
    LengthSampler,
    PPODecorators,
    RunningMoments,
)
from tests.golden.generate_core_fixtures import TinyLM  # the generator's model, with the fixture's weights

GOLDEN = json.loads((Path(__file__).parent / "golden" / "fixtures" / "core.json").read_text())
TENSORS = GOLDEN["tensors"]
INPUTS = {name: torch.tensor(value) for name, value in TENSORS["inputs"].items()}


def assert_matches(actual, expected):
    """Tensor or nested lists of floats (NaN/inf included) equal to the reference to 1e-6."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = torch.as_tensor(actual).to(torch.float64)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6, equal_nan=True)


def only_errors_text(error: str) -> str:
    """`"ValueError: message"` as recorded by the generator, without the exception's class name."""
    return error.split(": ", 1)[1]


# --- numerical helpers -----------------------------------------------------------------------------------------------


def test_logprobs_and_entropy_match_reference():
    logits, labels = INPUTS["logits"], INPUTS["labels"]
    assert_matches(core.logprobs_from_logits(logits, labels), TENSORS["logprobs_from_logits"])
    assert_matches(core.logprobs_from_logits(logits, labels, gather=False), TENSORS["logprobs_from_logits_no_gather"])
    assert_matches(core.entropy_from_logits(logits), TENSORS["entropy_from_logits"])


def test_whiten_matches_reference():
    values = INPUTS["values"]
    assert_matches(core.whiten(values), TENSORS["whiten"])
    assert_matches(core.whiten(values, shift_mean=False), TENSORS["whiten_keep_mean"])


def test_masked_statistics_match_reference():
    values, mask = INPUTS["values"], INPUTS["mask"]
    assert_matches(core.masked_mean(values, mask), TENSORS["masked_mean"])
    assert_matches(core.masked_mean(values, mask, axis=0), TENSORS["masked_mean_axis0"])
    assert_matches(core.masked_mean(values, mask, axis=1), TENSORS["masked_mean_axis1"])
    assert_matches(core.masked_var(values, mask), TENSORS["masked_var"])
    assert_matches(core.masked_var(values, mask, unbiased=False), TENSORS["masked_var_biased"])
    assert_matches(core.masked_whiten(values, mask), TENSORS["masked_whiten"])
    assert_matches(core.masked_whiten(values, mask, shift_mean=False), TENSORS["masked_whiten_keep_mean"])


def test_masked_var_of_a_single_element_is_nan_as_in_reference():
    result = core.masked_var(INPUTS["values"], INPUTS["one_hot_mask"])
    assert math.isnan(TENSORS["masked_var_single_element"]) and torch.isnan(result)


def test_masked_var_rejects_an_empty_mask():
    reference = only_errors_text(TENSORS["masked_var_empty_mask_error"])
    with pytest.raises(ValueError, match="The sum of the mask is zero") as err:
        core.masked_var(INPUTS["values"], torch.zeros(3, 6))
    # Same message as 0.11.4, with the missing space after the semicolon restored.
    assert str(err.value) == reference.replace(";try", "; try")
    # The biased variance needs no correction, so it does not raise (it is NaN: 0 / 0).
    assert torch.isnan(core.masked_var(INPUTS["values"], torch.zeros(3, 6), unbiased=False))


def test_clip_by_value_matches_reference_and_accepts_numbers():
    values, old_values = INPUTS["values"], INPUTS["old_values"]
    assert_matches(core.clip_by_value(values, old_values - 0.2, old_values + 0.2), TENSORS["clip_by_value"])
    assert_matches(core.clip_by_value(values, -0.5, 0.5), values.clamp(-0.5, 0.5))


def test_top_k_top_p_filtering_matches_reference():
    for key, expected in TENSORS["top_k_top_p_filtering"].items():
        top_k, top_p = key.split(",")
        filtered = core.top_k_top_p_filtering(INPUTS["filter_logits"], top_k=int(top_k), top_p=float(top_p))
        assert_matches(filtered, expected)


def test_exact_div():
    assert core.exact_div(12, 4) == 3
    with pytest.raises(ValueError) as err:
        core.exact_div(7, 2, "custom")
    assert str(err.value) == only_errors_text(GOLDEN["exact_div_error"])


# --- dictionaries of statistics --------------------------------------------------------------------------------------

DICTS = GOLDEN["dicts"]


def test_flatten_dict_matches_reference():
    nested = DICTS["flatten_dict_input"]
    assert core.flatten_dict(nested) == DICTS["flatten_dict"]
    assert list(core.flatten_dict(nested)) == list(DICTS["flatten_dict"])
    assert core.flatten_dict(nested, sep=":") == DICTS["flatten_dict_colon"]
    with pytest.raises(ValueError) as err:
        core.flatten_dict({"a/b": 1})
    assert str(err.value) == only_errors_text(DICTS["flatten_dict_error"])


def test_stack_dicts_pads_with_wandb_padding():
    stats = [
        {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)},
        {"a": torch.tensor([[4.0, 5.0], [6.0, 7.0]]), "b": torch.tensor(8.0)},
        {"a": torch.tensor([9.0]), "b": torch.tensor(10.0)},
    ]
    stacked = core.stack_dicts(stats)
    assert list(stacked) == list(DICTS["stack_dicts"])
    for key, expected in DICTS["stack_dicts"].items():
        assert stacked[key].tolist() == expected
    assert core.WANDB_PADDING == -1


def test_convert_to_scalar_matches_reference():
    converted = core.convert_to_scalar(
        {
            "t0": torch.tensor(1.25),
            "t1": torch.tensor([2.5]),
            "n1": np.array([3.5]),
            "t2": torch.tensor([1.0, 2.0]),
            "s": "text",
        }
    )
    for key, (type_name, value) in DICTS["convert_to_scalar"].items():
        assert type(converted[key]).__name__ == type_name
        if value is not None:
            assert converted[key] == value


def test_stats_to_np_matches_reference():
    converted = core.stats_to_np(
        {
            "f32": torch.tensor([[0.1, 0.2]], requires_grad=True),
            "bf16": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
            "int": 3,
            "np_scalar": np.float32(0.5),
            "zero_d": torch.tensor(4.0),
        }
    )
    for key, (type_name, dtype, value) in DICTS["stats_to_np"].items():
        assert type(converted[key]).__name__ == type_name
        assert str(getattr(converted[key], "dtype", "")) == dtype
        assert_matches(converted[key], value)
    with pytest.raises(ValueError) as err:
        core.stats_to_np({"text": "x"})
    assert str(err.value) == only_errors_text(DICTS["stats_to_np_string_error"])


def test_pre_0_5_dict_and_tensor_helpers():
    averaged = core.average_torch_dicts([{"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([3.0, 6.0])}])
    assert averaged["x"].tolist() == [2.0, 4.0]
    assert core.add_suffix({"loss": 1, "kl": 2}, "_mean") == {"loss_mean": 1, "kl_mean": 2}
    padded = core.pad_to_size(torch.tensor([[5, 6]]), 4)
    assert padded.tolist() == [[5, 6, 50256, 50256]]
    same = torch.tensor([[1, 2]])
    assert core.pad_to_size(same, 2) is same
    assert [row.tolist() for row in core.listify_batch(torch.tensor([[1, 2], [3, 4]]))] == [[1, 2], [3, 4]]


def test_build_bert_batch_from_txt_pads_and_masks():
    class WordTokenizer:
        def encode(self, text, return_tensors):
            assert return_tensors == "pt"
            return torch.tensor([[len(word) for word in text.split()]])

    input_ids, attention_mask = core.build_bert_batch_from_txt(["a bb ccc", "dddd"], WordTokenizer(), "cpu")
    assert input_ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert attention_mask.tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


# --- sampling and seeding --------------------------------------------------------------------------------------------

SAMPLING = GOLDEN["sampling"]


@pytest.mark.parametrize("case", ["greedy", "sampled", "top_k_top_p"])
def test_respond_to_batch_matches_reference(case):
    reference = SAMPLING["respond_to_batch"][case]  # sampled cases hold for the fixture's torch (2.13.0, as `make`)
    model = TinyLM(SAMPLING["tiny_lm"])
    queries = torch.tensor(SAMPLING["queries"])
    torch.manual_seed(123)
    with torch.no_grad():
        response = core.respond_to_batch(model, queries, **reference["kwargs"])
    assert response.tolist() == reference["output"]
    assert response.shape == (len(queries), reference["kwargs"]["txt_len"])


def test_set_seed_seeds_random_numpy_and_torch():
    core.set_seed(42)
    reference = SAMPLING["set_seed_42"]
    assert [random.random() for _ in range(3)] == reference["random"]
    assert np.random.rand(3).tolist() == reference["numpy"]
    assert_matches(torch.rand(3), reference["torch"])


def test_length_sampler_draws_match_reference():
    reference = SAMPLING["length_sampler"]
    np.random.seed(reference["numpy_seed"])
    sampler = LengthSampler(reference["min_value"], reference["max_value"])
    assert sampler.values == reference["values"]
    assert [int(sampler()) for _ in range(len(reference["draws"]))] == reference["draws"]


def test_empty_device_cache_only_when_enabled(monkeypatch):
    calls = []
    monkeypatch.setattr(core, "is_torch_xpu_available", lambda: False)
    monkeypatch.setattr(core, "is_torch_npu_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))

    monkeypatch.setattr(PPODecorators, "optimize_device_cache", False)
    with PPODecorators.empty_device_cache():
        pass
    assert calls == []

    monkeypatch.setattr(PPODecorators, "optimize_device_cache", True)

    @PPODecorators.empty_device_cache()
    def step():
        calls.append("step")

    step()
    assert calls == ["step", "empty"]


# --- KL controllers and running moments ------------------------------------------------------------------------------

CONTROLLERS = GOLDEN["controllers"]


def test_adaptive_kl_controller_trajectory_matches_reference():
    reference = CONTROLLERS["adaptive_kl"]
    controller = AdaptiveKLController(reference["init_kl_coef"], reference["target"], reference["horizon"])
    assert controller.value == reference["init_kl_coef"]
    trajectory = []
    for current, n_steps in CONTROLLERS["kl_updates"]:
        controller.update(current, n_steps)
        trajectory.append(float(controller.value))
    assert trajectory == pytest.approx(reference["values"], rel=1e-12)


def test_adaptive_kl_controller_follows_ziegler_eq_2():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    controller.update(current=9.0, n_steps=100)  # error 0.5 clipped to 0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    controller = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    controller.update(current=5.4, n_steps=100)  # error -0.1
    assert controller.value == pytest.approx(0.1 * (1 - 0.1 * 100 / 1000))


def test_fixed_kl_controller_never_moves():
    reference = CONTROLLERS["fixed_kl"]
    controller = FixedKLController(reference["kl_coef"])
    for current, n_steps in CONTROLLERS["kl_updates"]:
        controller.update(current, n_steps)
    assert [controller.value] * len(reference["values"]) == reference["values"]


def single_process():
    return SimpleNamespace(use_distributed=False, is_main_process=True)


def test_running_moments_match_reference():
    reference = CONTROLLERS["running_moments"]
    running = RunningMoments(accelerator=single_process())
    for batch, expected in zip(reference["batches"], reference["updates"], strict=True):
        returned = running.update(torch.tensor(batch))
        assert_matches(list(returned), expected["returned"])
        state = {name: getattr(running, name) for name in ("mean", "std", "var", "count")}
        assert_matches(list(state.values()), list(expected["state"].values()))
        assert {name: type(value).__name__ for name, value in state.items()} == expected["types"]


def test_running_moments_json_round_trip(tmp_path):
    running = RunningMoments(accelerator=single_process())
    running.update(torch.tensor([1.0, 2.0, 4.0]))
    path = tmp_path / "moments.json"
    running.save_to_json(str(path))
    assert set(json.loads(path.read_text())) == {"mean", "std", "var", "count"}
    restored = RunningMoments.load_from_json(single_process(), str(path))
    assert (restored.mean, restored.std, restored.var, restored.count) == (
        running.mean,
        running.std,
        running.var,
        running.count,
    )
