"""Generate the golden fixtures of TRL 0.11.4's classic `PPOTrainer.step` that `test_ppo_golden.py` holds stackrlhf to.

This script runs under a *reference* Python that has the original TRL 0.11.4 stack installed, never under
stackrlhf's own environment. It

1. builds one tiny GPT-2 (vocabulary 64, width 16, 2 layers, 2 heads) wrapped in TRL 0.11.4's
   `AutoModelForCausalLMWithValueHead`, and a word-level tokenizer, and saves them with 0.11.4's `save_pretrained`
   under `fixtures/ppo/initial/`; also `fixtures/ppo/ref_perturbed/` (the same weights plus fixed noise, used as a
   reference model that differs from the policy) and `fixtures/ppo/lora_init/adapter_model.safetensors` (the
   starting LoRA weights of the peft case, with non-zero B so that the adapter matters from the first step);
2. runs every case of `ppo_cases.py` in a fresh subprocess: `PPOTrainer(config, model, ref_model, tokenizer)`
   (which calls `set_seed(config.seed)`), then `step` once per entry of the case's `steps`;
3. writes `fixtures/ppo/<case>.json`: the case itself, every stat of every step (`time/*` left out), and the final
   values of the trainable parameters (float32, base64), plus `fixtures/ppo/manifest.json` (versions, date).

The one deliberate change to 0.11.4: its `step` crashes with `use_score_scaling=True`, because `RunningMoments`
keeps `mean` and `std` as Python floats and `step` calls `.to(...)` on them. `TensorMoments` below hands `step`
those two numbers as tensors, which is what the line `self.running.std.to(**tensor_to_kwargs)` evidently intends
(the same as writing `torch.tensor(self.running.std, **tensor_to_kwargs)` there). Nothing else changes.

Regenerate (from the repository root; no network is needed once the packages are installed):

    python3.11 -m venv /tmp/trl0114
    /tmp/trl0114/bin/pip install torch==2.13.0 trl==0.11.4 transformers==4.46.3 peft==0.13.2 accelerate==1.0.1 \
        datasets==3.1.0 "numpy<2" "pyarrow<21" rich
    /tmp/trl0114/bin/python tests/golden/generate_ppo_fixtures.py
    /tmp/trl0114/bin/python tests/golden/generate_ppo_fixtures.py --self-check

(TRL 0.11.4 imports `rich` without declaring it; pyarrow 21+ needs numpy 2.) Or let the script make that virtual
environment and re-run itself inside it:

    python3.11 tests/golden/generate_ppo_fixtures.py --make-venv /tmp/trl0114

`--only CASE [CASE ...]` regenerates some cases against the committed checkpoints. A full run rebuilds the
checkpoints as well; they are deterministic for a given torch version, and every fixture is rewritten with them.
`--self-check` re-runs the cases with eager attention instead of SDPA (same maths, other rounding) and compares
with the fixtures as the test does: every case must come out stable, or it is too chaotic to be a fair test.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import ppo_cases  # this script's own directory is on sys.path when it is run as a script

REFERENCE_PINS = {
    "torch": "2.13.0",
    "trl": "0.11.4",
    "transformers": "4.46.3",
    "peft": "0.13.2",
    "accelerate": "1.0.1",
    "datasets": "3.1.0",
}
EXTRA_REQUIREMENTS = ["numpy<2", "pyarrow<21", "rich"]
STRICT_PINS = ("trl", "transformers", "peft", "accelerate")  # the versions the fixtures are about
INITIAL_SEED = 1234  # torch seed of the initial weights


# ------------------------------------------------------------------------------------------------ environment


def make_venv(venv_dir: Path, argv: list[str]) -> None:
    """Create a virtual environment with the reference pins, then re-run this script inside it."""
    python = venv_dir / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
    pins = [f"{name}=={version}" for name, version in REFERENCE_PINS.items()] + EXTRA_REQUIREMENTS
    subprocess.run([str(python), "-m", "pip", "install", *pins], check=True)
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv])


def check_versions() -> dict[str, str]:
    """The installed versions; stop unless TRL and its companions are exactly the reference ones."""
    from importlib.metadata import version

    installed = {name: version(name) for name in [*REFERENCE_PINS, "numpy", "tokenizers", "safetensors"]}
    wrong = [
        f"{n}=={installed[n]} (want {REFERENCE_PINS[n]})" for n in STRICT_PINS if installed[n] != REFERENCE_PINS[n]
    ]
    if wrong:
        sys.exit(f"run this with the TRL 0.11.4 reference environment; found {', '.join(wrong)}")
    for name in set(REFERENCE_PINS) - set(STRICT_PINS):
        if not installed[name].startswith(REFERENCE_PINS[name]):
            warnings.warn(
                f"{name}=={installed[name]}, the fixtures were made with {REFERENCE_PINS[name]}", stacklevel=2
            )
    return installed


# ------------------------------------------------------------------------------------------------ checkpoints


def build_tokenizer():
    """A word-level tokenizer over `<pad> <s> </s> <unk> t4 ... t63`, padding on the right with `<pad>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = ["<pad>", "<s>", "</s>", "<unk>"] + [f"t{i}" for i in range(4, ppo_cases.VOCAB_SIZE)]
    vocab = {name: i for i, name in enumerate(names)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **ppo_cases.SPECIAL_TOKENS)
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [
        ppo_cases.PAD_ID,
        ppo_cases.BOS_ID,
        ppo_cases.EOS_ID,
    ]
    return tokenizer


def build_checkpoints() -> None:
    """Write `initial/` (policy + value head + tokenizer), `ref_perturbed/` and `lora_init/`."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import AutoModelForCausalLMWithValueHead

    torch.manual_seed(INITIAL_SEED)
    base = GPT2LMHeadModel(GPT2Config(**ppo_cases.MODEL_CONFIG))
    noise = torch.Generator().manual_seed(INITIAL_SEED)
    with torch.no_grad():
        for name, param in base.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:  # GPT-2 starts these at 0 and 1: make them non-trivial
                param.add_(0.1 * torch.randn(param.shape, generator=noise))
    model = AutoModelForCausalLMWithValueHead.from_pretrained(base)
    with torch.no_grad():
        model.v_head.summary.weight.copy_(0.5 * torch.randn(model.v_head.summary.weight.shape, generator=noise))
        model.v_head.summary.bias.fill_(0.1)
    model.save_pretrained(str(ppo_cases.INITIAL_DIR))
    build_tokenizer().save_pretrained(str(ppo_cases.INITIAL_DIR))

    reference = AutoModelForCausalLMWithValueHead.from_pretrained(str(ppo_cases.INITIAL_DIR))
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=noise))
    reference.save_pretrained(str(ppo_cases.REF_PERTURBED_DIR))

    lora_case = next(case for case in ppo_cases.CASES if "lora" in case)
    peft_model = get_peft_model(
        GPT2LMHeadModel.from_pretrained(str(ppo_cases.INITIAL_DIR)),
        LoraConfig(task_type="CAUSAL_LM", **lora_case["lora"]),
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=noise))
    weights = {name: tensor.contiguous() for name, tensor in get_peft_model_state_dict(peft_model).items()}
    ppo_cases.LORA_INIT_FILE.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(ppo_cases.LORA_INIT_FILE))


# ------------------------------------------------------------------------------------------------ one case


class TensorMoments:
    """0.11.4's `RunningMoments`, but `mean` and `std` read as tensors: the one fix applied to the reference.

    0.11.4's `step` does `self.running.std.to(**tensor_to_kwargs)` (and `.mean.to(...)` with `use_score_norm`)
    while `RunningMoments.update` stores both as Python floats, so `use_score_scaling=True` raises AttributeError.
    `torch.tensor(value, dtype=torch.float64).to(float32)` rounds exactly like `torch.tensor(value, dtype=float32)`.
    """

    def __init__(self, running):
        self.running = running

    def update(self, xs):
        return self.running.update(xs)

    @property
    def mean(self):
        import torch

        return torch.tensor(self.running.mean, dtype=torch.float64)

    @property
    def std(self):
        import torch

        return torch.tensor(self.running.std, dtype=torch.float64)


class AttentionMaskRecorder:
    """Notes the attention mask of every `batched_forward_pass` call of one `step`.

    With left padding, the positions before a row's first token attend to nothing; what a model computes there is
    an artefact of its attention masking code (transformers 4.46 and 5.x differ) and is masked out of every loss and
    every mean, but 0.11.4 still reports those raw log-probs in `objective/logprobs`, `objective/ref_logprobs` and
    `ppo/policy/ratio`. The fixture lists those entries so that the test can leave them out.
    """

    def __init__(self, trainer):
        self.masks = []
        original = trainer.batched_forward_pass

        def recording(model, queries, responses, model_inputs, return_logits=False, response_masks=None):
            self.masks.append(model_inputs["attention_mask"].detach().clone())
            return original(
                model, queries, responses, model_inputs, return_logits=return_logits, response_masks=response_masks
            )

        trainer.batched_forward_pass = recording

    @staticmethod
    def _unattended(attention_mask) -> list[int]:
        """Flat indices into the (rows, length - 1) log-prob grid whose query position sees no token at all."""
        grid = attention_mask[:, :-1].cumsum(dim=1) == 0
        return grid.flatten().nonzero().flatten().tolist()

    def ignore_indices(self, stats: dict) -> dict[str, list[int]]:
        full_batch, training = self.masks[0], self.masks[2:]  # policy pass, reference pass, then mini-batches
        found = {}
        for key in ("objective/logprobs", "objective/ref_logprobs"):
            assert stats[key].size == full_batch[:, :-1].numel(), key
            found[key] = self._unattended(full_batch)
        offset, ratio = 0, []
        for mask in training:
            ratio += [offset + i for i in self._unattended(mask)]
            offset += mask[:, :-1].numel()
        assert stats["ppo/policy/ratio"].size == offset
        found["ppo/policy/ratio"] = ratio
        return {key: indices for key, indices in found.items() if indices}


def _float32_list(array):
    """Nested lists of the shortest decimal that reads back as the same float32."""
    import numpy as np

    if array.ndim == 0:
        return float(repr(np.float32(array)).removeprefix("np.float32(").removesuffix(")"))
    return [_float32_list(row) for row in array]


def jsonable(value):
    """A stat as JSON: numbers stay numbers, arrays become nested lists (shape preserved)."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().float().numpy()
    if isinstance(value, np.ndarray):
        return _float32_list(value) if value.dtype == np.float32 else value.astype(np.float64).tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isfinite(value) and float(np.float32(value)) == value:
        return _float32_list(np.asarray(value, dtype=np.float32))  # a float32 result read out with .item()
    if isinstance(value, (bool, int, float)):
        return value
    raise TypeError(f"unexpected stat type {type(value)}")


def encode_tensor(tensor) -> dict:
    import numpy as np

    array = np.ascontiguousarray(tensor.detach().cpu().float().numpy().astype("<f4"))
    return {"shape": list(array.shape), "float32_base64": base64.b64encode(array.tobytes()).decode()}


def inert_parameter_entries(parameters: dict) -> dict[str, list[int]]:
    """GPT-2's attention key biases (the middle third of each `c_attn.bias`), which the test leaves out.

    A key bias adds the same amount to every attention score of a query, which the softmax ignores: its exact
    gradient is 0, and the rounding noise that stands in for it (~1e-9) is scaled up by Adam to steps of up to the
    learning rate, in a direction that any other rounding changes. Those values say nothing about the algorithm.
    """
    width = ppo_cases.MODEL_CONFIG["n_embd"]
    return {name: list(range(width, 2 * width)) for name in parameters if name.endswith("attn.c_attn.bias")}


def run_case(case: dict, **extra_model_kwargs) -> dict:
    """Run one case with TRL 0.11.4 and return its fixture."""
    import trl

    trainer, model = ppo_cases.build_trainer(case, trl, **extra_model_kwargs)
    trainer.running = TensorMoments(trainer.running)
    recorder = AttentionMaskRecorder(trainer)
    steps = []
    for step in case["steps"]:
        recorder.masks.clear()
        stats = trainer.step(*ppo_cases.step_arguments(step))
        kept = {k: jsonable(v) for k, v in sorted(stats.items()) if not k.startswith(ppo_cases.IGNORED_STAT_PREFIX)}
        entry = {"stats": kept}
        ignore = recorder.ignore_indices(stats)
        if ignore:
            entry["ignore_indices"] = ignore
        steps.append(entry)
    parameters = ppo_cases.trainable_parameters(model)
    fixture = {
        "case": case,
        "reference": f"trl {trl.__version__}, with the score-scaling fix (generate_ppo_fixtures.TensorMoments)",
        "steps": steps,
        "final_parameters": {name: encode_tensor(tensor) for name, tensor in parameters.items()},
    }
    inert = inert_parameter_entries(parameters)
    if inert:
        fixture["final_parameters_ignore_indices"] = inert
    return fixture


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


def format_fixture(fixture: dict) -> str:
    """JSON with one line per case field, per stat and per parameter: small, and readable in a diff."""

    def block(mapping: dict, depth: int) -> str:
        items = [f"{' ' * (depth + 1)}{_compact(key)}: {_compact(value)}" for key, value in mapping.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"

    fields = []
    for key, value in fixture.items():
        if key == "steps":
            steps = []
            for step in value:
                parts = [f"   {_compact(name)}: {block(entries, 3)}" for name, entries in step.items()]
                steps.append("  {\n" + ",\n".join(parts) + "\n  }")
            fields.append(' "steps": [\n' + ",\n".join(steps) + "\n ]")
        else:
            fields.append(f" {_compact(key)}: {block(value, 1) if isinstance(value, dict) else _compact(value)}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")  # 0.11.4's deprecation notices, "no dataset", "skipping batch", ...


def write_case(name: str) -> Path:
    fixture = run_case(ppo_cases.CASES_BY_NAME[name])
    text = format_fixture(fixture)
    assert json.loads(text) == json.loads(json.dumps(fixture))
    path = ppo_cases.FIXTURE_DIR / f"{name}.json"
    path.write_text(text)
    return path


def self_check(name: str) -> list[str]:
    """Re-run a case with eager attention instead of SDPA and compare with its fixture, as the test would.

    Eager attention computes the same function with other rounding, as any re-implementation will; a case whose
    results drift past the tolerances under that change is too chaotic to be a fair golden test.
    """
    path = ppo_cases.FIXTURE_DIR / f"{name}.json"
    expected = json.loads(path.read_text())
    fixture = json.loads(json.dumps(run_case(expected["case"], attn_implementation="eager")))
    problems = []
    for i, (got, want) in enumerate(zip(fixture["steps"], expected["steps"], strict=True)):
        mismatches = ppo_cases.stat_mismatches(got["stats"], want["stats"], want.get("ignore_indices"))
        problems += [f"step {i}: {problem}" for problem in mismatches]
    decoded = {k: ppo_cases.decode_parameter(v) for k, v in fixture["final_parameters"].items()}
    ignore = expected.get("final_parameters_ignore_indices")
    return problems + ppo_cases.parameter_mismatches(decoded, expected["final_parameters"], ignore)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-venv", type=Path, metavar="DIR", help="install the reference pins into DIR first")
    parser.add_argument("--only", nargs="+", metavar="CASE", help="regenerate these cases only")
    parser.add_argument("--self-check", action="store_true", help="re-run the cases with eager attention, compare")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, in this process
    args = parser.parse_args(argv)

    if args.make_venv:
        passed_on = (["--only", *args.only] if args.only else []) + (["--self-check"] if args.self_check else [])
        make_venv(args.make_venv.resolve(), passed_on)
        return
    installed = check_versions()
    quiet()
    if args.case:
        if args.self_check:
            problems = self_check(args.case)
            print(f"{args.case}: " + ("\n  ".join(["DRIFTS", *problems]) if problems else "stable"), flush=True)
            sys.exit(1 if problems else 0)
        print(f"{args.case}: {write_case(args.case).stat().st_size} bytes", flush=True)
        return

    names = args.only or [case["name"] for case in ppo_cases.CASES]
    unknown = sorted(set(names) - set(ppo_cases.CASES_BY_NAME))
    if unknown:
        sys.exit(f"unknown cases: {unknown}")
    ppo_cases.FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    if not args.only and not args.self_check:
        build_checkpoints()
        for stale in ppo_cases.FIXTURE_DIR.glob("*.json"):
            if stale.name != "manifest.json" and stale.stem not in ppo_cases.CASES_BY_NAME:
                stale.unlink()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), *(["--self-check"] if args.self_check else [])]
    failed = []
    for name in names:  # a fresh process per case: no accelerate or RNG state carries over
        if subprocess.run([*command, "--case", name], env=env).returncode:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {failed}")
    if args.self_check or args.only:
        return  # the manifest describes the last full generation

    manifest = {
        "what": "TRL 0.11.4 PPOTrainer.step golden fixtures (tests/golden/generate_ppo_fixtures.py)",
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": installed,
        "score_scaling_fix": "RunningMoments.mean/std handed to step() as tensors (see TensorMoments)",
        "cases": [case["name"] for case in ppo_cases.CASES],
    }
    (ppo_cases.FIXTURE_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
