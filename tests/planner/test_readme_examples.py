"""The README's "Will it fit?" examples print what the README says they print (issue 14: a 20B example whose stated
verdict held only at other settings than its command's)."""

import json
import re
import shlex
from pathlib import Path

import pytest

from stackrlhf.planner.cli import run
from stackrlhf.planner.estimate import GIB

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("\n## Will it fit?\n")
    return text[start : text.index("\n## ", start + 1)]


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", _section(), flags=re.DOTALL)


def _examples() -> list[tuple[list[str], str]]:
    """`(argv after "stackrlhf plan", the comment)` of each runnable command in the section's bash blocks."""
    examples = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            command, _, comment = line.partition(" # ")
            if command.startswith("stackrlhf plan ") and "..." not in command:
                examples.append((shlex.split(command)[2:], comment.strip()))
    return examples


def _plan(capsys, argv: list[str]) -> dict:
    assert run([*argv, "--json"]) == 0, argv
    return json.loads(capsys.readouterr().out)


def test_the_examples_cover_every_new_stage_and_the_20b_ppo_run():
    examples = _examples()
    flags = [" ".join(argv) for argv, _ in examples]
    assert any("--stage dpo" in f or "/dpo" in f for f in flags) and any("--stage grpo" in f for f in flags)
    assert any("--stage rloo" in f for f in flags)
    neox = [comment for argv, comment in examples if "EleutherAI/gpt-neox-20b" in argv]
    assert neox and "fits 24 GB" in neox[0]


@pytest.mark.parametrize(("argv", "comment"), _examples(), ids=lambda value: " ".join(value)[:60])
def test_each_example_prints_the_verdict_and_peak_its_comment_states(capsys, argv, comment):
    result = _plan(capsys, argv)
    for size in re.findall(r"fits (\d+) GB", comment):
        assert result["verdicts"][f"{size}GB"] is True, (argv, size)
    for size in re.findall(r"not (\d+) GB", comment):
        assert result["verdicts"][f"{size}GB"] is False, (argv, size)
    for peak in re.findall(r"peak (\d+\.\d\d) GiB", comment):
        assert f"{result['peak_bytes'] / GIB:.2f}" == peak, argv


def test_the_20b_example_is_the_tables_row(capsys):
    """The PPO table's gpt-neox-20b 8-bit row: planned allocated, with slack and context, the 24 GB verdict and the
    limits are what the README's command prints."""
    (argv,) = [argv for argv, _ in _examples() if "EleutherAI/gpt-neox-20b" in argv]
    result = _plan(capsys, argv)
    row = re.search(r"^\| gpt-neox-20b \| 8-bit \| (.*) \|$", _section(), flags=re.MULTILINE)[1].split(" | ")
    limits = result["limits"]
    assert row == [
        f"{result['peak_allocated_bytes'] / GIB:.2f} GiB",
        f"{result['peak_bytes'] / GIB:.2f} GiB",
        "fits" if result["verdicts"]["24GB"] else "does not fit",
        f"{limits['mini_batch_size']} / {limits['generation_batch_size']} / {limits['response_length']}",
    ]


def test_the_printed_example_is_what_the_command_prints(capsys):
    """Every line of the README's sample output (but the config's path, which depends on the install, and the elided
    table) is a line the command prints."""
    (block,) = [block for block in _blocks("text") if block.startswith("$ stackrlhf plan ")]
    command, *lines = block.splitlines()
    assert run(shlex.split(command)[3:]) == 0
    printed = set(capsys.readouterr().out.splitlines())
    shown = [line for line in lines if not line.startswith(("config ", "[..."))]
    assert [line for line in shown if line not in printed] == []
    assert any(line.startswith("verdict for ") for line in shown)
