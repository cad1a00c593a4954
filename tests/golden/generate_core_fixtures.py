"""Write `fixtures/core.json`: what TRL 0.11.4's core helpers and `PPOConfig` return, for `tests/test_core.py` and
`tests/trainer/test_ppo_config.py` to compare `stackrlhf.core` and `stackrlhf.trainer.ppo_config` against.

The file holds small seeded random inputs (stored explicitly, as lists, so the tests do not depend on a random
generator) and the reference outputs computed from them: every numerical helper of `trl.core`, the KL controllers
and `RunningMoments` of `trl.trainer.utils` over a sequence of updates, `LengthSampler` draws and `set_seed`
effects, and `PPOConfig`'s fields, defaults, `to_dict()`, derived values and error messages.

It must run against the REFERENCE stack, not this project's (it imports `trl.core`, which TRL 1.13+ removed), in a
virtualenv with exactly:

    python -m venv /tmp/trl0114
    /tmp/trl0114/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /tmp/trl0114/bin/pip install trl==0.11.4 transformers==4.46.3 peft==0.13.2 accelerate==1.0.1 datasets==3.1.0

and then, from the repository root:

    /tmp/trl0114/bin/python tests/golden/generate_core_fixtures.py

The output is deterministic for a given torch/numpy version; regenerate only when the reference changes. Floats are
written with `repr` precision; NaN and infinities use Python's JSON extensions (`NaN`, `Infinity`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

OUTPUT = Path(__file__).resolve().parent / "fixtures" / "core.json"


def as_list(tensor: torch.Tensor) -> list:
    return tensor.detach().cpu().tolist()


def expect_error(fn) -> str:
    try:
        fn()
    except Exception as err:  # any exception: its text is what is recorded
        return f"{type(err).__name__}: {err}"
    raise AssertionError("the reference did not raise")


def tensor_helpers(core) -> dict:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen) * 3
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    values = torch.randn(3, 6, generator=gen) * 2 + 0.5
    mask = (torch.rand(3, 6, generator=gen) > 0.3).float()
    mask[:, 0] = 1
    old_values = values + torch.randn(3, 6, generator=gen) * 0.3
    one_hot_mask = torch.zeros(3, 6)
    one_hot_mask[1, 2] = 1
    filter_logits = torch.randn(3, 10, generator=gen) * 2

    return {
        "inputs": {
            "logits": as_list(logits),
            "labels": as_list(labels),
            "values": as_list(values),
            "mask": as_list(mask),
            "old_values": as_list(old_values),
            "one_hot_mask": as_list(one_hot_mask),
            "filter_logits": as_list(filter_logits),
        },
        "logprobs_from_logits": as_list(core.logprobs_from_logits(logits, labels)),
        "logprobs_from_logits_no_gather": as_list(core.logprobs_from_logits(logits, labels, gather=False)),
        "entropy_from_logits": as_list(core.entropy_from_logits(logits)),
        "whiten": as_list(core.whiten(values)),
        "whiten_keep_mean": as_list(core.whiten(values, shift_mean=False)),
        "masked_mean": as_list(core.masked_mean(values, mask)),
        "masked_mean_axis0": as_list(core.masked_mean(values, mask, axis=0)),
        "masked_mean_axis1": as_list(core.masked_mean(values, mask, axis=1)),
        "masked_var": as_list(core.masked_var(values, mask)),
        "masked_var_biased": as_list(core.masked_var(values, mask, unbiased=False)),
        "masked_var_single_element": as_list(core.masked_var(values, one_hot_mask)),
        "masked_var_empty_mask_error": expect_error(lambda: core.masked_var(values, torch.zeros(3, 6))),
        "masked_whiten": as_list(core.masked_whiten(values, mask)),
        "masked_whiten_keep_mean": as_list(core.masked_whiten(values, mask, shift_mean=False)),
        "clip_by_value": as_list(core.clip_by_value(values, old_values - 0.2, old_values + 0.2)),
        "top_k_top_p_filtering": {
            f"{top_k},{top_p}": as_list(core.top_k_top_p_filtering(filter_logits, top_k=top_k, top_p=top_p))
            for top_k, top_p in [(0, 1.0), (3, 1.0), (0, 0.8), (4, 0.9)]
        },
    }


def dict_helpers(core) -> dict:
    nested = {"env": {"reward": 1.5, "kl": {"mean": 0.1, "max": 2}}, "lr": 1e-5, "empty": {}}
    stats = [
        {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)},
        {"a": torch.tensor([[4.0, 5.0], [6.0, 7.0]]), "b": torch.tensor(8.0)},
        {"a": torch.tensor([9.0]), "b": torch.tensor(10.0)},
    ]
    scalars = {
        "t0": torch.tensor(1.25),
        "t1": torch.tensor([2.5]),
        "n1": np.array([3.5]),
        "t2": torch.tensor([1.0, 2.0]),
        "s": "text",
    }
    converted = core.convert_to_scalar(scalars)
    as_np = core.stats_to_np(
        {
            "f32": torch.tensor([[0.1, 0.2]]),
            "bf16": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
            "int": 3,
            "np_scalar": np.float32(0.5),
            "zero_d": torch.tensor(4.0),
        }
    )
    return {
        "flatten_dict_input": nested,
        "flatten_dict": core.flatten_dict(nested),
        "flatten_dict_colon": core.flatten_dict(nested, sep=":"),
        "flatten_dict_error": expect_error(lambda: core.flatten_dict({"a/b": 1})),
        "stack_dicts": {k: as_list(v) for k, v in core.stack_dicts(stats).items()},
        "convert_to_scalar": {
            k: [type(v).__name__, v if isinstance(v, (float, str)) else None] for k, v in converted.items()
        },
        "stats_to_np_string_error": expect_error(lambda: core.stats_to_np({"text": "x"})),
        "stats_to_np": {
            k: [type(v).__name__, str(getattr(v, "dtype", "")), v.tolist() if hasattr(v, "tolist") else v]
            for k, v in as_np.items()
        },
    }


class TinyLM(torch.nn.Module):
    """Next-token logits from the last token only: an embedding followed by a linear layer."""

    def __init__(self, weights: dict):
        super().__init__()
        self.embed = torch.nn.Embedding.from_pretrained(torch.tensor(weights["embed"]))
        self.head = torch.nn.Linear(4, 11)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(weights["head_weight"]))
            self.head.bias.copy_(torch.tensor(weights["head_bias"]))

    def forward(self, input_ids):
        return (self.head(self.embed(input_ids)),)


def sampling(core) -> dict:
    gen = torch.Generator().manual_seed(1)
    weights = {
        "embed": as_list(torch.randn(11, 4, generator=gen)),
        "head_weight": as_list(torch.randn(11, 4, generator=gen) * 2),
        "head_bias": as_list(torch.randn(11, generator=gen)),
    }
    model = TinyLM(weights)
    queries = torch.tensor([[1, 2, 3], [4, 5, 6]])
    responses = {}
    with torch.no_grad():
        for name, kwargs in {
            "greedy": {"txt_len": 6, "top_k": 1},
            "sampled": {"txt_len": 8},
            "top_k_top_p": {"txt_len": 8, "top_k": 5, "top_p": 0.9},
        }.items():
            torch.manual_seed(123)
            responses[name] = {"kwargs": kwargs, "output": as_list(core.respond_to_batch(model, queries, **kwargs))}

    core.set_seed(42)
    seeded = {
        "random": [random.random() for _ in range(3)],
        "numpy": np.random.rand(3).tolist(),
        "torch": as_list(torch.rand(3)),
    }
    np.random.seed(0)
    sampler = core.LengthSampler(4, 16)
    draws = [int(sampler()) for _ in range(12)]
    return {
        "tiny_lm": weights,
        "queries": as_list(queries),
        "respond_to_batch": responses,
        "set_seed_42": seeded,
        "length_sampler": {"min_value": 4, "max_value": 16, "numpy_seed": 0, "values": sampler.values, "draws": draws},
    }


def controllers(utils) -> dict:
    updates = [[0.5, 256], [3.0, 256], [6.0, 128], [8.0, 256], [12.5, 512], [40.0, 64], [-1.0, 256], [7.2, 1000]]
    adaptive = utils.AdaptiveKLController(0.2, 6.0, 10000)
    fixed = utils.FixedKLController(0.05)
    adaptive_values, fixed_values = [], []
    for current, n_steps in updates:
        adaptive.update(current, n_steps)
        fixed.update(current, n_steps)
        adaptive_values.append(float(adaptive.value))
        fixed_values.append(fixed.value)

    from accelerate import Accelerator

    gen = torch.Generator().manual_seed(2)
    batches = [
        torch.randn(8, generator=gen) * 3 + 1,
        torch.randn(4, 3, generator=gen) - 2,
        torch.randn(1, generator=gen),
        torch.randn(16, generator=gen) * 0.5 + 4,
    ]
    running = utils.RunningMoments(accelerator=Accelerator(cpu=True))
    moments = []
    for xs in batches:
        batch_mean, batch_std = running.update(xs)
        moments.append(
            {
                "returned": [batch_mean, batch_std],
                "state": {"mean": running.mean, "std": running.std, "var": running.var, "count": running.count},
                "types": {k: type(getattr(running, k)).__name__ for k in ("mean", "std", "var", "count")},
            }
        )
    return {
        "kl_updates": updates,
        "adaptive_kl": {"init_kl_coef": 0.2, "target": 6.0, "horizon": 10000, "values": adaptive_values},
        "fixed_kl": {"kl_coef": 0.05, "values": fixed_values},
        "running_moments": {"batches": [as_list(xs) for xs in batches], "updates": moments},
    }


def ppo_config(trl) -> dict:
    config_cls = trl.PPOConfig
    defaults = {}
    for f in dataclasses.fields(config_cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        defaults[f.name] = default
    defaults.pop("exp_name")  # depends on the running script

    def describe(kwargs: dict) -> dict:
        config = config_cls(**kwargs)
        as_dict = config.to_dict()
        as_dict.pop("exp_name")
        return {"kwargs": kwargs, "to_dict": as_dict}

    configurations = [
        {},
        {"batch_size": 256, "mini_batch_size": 64, "gradient_accumulation_steps": 2},
        {"batch_size": 64, "forward_batch_size": 16},
        {
            "steps": 1000,
            "batch_size": 24,
            "mini_batch_size": 8,
            "gradient_accumulation_steps": 3,
            "kl_penalty": "full",
            "tracker_kwargs": {"wandb": {"name": "run", "tags": ["a"]}},
            "accelerator_kwargs": {"mixed_precision": "bf16"},
        },
        {"steps": 100, "batch_size": 1, "mini_batch_size": 1, "seed": 7, "log_with": "tensorboard"},
    ]
    bad = [
        {"batch_size": 10, "mini_batch_size": 4},
        {"batch_size": 8, "mini_batch_size": 4, "gradient_accumulation_steps": 3},
        {"batch_size": 200},
        {"batch_size": 1},
    ]
    return {
        "field_names": [f.name for f in dataclasses.fields(config_cls)],
        "defaults": defaults,
        "configurations": [describe(kwargs) for kwargs in configurations],
        "errors": [{"kwargs": kwargs, "error": expect_error(lambda kw=kwargs: config_cls(**kw))} for kwargs in bad],
    }


def stub_rich_if_missing() -> None:
    """TRL 0.11.4's `trainer/utils.py` imports `rich` (a pip dependency of trl) only to print tables; a venv that
    lacks it gets inert stand-ins, which change none of the numbers recorded here."""
    try:
        import rich  # noqa: F401
    except ImportError:
        import importlib.machinery
        import types

        for name in ("rich", "rich.console", "rich.table"):
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules["rich.console"].Console = sys.modules["rich.table"].Table = object


def main() -> None:
    import accelerate
    import transformers

    stub_rich_if_missing()
    import trl
    import trl.core as core
    import trl.trainer.utils as utils

    if trl.__version__ != "0.11.4":
        sys.exit(f"needs trl==0.11.4 (the reference), found {trl.__version__}")
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    fixtures = {
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "accelerate": accelerate.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "tensors": tensor_helpers(core),
        "dicts": dict_helpers(core),
        "sampling": sampling(core),
        "controllers": controllers(utils),
        "exact_div_error": expect_error(lambda: utils.exact_div(7, 2, "custom")),
        "ppo_config": ppo_config(trl),
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(fixtures, indent=1) + "\n")
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
