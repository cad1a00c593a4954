"""Malformed inputs of every kind end in exit code 2 and one `error:` line naming the problem, never a traceback,
and leave what existed before untouched.

Each row runs a recipe in-process through `run_recipe` (a real run, not `--dry_run`) in a workspace holding good
preference data and an earlier run's output directory; the sha256 of every file there before the run must be the
same after it. The rows marked `PARSE` are caught where the options are parsed, so `--dry_run` reports them too.

Read-only directories: the tests run as root here, and root writes through permission bits, so a read-only output
directory cannot be made for real. The not-writable row makes `os.access` (what the validation asks) deny the
directory instead; the rows with an output path under a file cover a directory that cannot be created for anyone.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stackrlhf.recipes import convert_llama2c, evaluate, merge, ppo, reward, sentiment, sft, validation
from stackrlhf.recipes.runner import run_recipe

RECIPES = {
    "sft": sft,
    "reward": reward,
    "ppo": ppo,
    "sentiment": sentiment,
    "evaluate": evaluate,
    "merge": merge,
    "convert": convert_llama2c,
}
FIXTURES = ("tiny", "adapter", "merged")
PARSE, RUN = "parse", "run"
"""Where a row is caught: where the options are parsed (a dry run sees it), or once the run reads its data."""


def pair(question="Why?", chosen="Because.", rejected="No idea."):
    return json.dumps({"question": question, "response_j": chosen, "response_k": rejected}) + "\n"


GOOD_DATA = "".join(pair(f"Question {i}?", f"Good answer {i}.", f"Bad answer {i}.") for i in range(12))


@dataclass(frozen=True)
class Case:
    """One malformed input: the recipe, its arguments (`{tmp}`: the workspace; `{tiny}`, `{adapter}`, `{merged}`:
    the bundled model and a reward adapter / merged reward model on it), files to write into the workspace, an
    optional setup(workspace, fixtures, monkeypatch), and a fragment of the expected error line."""

    id: str
    recipe: str
    argv: tuple[str, ...]
    expected: str
    stage: str = PARSE
    files: dict[str, str | bytes] = field(default_factory=dict)
    setup: Callable[[Path, dict[str, Path], pytest.MonkeyPatch], None] | None = None


def copy_dir(source: str, name: str, change: Callable[[Path], None]):
    """A setup that copies fixture `source` to workspace/`name`, then applies `change` to the copy."""

    def setup(tmp: Path, fixtures: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
        shutil.copytree(fixtures[source], tmp / name)
        change(tmp / name)

    setup.source = source
    return setup


def truncate(filename: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        data = (folder / filename).read_bytes()
        (folder / filename).write_bytes(data[: len(data) // 2])

    return change


def remove(filename: str) -> Callable[[Path], None]:
    return lambda folder: (folder / filename).unlink()


def rewrite_json(filename: str, **changes) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        values = json.loads((folder / filename).read_text())
        values.update(changes)
        (folder / filename).write_text(json.dumps({k: v for k, v in values.items() if v is not None}))

    return change


def write(filename: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / filename).write_text(text)


def data_folder(name: str, files: dict[str, str]):
    """A setup that writes `files` (relative path -> text) into workspace/`name`."""

    def setup(tmp: Path, fixtures: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
        for relative, text in files.items():
            (tmp / name / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name / relative).write_text(text)

    return setup


def deny_writing(tmp: Path, fixtures: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """`os.access` says the workspace's `locked` directory is not writable (root ignores permission bits)."""
    (tmp / "locked").mkdir()
    real_access = validation.os.access

    def access(path, mode, **kwargs):
        return False if Path(path) == tmp / "locked" and mode & validation.os.W_OK else real_access(path, mode)

    monkeypatch.setattr(validation.os, "access", access)


def cache_env(value: str):
    def setup(tmp: Path, fixtures: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("STACKRLHF_CACHE", value.format(tmp=tmp))

    return setup


NEW_OUT = ("--output_dir", "{tmp}/new")  # the earlier run in out/ is not one to continue
DATA = ("--dataset_path", "{tmp}/data.jsonl")
PPO_BASE = ("--model_name_or_path", "{merged}", *NEW_OUT)

CASES = [
    # data
    Case(
        "data: missing file", "sft", ("--dataset_path", "{tmp}/missing.jsonl", *NEW_OUT), "missing.jsonl: no such file"
    ),
    Case(
        "data: missing file by --dataset_name",
        "reward",
        ("--dataset_name", "{tmp}/missing.jsonl", *NEW_OUT),
        "error: {tmp}/missing.jsonl: no such file",
    ),
    Case(
        "data: bad row in a .jsonl.gz",
        "sft",
        ("--dataset_name", "{tmp}/bad.jsonl.gz", *NEW_OUT),
        "bad.jsonl.gz, row 2, field 'response_k': missing field",
        RUN,
        {"bad.jsonl.gz": gzip.compress((pair() + json.dumps({"question": "Q?", "response_j": "A."}) + "\n").encode())},
    ),
    Case(
        "data: unknown split",
        "sft",
        ("--dataset_name", "{tmp}/prefs", "--dataset_split", "dev", *NEW_OUT),
        "{tmp}/prefs: no split 'dev'; it has train, test",
        RUN,
        setup=data_folder("prefs", {"train.jsonl": GOOD_DATA, "test.jsonl": GOOD_DATA}),
    ),
    Case(
        "data: dataset_config for a single file",
        "sft",
        (*DATA, "--dataset_config", "data/rl", *NEW_OUT),
        "--dataset_config data/rl: {tmp}/data.jsonl is a single file; give the file to read as --dataset_name",
    ),
    Case(
        "data: bad JSON row",
        "sft",
        ("--dataset_path", "{tmp}/bad.jsonl", *NEW_OUT),
        "bad.jsonl, row 2: not valid JSON",
        RUN,
        {"bad.jsonl": pair() + '{"question": "Q?", "response_j": \n' + pair()},
    ),
    Case(
        "data: missing field",
        "reward",
        ("--dataset_path", "{tmp}/field.jsonl", *NEW_OUT),
        "row 2, field 'response_k': missing field",
        RUN,
        {"field.jsonl": pair() + json.dumps({"question": "Q?", "response_j": "A."}) + "\n"},
    ),
    Case(
        "data: empty file",
        "sft",
        ("--dataset_path", "{tmp}/empty.jsonl", *NEW_OUT),
        "empty.jsonl: no rows",
        RUN,
        {"empty.jsonl": ""},
    ),
    Case(
        "data: column mapping names no column",
        "sft",
        (*DATA, "--column_mapping", "prompt=question", *NEW_OUT),
        "prompt",
        RUN,
    ),
    Case("data: malformed column mapping", "sft", (*DATA, "--column_mapping", "question", *NEW_OUT), "question"),
    Case(
        "data: unknown file type",
        "sft",
        ("--dataset_path", "{tmp}/data.txt", *NEW_OUT),
        "unknown file type",
        RUN,
        {"data.txt": "hello\n"},
    ),
    Case("data: too few rows", "sft", (*DATA, "--eval_samples", "50", *NEW_OUT), "leaves no training rows", RUN),
    Case(
        "data: missing prompts file",
        "sentiment",
        ("--prompts_file", "{tmp}/none.txt", *NEW_OUT),
        "--prompts_file {tmp}/none.txt: no such file",
    ),
    Case("data: negative eval_samples", "sft", (*DATA, "--eval_samples", "-1", *NEW_OUT), "eval_samples"),
    Case("data: stream without max_samples", "sft", (*DATA, "--dataset_streaming", *NEW_OUT), "needs max_samples"),
    # configs
    Case(
        "config: invalid YAML", "sft", ("--config", "{tmp}/c.yaml"), "is not valid YAML", files={"c.yaml": "a: [1\n"}
    ),
    Case("config: not a mapping", "sft", ("--config", "{tmp}/c.yaml"), "YAML mapping", files={"c.yaml": "- 1\n"}),
    Case("config: missing file", "sft", ("--config", "{tmp}/none.yaml"), "does not exist"),
    Case("config: a directory", "sft", ("--config", "{tmp}/out"), "is a directory"),
    Case(
        "config: unknown key",
        "sft",
        ("--config", "{tmp}/c.yaml"),
        "unknown option(s) learning_rat",
        files={"c.yaml": "learning_rat: 0.1\n"},
    ),
    Case(
        "config: str for float",
        "sft",
        ("--config", "{tmp}/c.yaml"),
        "learning_rate: 'fast' (str) is not a number",
        files={"c.yaml": "learning_rate: fast\n"},
    ),
    Case(
        "config: list for int",
        "reward",
        ("--config", "{tmp}/c.yaml"),
        "max_steps: [1] (list) is not an integer",
        files={"c.yaml": "max_steps: [1]\n"},
    ),
    Case(
        "config: float for int",
        "ppo",
        ("--config", "{tmp}/c.yaml"),
        "lora_r: 1.5 (float) is not an integer",
        files={"c.yaml": "lora_r: 1.5\n"},
    ),
    Case(
        "config: str for bool",
        "sft",
        ("--config", "{tmp}/c.yaml"),
        "use_peft: 'maybe' (str) is not true or false",
        files={"c.yaml": "use_peft: maybe\n"},
    ),
    Case(
        "config: int for bool",
        "sentiment",
        ("--config", "{tmp}/c.yaml"),
        "use_peft: 2 (int) is not true or false",
        files={"c.yaml": "use_peft: 2\n"},
    ),
    Case(
        "config: mapping for str",
        "sft",
        ("--config", "{tmp}/c.yaml"),
        "dataset_path: {{'a': 1}} (dict) is not a string",
        files={"c.yaml": "dataset_path: {a: 1}\n"},
    ),
    Case(
        "config: not a choice",
        "merge",
        ("--config", "{tmp}/c.yaml"),
        "dtype: 'float64' is not one of float32, bfloat16, float16",
        files={"c.yaml": "dtype: float64\n"},
    ),
    Case(
        "config: negative learning rate",
        "sft",
        ("--config", "{tmp}/c.yaml"),
        "learning_rate: -0.001 must be greater than 0",
        files={"c.yaml": "learning_rate: -1.0e-3\n"},
    ),
    Case(
        "config: zero batch size",
        "reward",
        ("--config", "{tmp}/c.yaml"),
        "per_device_train_batch_size: 0 must be at least 1",
        files={"c.yaml": "per_device_train_batch_size: 0\n"},
    ),
    Case(
        "config: zero gradient accumulation",
        "ppo",
        ("--config", "{tmp}/c.yaml"),
        "gradient_accumulation_steps: 0 must be at least 1",
        files={"c.yaml": "gradient_accumulation_steps: 0\n"},
    ),
    Case(
        "config: mini batch does not divide batch",
        "ppo",
        ("--config", "{tmp}/c.yaml"),
        "must be a multiple of",
        files={"c.yaml": "batch_size: 16\nmini_batch_size: 3\n"},
    ),
    # flags
    Case("flag: unknown", "sft", ("--no_such_flag", "1"), "unknown option(s) --no_such_flag 1"),
    Case("flag: bad value", "sft", ("--learning_rate", "fast"), "invalid float value: 'fast'"),
    Case("flag: missing value", "reward", ("--lora_r",), "expected one argument"),
    Case("flag: --config without a file", "sft", ("--config",), "--config needs a value"),
    Case("flag: zero steps", "sft", ("--max_steps", "0", *NEW_OUT), "max_steps: 0 must be -1"),
    Case("flag: dropout out of range", "sentiment", ("--lora_dropout", "1.5"), "lora_dropout: 1.5 must be"),
    Case("flag: zero PPO epochs", "ppo", ("--ppo_epochs", "0"), "ppo_epochs: 0 must be at least 1"),
    Case("flag: zero prompts", "evaluate", ("--num_prompts", "0"), "num_prompts: 0 must be at least 1"),
    Case("flags: 8-bit and 4-bit", "sft", ("--load_in_8bit", "--load_in_4bit", *NEW_OUT), "8 bit and 4 bit"),
    Case("flags: quantized without LoRA", "reward", ("--load_in_4bit", "--use_peft", "false"), "--use_peft"),
    Case(
        "flags: eval_samples 0 with evaluation",
        "sft",
        ("--eval_samples", "0", "--eval_strategy", "steps", *NEW_OUT),
        "--eval_samples 0 holds out no rows",
    ),
    Case("flags: reward evaluates during training", "reward", ("--eval_strategy", "epoch"), "--eval_strategy epoch"),
    Case(
        "flags: two reward sources",
        "ppo",
        (*PPO_BASE, "--reward_adapter", "{adapter}", "--reward_model", "{merged}"),
        "not both",
    ),
    Case("flags: 8-bit reward model without one", "ppo", ("--reward_model_load_in_8bit",), "none is given"),
    Case("flags: merge without output", "merge", ("--adapter_path", "{adapter}"), "merge needs --adapter_path"),
    # models
    Case(
        "model: missing local path",
        "sft",
        ("--model_name_or_path", "{tmp}/models/none", *NEW_OUT),
        "models/none: no such directory",
    ),
    Case(
        "model: a file",
        "reward",
        ("--model_name_or_path", "{tmp}/data.jsonl", *NEW_OUT),
        "data.jsonl: a file, not a model directory",
    ),
    Case(
        "model: no config.json",
        "sft",
        ("--model_name_or_path", "{tmp}/model", *NEW_OUT),
        "model: no config.json in it",
        setup=copy_dir("tiny", "model", remove("config.json")),
    ),
    Case(
        "model: corrupt config.json",
        "sft",
        ("--model_name_or_path", "{tmp}/model", *NEW_OUT),
        "config.json: not valid JSON",
        setup=copy_dir("tiny", "model", write("config.json", '{"model_type": "llama",')),
    ),
    Case(
        "model: truncated model.safetensors",
        "reward",
        ("--model_name_or_path", "{tmp}/model", *NEW_OUT),
        "model.safetensors: not a readable safetensors file",
        setup=copy_dir("tiny", "model", truncate("model.safetensors")),
    ),
    Case(
        "model: PPO base is an adapter",
        "ppo",
        ("--model_name_or_path", "{adapter}", "--reward_model", "{merged}", "--output_dir", "{tmp}/out"),
        "is a LoRA adapter",
    ),
    Case(
        "model: missing reward model",
        "ppo",
        ("--model_name_or_path", "{merged}", "--reward_model", "{tmp}/models/reward", "--output_dir", "{tmp}/out"),
        "--reward_model {tmp}/models/reward: no such directory",
    ),
    # adapters
    Case(
        "adapter: no weights",
        "ppo",
        (*PPO_BASE, "--reward_adapter", "{tmp}/rm"),
        "--reward_adapter {tmp}/rm: the adapter has no weights",
        setup=copy_dir("adapter", "rm", remove("adapter_model.safetensors")),
    ),
    Case(
        "adapter: broken adapter_config.json",
        "ppo",
        (*PPO_BASE, "--reward_adapter", "{tmp}/rm"),
        "rm/adapter_config.json: not valid JSON",
        setup=copy_dir("adapter", "rm", write("adapter_config.json", "{'r': 8}")),
    ),
    Case(
        "adapter: truncated weights",
        "ppo",
        (*PPO_BASE, "--reward_adapter", "{tmp}/rm"),
        "adapter_model.safetensors: not a readable safetensors file",
        setup=copy_dir("adapter", "rm", truncate("adapter_model.safetensors")),
    ),
    Case(
        "adapter: not a reward adapter",
        "ppo",
        (*PPO_BASE, "--reward_adapter", "{tmp}/rm"),
        "a causal_lm adapter, not a reward model's",
        setup=copy_dir("adapter", "rm", rewrite_json("adapter_config.json", task_type="CAUSAL_LM")),
    ),
    Case(
        "adapter: no base model recorded",
        "merge",
        ("--adapter_path", "{tmp}/rm", "--output_dir", "{tmp}/merged"),
        "no base_model_name_or_path",
        setup=copy_dir("adapter", "rm", rewrite_json("adapter_config.json", base_model_name_or_path=None)),
    ),
    Case(
        "adapter: a model, not an adapter",
        "merge",
        ("--adapter_path", "{merged}", "--output_dir", "{tmp}/merged"),
        "no adapter_config.json in it",
    ),
    Case(
        "adapter: broken policy",
        "evaluate",
        ("--policy_path", "{tmp}/rm"),
        "rm/adapter_config.json: not valid JSON",
        setup=copy_dir("adapter", "rm", write("adapter_config.json", "")),
    ),
    # checkpoints
    Case(
        "checkpoint: not a checkpoint directory",
        "sft",
        ("--resume_from_checkpoint", "{tmp}/out", *NEW_OUT),
        "no trainer_state.json in it",
    ),
    # output directories
    Case("output: a file", "sft", ("--output_dir", "{tmp}/data.jsonl"), "a file, not a directory"),
    Case("output: under a file", "ppo", ("--output_dir", "{tmp}/data.jsonl/ppo"), "data.jsonl is a file"),
    Case(
        "output: not writable",
        "reward",
        ("--output_dir", "{tmp}/locked/reward"),
        "cannot write into {tmp}/locked",
        setup=deny_writing,
    ),
    Case(
        "output: merge into an existing one",
        "merge",
        ("--adapter_path", "{adapter}", "--output_dir", "{tmp}/out"),
        "already exists",
    ),
    Case(
        "output: report in a missing directory",
        "evaluate",
        ("--policy_path", "{adapter}", "--output_file", "{tmp}/none/evaluation.json"),
        "none is not a directory",
    ),
    Case("output: convert into a file", "convert", ("--output_dir", "{tmp}/data.jsonl"), "a file, not a directory"),
    # caches
    Case("cache: STACKRLHF_CACHE is a file", "sft", NEW_OUT, "STACKRLHF_CACHE", setup=cache_env("{tmp}/data.jsonl")),
    Case(
        "cache: STACKRLHF_CACHE under a file",
        "ppo",
        (),
        "STACKRLHF_CACHE",
        setup=cache_env("{tmp}/data.jsonl/cache"),
    ),
]


def test_the_table_covers_every_kind_of_input():
    kinds = {case.id.split(":")[0] for case in CASES}
    assert len(CASES) >= 40
    assert {"data", "config", "flag", "model", "adapter", "checkpoint", "output", "cache"} <= kinds
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.fixture
def workspace(tmp_path, request, monkeypatch):
    """The workspace: good data, an earlier run's output; fixtures resolved lazily (only the rows that use them)."""
    (tmp_path / "data.jsonl").write_text(GOOD_DATA)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stackrlhf_summary.json").write_text('{"stage": "sft", "eval_loss": 1.5}\n')
    (tmp_path / "out" / "adapter_model.safetensors").write_bytes(b"earlier weights")
    monkeypatch.chdir(tmp_path)  # relative defaults (outputs/...) stay inside the workspace
    return tmp_path


def _fixtures(request, case: Case) -> dict[str, Path]:
    """The session fixtures the row names in its arguments or copies in its setup, built only when needed."""
    text = " ".join(case.argv)
    sources = {getattr(case.setup, "source", None)} | {name for name in FIXTURES if f"{{{name}}}" in text}
    fixtures = {}
    if "tiny" in sources:
        fixtures["tiny"] = request.getfixturevalue("tiny_model_dir")
    if sources & {"adapter", "merged"}:
        fixtures |= request.getfixturevalue("reward_dirs")
    return fixtures


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _run_case(case: Case, workspace: Path, request, monkeypatch, capsys, *extra: str) -> None:
    fixtures = _fixtures(request, case)
    for name, content in case.files.items():
        target = workspace / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    if case.setup is not None:
        case.setup(workspace, fixtures, monkeypatch)
    values = {"tmp": str(workspace), **{name: str(path) for name, path in fixtures.items()}}
    argv = [arg.format(**values) for arg in case.argv]
    before = _checksums(workspace)
    capsys.readouterr()

    module = RECIPES[case.recipe]
    code = run_recipe(module.make_parser(), module.main, [*extra, *argv])

    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err[-2000:]
    assert case.expected.format(**values) in last
    after = _checksums(workspace)
    assert {name: after.get(name) for name in before} == before


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_malformed_input_is_one_line_and_changes_nothing(case, workspace, request, monkeypatch, capsys):
    _run_case(case, workspace, request, monkeypatch, capsys)


PARSE_CASES = [case for case in CASES if case.stage == PARSE]


@pytest.mark.parametrize("case", PARSE_CASES, ids=[case.id for case in PARSE_CASES])
def test_dry_run_reports_the_same_error(case, workspace, request, monkeypatch, capsys):
    _run_case(case, workspace, request, monkeypatch, capsys, "--dry_run")
