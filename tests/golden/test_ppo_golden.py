"""stackrlhf's `PPOTrainer.step` against golden fixtures made by TRL 0.11.4 (see README.md in this folder).

Each fixture holds a case (PPOConfig arguments, inputs, models), every stat that 0.11.4's `step` returned for each
call, and the trainable parameters after the last call. stackrlhf must reproduce all of them to a relative
tolerance of 1e-4 (absolute 1e-6 for values near zero), starting from the same checkpoint and the same seed.
"""

import json
import types

import pytest

from stackrlhf import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

from . import ppo_cases

STACKRLHF = types.SimpleNamespace(
    AutoModelForCausalLMWithValueHead=AutoModelForCausalLMWithValueHead, PPOConfig=PPOConfig, PPOTrainer=PPOTrainer
)
FIXTURES = sorted(path for path in ppo_cases.FIXTURE_DIR.glob("*.json") if path.name != "manifest.json")


def test_every_case_has_an_up_to_date_fixture():
    """The fixtures were generated from the case definitions as they are now (else: regenerate, see README)."""
    assert sorted(path.stem for path in FIXTURES) == sorted(ppo_cases.CASES_BY_NAME)
    for path in FIXTURES:
        stored = json.loads(path.read_text())["case"]
        assert stored == json.loads(json.dumps(ppo_cases.CASES_BY_NAME[path.stem])), f"{path.name} is stale"


@pytest.mark.parametrize("path", FIXTURES, ids=lambda path: path.stem)
def test_step_matches_trl_0_11_4(path):
    fixture = json.loads(path.read_text())
    case = fixture["case"]
    trainer, model = ppo_cases.build_trainer(case, STACKRLHF)

    problems = []
    for i, (inputs, expected) in enumerate(zip(case["steps"], fixture["steps"], strict=True)):
        stats = trainer.step(*ppo_cases.step_arguments(inputs))
        mismatches = ppo_cases.stat_mismatches(stats, expected["stats"], expected.get("ignore_indices"))
        problems += [f"step {i}: {problem}" for problem in mismatches]
    final = ppo_cases.trainable_parameters(model)
    ignore = fixture.get("final_parameters_ignore_indices")
    problems += [
        f"final parameters, {p}" for p in ppo_cases.parameter_mismatches(final, fixture["final_parameters"], ignore)
    ]

    assert not problems, f"{case['name']} ({case['description']}) differs from TRL 0.11.4:\n" + "\n".join(problems)
